"""Trains and evaluates the dual-phase CT parathyroid U-Net (paper 001) on synthetic neck CT phantoms.

`scintnode train ct-parathyroid` runs it: a patient-level train/test split as in the paper (38/9 of 47),
patch training, then per-gland detection sensitivity, false positives per patient and Dice on the test
patients; writes fp16 weights, metrics JSON, a PNG of slices with truth and prediction, and the model card."""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from scintnode.models import ct_unet as net
from scintnode.models.device import torch_device
from scintnode.models.weights_file import file_sha256
from scintnode.phantoms import ct_parathyroid as phantoms
from scintnode.train.card import fmt, write_metrics

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    patients: int = 47  # paper 001: 47 patients, one unenhanced + one enhanced CT each
    test_patients: int = 9  # paper 001: 9 test patients (per-patient split)
    steps: int = 600
    batch_size: int = 2
    patch: tuple[int, int, int] = net.WINDOW_VOXELS  # slices, rows, columns; multiples of 8; inference windows too
    foreground_fraction: float = 0.67  # share of patches centred on a gland (nnU-Net oversamples foreground)
    learning_rate: float = 3e-3
    weight_decay: float = 1e-5
    max_minutes: float = 16.0  # training stops early past this, so the whole run fits its time budget
    phantom_shape: tuple[int, int, int] = phantoms.SHAPE
    seed: int = 1
    device: str = "cpu"  # where it trains (`--device`); the committed weights were made on the CPU


QUICK = TrainConfig(patients=4, test_patients=2, steps=2, batch_size=1, patch=(16, 32, 32), phantom_shape=(24, 64, 64))


@dataclass(frozen=True)
class Case:
    """One synthetic patient as the network sees it."""

    channels: np.ndarray  # float16 (2, D, H, W)
    labels: np.ndarray  # uint8 gland numbers (D, H, W)
    phantom: phantoms.NeckPhantom


def make_cases(config: TrainConfig) -> list[Case]:
    """Synthetic patients through the network's own windowing (phantoms are on the network's 1 mm grid)."""
    rng = np.random.default_rng(config.seed)
    cases = []
    for _ in range(config.patients):
        phantom = phantoms.synthesize(rng, config.phantom_shape, (net.GRID_MM,) * 3)
        channels = net.network_input(phantom.unenhanced, phantom.enhanced).astype(np.float16)
        cases.append(Case(channels, phantom.labels, phantom))
    return cases


def patient_split(count: int, test: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test patient indices; every patient's two phases stay on one side."""
    if not 1 <= test < count:
        raise ValueError(f"need 1 <= test patients < patients, got {test} of {count}")
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[test:]), np.sort(order[:test])


def _patch(
    case: Case, size: tuple[int, int, int], rng: np.random.Generator, on_gland: bool
) -> tuple[np.ndarray, np.ndarray]:
    shape = case.labels.shape
    if on_gland and case.labels.any():
        centre = np.argwhere(case.labels > 0)[rng.integers(int((case.labels > 0).sum()))]
        centre = centre + rng.integers(-np.array(size) // 4, np.array(size) // 4 + 1)
    else:
        centre = np.array([rng.integers(0, s) for s in shape])
    start = [int(np.clip(c - p // 2, 0, max(s - p, 0))) for c, p, s in zip(centre, size, shape, strict=True)]
    box = tuple(slice(b, b + p) for b, p in zip(start, size, strict=True))
    x = np.zeros((2, *size), dtype=np.float32)
    y = np.zeros(size, dtype=np.float32)
    region = case.channels[(slice(None), *box)]
    x[:, : region.shape[1], : region.shape[2], : region.shape[3]] = region
    y[: region.shape[1], : region.shape[2], : region.shape[3]] = case.labels[box] > 0
    if rng.random() < 0.5:  # the neck is near-symmetric left to right
        x, y = x[..., ::-1], y[..., ::-1]
    scale = rng.uniform(0.95, 1.05)  # scanner calibration and window drift
    return np.ascontiguousarray(x * scale), np.ascontiguousarray(y)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice over the batch: glands are under 0.1 % of a neck."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    dice = (2 * (probability * target).sum() + 1) / (probability.sum() + target.sum() + 1)
    return bce + (1 - dice)


def fit(cases: list[Case], config: TrainConfig, log: Log) -> net.UNet3D:
    """Adam with a cosine-decayed rate; patches, a share of them on glands. The decay follows whichever runs
    out first, steps or `max_minutes`, so a run cut short by a busy machine still ends annealed."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch_device(config.device)
    model = net.UNet3D().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    started, running = time.perf_counter(), 0.0
    model.train()
    for step in range(1, config.steps + 1):
        minutes = (time.perf_counter() - started) / 60.0
        progress = min(1.0, max((step - 1) / config.steps, minutes / config.max_minutes))
        rate = 0.5 * config.learning_rate * (1.0 + np.cos(np.pi * progress))
        for group in optimiser.param_groups:
            group["lr"] = rate
        batch = [
            _patch(cases[rng.integers(len(cases))], config.patch, rng, rng.random() < config.foreground_fraction)
            for _ in range(config.batch_size)
        ]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
        y = torch.from_numpy(np.stack([b[1] for b in batch]))[:, None].to(device)
        optimiser.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        running = 0.9 * running + 0.1 * float(loss.detach()) if step > 1 else float(loss.detach())
        if step % 25 == 0 or step == config.steps:
            log(f"  step {step:4d}/{config.steps}  loss {running:.4f}  lr {rate:.2e}  {minutes:.1f} min")
        if progress >= 1.0:
            log(f"  stopped at step {step}: the {config.max_minutes:g}-minute budget is spent")
            break
    return model.eval()


@dataclass(frozen=True)
class PatientResult:
    glands: int
    detected: int
    ectopic: int
    ectopic_detected: int
    false_positives: int
    dice: float


MATCH_MM = 10.0  # a component hits a gland when it overlaps it and its centre lies this close to the gland's


def evaluate_case(
    model: net.UNet3D, case: Case, window_voxels: tuple[int, int, int] = net.WINDOW_VOXELS
) -> tuple[PatientResult, net.Detection]:
    """A true gland is detected when a kept component overlaps it with its centre within MATCH_MM of the
    gland's (so one blob over the whole neck finds nothing); a component hitting no gland is a false
    positive; Dice compares all kept components with all glands."""
    probability = net.predict_probability(model, case.channels.astype(np.float32), window_voxels)
    detection = net.detect(probability, net.GRID_MM**3)
    truth = case.labels > 0
    present = [g.number for g in case.phantom.glands if (case.labels == g.number).any()]
    centres = {n: np.argwhere(case.labels == n).mean(axis=0) for n in present}
    hit: set[int] = set()
    false_positives = 0
    for number in range(1, len(detection.gland_probabilities) + 1):
        component = detection.labels == number
        centre = np.argwhere(component).mean(axis=0)
        hits = {
            n
            for n in present
            if (case.labels[component] == n).any() and np.linalg.norm((centre - centres[n]) * net.GRID_MM) <= MATCH_MM
        }
        hit |= hits
        false_positives += not hits
    ectopic = [g.number for g in case.phantom.glands if g.ectopic and g.number in present]
    found = detection.labels > 0
    denominator = int(found.sum() + truth.sum())
    dice = 2.0 * float((found & truth).sum()) / denominator if denominator else 1.0
    result = PatientResult(
        glands=len(present),
        detected=len(hit),
        ectopic=len(ectopic),
        ectopic_detected=sum(n in hit for n in ectopic),
        false_positives=false_positives,
        dice=dice,
    )
    return result, detection


def summarise(results: list[PatientResult]) -> dict[str, float]:
    glands = sum(r.glands for r in results)
    ectopic = sum(r.ectopic for r in results)
    return {
        "patients": len(results),
        "glands": glands,
        "detected": sum(r.detected for r in results),
        "sensitivity_per_gland": sum(r.detected for r in results) / glands if glands else float("nan"),
        "ectopic_glands": ectopic,
        "ectopic_sensitivity": sum(r.ectopic_detected for r in results) / ectopic if ectopic else float("nan"),
        "false_positives_per_patient": sum(r.false_positives for r in results) / max(len(results), 1),
        "dice_mean": float(np.mean([r.dice for r in results])) if results else float("nan"),
    }


def train(config: TrainConfig, out_dir: Path, command: str, log: Log = print) -> dict[str, object]:
    """Split, train, evaluate on the held-out patients, and write weights, metrics, report PNG and card."""
    started = time.perf_counter()
    log(f"synthetic dual-phase neck CT: {config.patients} patients {config.phantom_shape}, seed {config.seed}")
    cases = make_cases(config)
    train_index, test_index = patient_split(config.patients, config.test_patients, config.seed)
    log(f"patient-level split: {len(train_index)} train, {len(test_index)} test")
    model = fit([cases[i] for i in train_index], config, log)
    evaluated = [evaluate_case(model, cases[i], config.patch) for i in test_index]
    results = [r for r, _ in evaluated]
    summary = summarise(results)
    log("test: " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in summary.items()))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{net.NAME}.pt"
    net.save_weights(model, weights, {"version": net.VERSION, "synthetic": True, "training": asdict(config)})
    record: dict[str, object] = {
        "network": net.NAME,
        "version": net.VERSION,
        "synthetic": True,
        "statement": "Trained and evaluated on synthetic phantoms only; these figures are not clinical accuracy.",
        "command": command,
        "config": asdict(config),
        "split": {"train": train_index.tolist(), "test": test_index.tolist()},
        "test": summary,
        "per_patient": [asdict(r) for r in results],
        "weights_file": weights.name,
        "weights_sha256": file_sha256(weights),
        "weights_bytes": weights.stat().st_size,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    write_metrics(out / f"{net.NAME}.metrics.json", record)
    draw_slices([cases[i] for i in test_index], [d for _, d in evaluated], out / f"{net.NAME}.report.png")
    (out / f"{net.NAME}.md").write_text(model_card(record, config))
    log(f"wrote {weights} ({weights.stat().st_size / 1e3:.0f} kB) and its metrics, report and model card")
    log(f"done in {float(str(record['seconds'])) / 60:.1f} min")
    return record


def draw_slices(cases: list[Case], detections: list[net.Detection], path: Path, count: int = 4) -> Path:
    """A PNG row per test patient: the enhanced phase through its largest gland, truth green, prediction red."""
    tiles = []
    for case, detection in list(zip(cases, detections, strict=True))[:count]:
        truth = case.labels > 0
        index = int(np.argmax(truth.sum(axis=(1, 2)))) if truth.any() else case.labels.shape[0] // 2
        row = []
        for channel in (0, 1):
            grey = (case.channels[channel, index].astype(np.float32) * 255).astype(np.uint8)
            tile = cv2.cvtColor(cv2.resize(grey, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST), cv2.COLOR_GRAY2BGR)
            for mask, colour in ((truth[index], (0, 200, 0)), (detection.labels[index] > 0, (0, 0, 255))):
                big = cv2.resize(mask.astype(np.uint8), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(big, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(tile, contours, -1, colour, 1)
            cv2.putText(
                tile,
                f"slice {index} {'C+' if channel else 'native'}",
                (4, 14),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.4,
                (255, 255, 255),
                1,
            )
            row.append(tile)
        tiles.append(np.concatenate(row, axis=1))
    if not tiles:
        raise ValueError("no test patients to draw")
    width = max(t.shape[1] for t in tiles)
    banner = np.zeros((24, width, 3), dtype=np.uint8)
    cv2.putText(
        banner,
        "SYNTHETIC test patients: truth green, prediction red",
        (4, 16),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.45,
        (255, 255, 255),
        1,
    )
    picture = np.concatenate([banner, *[np.pad(t, ((0, 0), (0, width - t.shape[1]), (0, 0))) for t in tiles]], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), picture):
        raise OSError(f"could not write {path}")
    return path


def model_card(record: dict[str, object], config: TrainConfig) -> str:
    """The Markdown model card: what the network is, how these weights were made, what they are not."""
    summary = record["test"]
    assert isinstance(summary, dict)
    rows = "".join(f"| {key} | {fmt(value)} |\n" for key, value in summary.items())
    minutes = float(str(record["seconds"])) / 60
    return f"""# Model card: {net.NAME} {net.VERSION}

**Trained and evaluated on synthetic phantoms only. The figures below are not clinical accuracy; these
weights must not be used to find glands in a patient.** They exist so the node can be demonstrated and
tested end to end. A site replaces them with weights trained on its own studies (same file format,
`scintnode/models/ct_unet.py: save_weights`).

## Network

Paper 001: Li et al., "Deep learning-based localization of preoperative parathyroid glands in secondary
hyperparathyroidism patients using dual-phase unenhanced and contrast-enhanced computed tomography data",
Intelligent Oncology 1(4) 2025, doi 10.1016/j.intonc.2025.09.004. The paper names a 3D U-Net on the two
phases and its data; it does not give the layers, so these are ours:

- A plain-torch 3D U-Net (Çiçek et al. 2016) configured as nnU-Net does: per level two 3×3×3 convolutions
  with instance norm (as GroupNorm, one group per channel) and leaky ReLU, strided-convolution
  down-sampling, transposed-convolution up-sampling, skip concatenation; widths {list(net.WIDTHS)}, 3 poolings,
  one sigmoid output. Why: nnU-Net's defaults are the best-tested 3D U-Net configuration; instance norm
  works with the batch of a few patches that a CPU allows; the small widths keep training and
  whole-neck inference on 2 CPU cores. No MONAI dependency: the network is ~70 lines, and the node's
  torch pin stays untouched. Inference windows equal the training patch, because instance norm's
  statistics depend on what a window holds.
- Input: channel 1 the unenhanced, channel 2 the contrast-enhanced series, both resampled onto a
  {net.GRID_MM:g} mm isotropic grid on the unenhanced series' axes, window
  {net.WINDOW_HU[0]:g}..{net.WINDOW_HU[1]:g} HU to 0..1.
- Output: gland probability; inference with sliding windows of {list(net.WINDOW_VOXELS)} voxels (memory
  bounded by the window), back onto the unenhanced slices, threshold {net.THRESHOLD}, 26-connected components
  of at least {net.MIN_GLAND_MM3:g} mm³ are glands.

## Training (paper 001 protocol, as far as it applies)

- Data: `scintnode.phantoms.ct_parathyroid`, {config.patients} synthetic patients {list(config.phantom_shape)}
  voxels at {net.GRID_MM:g} mm: neck, thyroid, trachea, vessels, lymph nodes (look-alikes), 2-4 glands of a few
  mm, ~15 % ectopic. Patient-level split: {config.patients - config.test_patients} train,
  {config.test_patients} test (the paper: 38/9).
- Patches {list(config.patch)}, batch {config.batch_size}, {config.foreground_fraction:.0%} centred on a gland;
  left-right flips; BCE + soft Dice; Adam {config.learning_rate:g}, cosine decay over {config.steps} steps
  or {config.max_minutes:g} minutes, whichever ends first.
- Weights in half precision (`{record["weights_file"]}`, SHA-256 `{record["weights_sha256"]}`).

### Deviations from the paper, and why

- Synthetic phantoms instead of 47 patients' CT: no patient data is available to this project.
- Few training steps on CPU (1 thread): the weights are a demonstration, not a converged model.

## How these weights were made

```
{record["command"]}
```

torch {record["torch"]}, {record["threads"]} thread(s), {minutes:.1f} minutes, {record["date"]}.

## Results on the {config.test_patients} synthetic test patients (not clinical)

Per-gland detection sensitivity is the paper's headline figure (94.44 % on its 9 test patients).

| metric | value |
|---|---|
{rows}
Slices with truth (green) and prediction (red): `{net.NAME}.report.png`. Every number is in
`{net.NAME}.metrics.json`.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `scintnode train ct-parathyroid` options (train/cli.py owns the sub-command)."""
    parser.add_argument("--out", type=Path, required=True, help="output folder (the repository's: scintnode/weights)")
    parser.add_argument("--patients", type=int, help="synthetic patients (paper: 47)")
    parser.add_argument("--test-patients", type=int, help="held-out patients (paper: 9)")
    parser.add_argument("--steps", type=int, help="training steps (batches)")
    parser.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    parser.add_argument("--seed", type=int, help="seed for phantoms, split and initialisation")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="tiny setting for tests (4 small patients, 2 steps)")


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    base = QUICK if args.quick else TrainConfig()
    overrides = {
        "patients": args.patients,
        "test_patients": args.test_patients,
        "steps": args.steps,
        "max_minutes": args.max_minutes,
        "seed": args.seed,
        "device": args.device,
    }
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if not 1 <= config.test_patients < config.patients or config.steps < 1:
        print("scintnode train ct-parathyroid: need 1 <= test-patients < patients and steps >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    train(config, args.out, shlex.join(["scintnode", "train", *argv]), log=lambda line: print(line, flush=True))
    return 0
