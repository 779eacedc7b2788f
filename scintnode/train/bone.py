"""Training and evaluation of Dscint (paper 003) on synthetic whole-body phantoms, by the paper's protocol.

`scintnode train bone` runs here: mirroring, translation and rotation augmentation; ten runs, each a random
7:3 split that keeps a patient's images together; metrics averaged over the runs; then the fp16 weights of
run 1, a check on fresh phantoms, metrics JSON, report PNG and model card."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import cv2
import numpy as np
import torch
from torch import nn

from scintnode.models import dscint as net
from scintnode.models.device import model_device, torch_device
from scintnode.models.thyroid import file_sha256
from scintnode.phantoms import bone as phantoms
from scintnode.train import metrics
from scintnode.train.card import fmt, write_metrics
from scintnode.train.report import draw_report

VERSION = "0.1.0+synthetic"
# The paper's Table 6 and Table 8 columns, then AUC (Table 9): macro averages over the four classes.
METRIC_COLUMNS = ("accuracy", "precision", "recall", "specificity", "f1", "auc")

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What a run does; the defaults are the settings of the committed weights (see the model card)."""

    per_class: int = 32  # patients (studies) per class
    runs: int = 10  # paper 003: results averaged over 10 runs
    epochs: int = 8
    test_fraction: float = 0.3  # paper 003: about 7:3
    seed: int = 2025
    batch_size: int = 8  # Table 5 says 4; 8 halves the optimiser steps on shared CPUs (model card)
    learning_rate: float = 3e-4  # Table 5 says 1e-3 for 300 epochs; see the model card's deviations
    weight_decay: float = 1e-4  # Table 5
    max_shift_px: int = 10  # t_T; the paper's Figure 1 shows +5 pixels
    max_rotation_deg: float = 3.0  # r_T; the paper's Figure 1 shows 3 degrees
    input_rows: int = net.INPUT_SHAPE[0]
    input_columns: int = net.INPUT_SHAPE[1]
    check_per_class: int = 15  # fresh phantoms (another seed) the committed model is checked on
    device: str = "cpu"  # where it trains (`--device`); the committed weights were made on the CPU


QUICK = TrainConfig(per_class=3, runs=2, epochs=1, input_rows=256, input_columns=64, check_per_class=1)


@dataclass(frozen=True)
class Dataset:
    """Network-ready images, one per view of each study, with their class and the patient they belong to."""

    images: np.ndarray  # (N, rows, columns) float16 0..1, upright
    labels: np.ndarray  # (N,) class indices into net.CLASS_KEYS
    patients: np.ndarray  # (N,) patient index: both views of a study share it
    views: np.ndarray  # (N,) 0 anterior, 1 posterior
    mirrored: np.ndarray  # (N,) True where the view was missing and is the other one mirrored


def make_dataset(per_class: int, seed: int, input_shape: tuple[int, int]) -> Dataset:
    """Both views of every phantom through the network's preprocessing; a missing view is the other mirrored."""
    images, labels, patients, views, mirrored = [], [], [], [], []
    for patient, phantom in enumerate(phantoms.generate(per_class, seed)):
        pair = {"anterior": phantom.anterior, "posterior": phantom.posterior}
        for index, view in enumerate(net.VIEWS):
            stand_in = phantom.missing_view == view
            counts = pair[net.VIEWS[1 - index]][:, ::-1] if stand_in else pair[view]
            images.append(net.network_image(counts, input_shape).astype(np.float16))
            labels.append(net.CLASS_KEYS.index(phantom.label))
            patients.append(patient)
            views.append(index)
            mirrored.append(stand_in)
    return Dataset(
        np.stack(images),
        np.array(labels, dtype=np.int64),
        np.array(patients, dtype=np.int64),
        np.array(views, dtype=np.int64),
        np.array(mirrored, dtype=bool),
    )


def patient_split(
    labels: np.ndarray, patients: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and test image indices: whole patients go to one side, about `test_fraction` of each class to test."""
    rng = np.random.default_rng(seed)
    test_patients: list[int] = []
    for cls in np.unique(labels):
        members = rng.permutation(np.unique(patients[labels == cls]))
        count = min(len(members) - 1, max(1, round(test_fraction * len(members))))
        test_patients.extend(int(p) for p in members[:count])
    is_test = np.isin(patients, test_patients)
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def augment(image: np.ndarray, rng: np.random.Generator, config: TrainConfig) -> np.ndarray:
    """Paper 003 §2.2: mirroring (left-right), translation by up to t_T pixels, rotation by up to r_T degrees."""
    out = image.astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    rows, columns = out.shape
    matrix = cv2.getRotationMatrix2D(
        ((columns - 1) / 2.0, (rows - 1) / 2.0), float(rng.uniform(-1, 1) * config.max_rotation_deg), 1.0
    )
    matrix[:, 2] += rng.integers(-config.max_shift_px, config.max_shift_px + 1, size=2)
    turned = cv2.warpAffine(np.ascontiguousarray(out), matrix, (columns, rows), flags=cv2.INTER_LINEAR)
    return np.asarray(turned, dtype=np.float32)


def fit(data: Dataset, index: np.ndarray, config: TrainConfig, seed: int, log: Log) -> net.Dscint:
    """Cross-entropy on softmax, Adam with weight decay (paper 003 Table 5), augmented batches."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch_device(config.device)
    model = net.Dscint(input_shape=(config.input_rows, config.input_columns)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    targets = torch.from_numpy(data.labels).to(device)
    batches = max(1, len(index) // config.batch_size)
    for epoch in range(1, config.epochs + 1):
        model.train()
        started, total, correct = time.perf_counter(), 0.0, 0
        for batch in np.array_split(rng.permutation(index), batches):
            x = net.to_network_input(np.stack([augment(data.images[i], rng, config) for i in batch])).to(device)
            optimiser.zero_grad()
            logits = model(x)
            loss = loss_fn(logits, targets[batch])
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == targets[batch]).sum())
        log(
            f"  epoch {epoch:3d}/{config.epochs}  loss {total / len(index):.4f}  train acc {correct / len(index):.3f}  "
            f"{time.perf_counter() - started:.1f}s"
        )
    return model.eval()


def predict(model: net.Dscint, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Class probabilities (N, 4) in eval mode."""
    model.eval()
    device = model_device(model)
    with torch.no_grad():
        parts = [
            net.probabilities(
                model(net.to_network_input(images[start : start + batch_size].astype(np.float32)).to(device))
            ).cpu()
            for start in range(0, len(images), batch_size)
        ]
    return torch.cat(parts).numpy()


def per_study(probs: np.ndarray, labels: np.ndarray, patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the node reports: the mean of a study's two views (one may be a mirror), and the study's class."""
    order = np.unique(patients)
    study_probs = np.stack([probs[patients == p].mean(axis=0) for p in order])
    study_labels = np.array([labels[patients == p][0] for p in order], dtype=np.int64)
    return study_probs, study_labels


def summary_row(report: metrics.Report) -> dict[str, float]:
    """Paper 003's columns: accuracy and macro precision, recall, specificity, F-1 and AUC."""
    return {
        "accuracy": report.accuracy,
        "precision": report.macro.ppv,
        "recall": report.macro.sensitivity,
        "specificity": report.macro.specificity,
        "f1": report.macro.f1,
        "auc": report.macro.auc,
    }


def train(config: TrainConfig, out_dir: Path, command: str, log: Log = print) -> dict[str, object]:
    """Ten runs by the paper's protocol, then weights (run 1), metrics, report and card in `out_dir`."""
    started = time.perf_counter()
    classes = net.CLASS_KEYS
    shape = (config.input_rows, config.input_columns)
    log(f"synthetic whole-body phantoms: {config.per_class} studies per class, seed {config.seed}, input {shape}")
    data = make_dataset(config.per_class, config.seed, shape)
    log(f"{len(data.labels)} images ({int(data.mirrored.sum())} mirrored stand-ins for missing views)")

    run_rows: list[dict[str, object]] = []
    pooled_truth, pooled_probs = [], []
    committed: net.Dscint | None = None
    for run in range(1, config.runs + 1):
        train_index, test_index = patient_split(data.labels, data.patients, config.test_fraction, config.seed + run)
        log(f"run {run}/{config.runs}: train {len(train_index)} images, test {len(test_index)} images")
        run_started = time.perf_counter()
        model = fit(data, train_index, config, config.seed + 100 + run, log)
        probs = predict(model, data.images[test_index])
        report = metrics.evaluate(data.labels[test_index], probs, classes)
        study_probs, study_labels = per_study(probs, data.labels[test_index], data.patients[test_index])
        study = metrics.evaluate(study_labels, study_probs, classes)
        row = summary_row(report)
        log(
            f"run {run}: "
            + "  ".join(f"{k} {v:.3f}" for k, v in row.items())
            + f"  (per study acc {study.accuracy:.3f})"
        )
        run_rows.append(
            {
                "run": run,
                **row,
                "study_accuracy": study.accuracy,
                "seconds": time.perf_counter() - run_started,
                **report.as_dict(),
            }
        )
        pooled_truth.append(data.labels[test_index])
        pooled_probs.append(probs)
        if committed is None:
            committed = model  # run 1, decided before any result: no picking the best run

    summary = {
        column: dict(zip(("mean", "std"), metrics.mean_and_std([float(r[column]) for r in run_rows]), strict=True))  # type: ignore[arg-type]
        for column in (*METRIC_COLUMNS, "study_accuracy")
    }
    log("mean ± std over runs: " + "  ".join(f"{k} {v['mean']:.3f}±{v['std']:.3f}" for k, v in summary.items()))
    truth_all, probs_all = np.concatenate(pooled_truth), np.concatenate(pooled_probs)
    pooled = metrics.evaluate(truth_all, probs_all, classes)
    per_class = {
        name: {
            "precision": metrics.mean_and_std([float(r["per_class"][name]["ppv"]) for r in run_rows])[0],  # type: ignore[index]
            "recall": metrics.mean_and_std([float(r["per_class"][name]["sensitivity"]) for r in run_rows])[0],  # type: ignore[index]
            "specificity": metrics.mean_and_std([float(r["per_class"][name]["specificity"]) for r in run_rows])[0],  # type: ignore[index]
            "f1": metrics.mean_and_std([float(r["per_class"][name]["f1"]) for r in run_rows])[0],  # type: ignore[index]
            "auc": metrics.mean_and_std([float(r["per_class"][name]["auc"]) for r in run_rows])[0],  # type: ignore[index]
        }
        for name in classes
    }

    assert committed is not None
    check_seed = config.seed + 1
    check_data = make_dataset(config.check_per_class, check_seed, shape)
    check_probs, check_labels = per_study(predict(committed, check_data.images), check_data.labels, check_data.patients)
    check = metrics.evaluate(check_labels, check_probs, classes)
    log(f"run-1 model on {len(check_labels)} fresh studies (seed {check_seed}): accuracy {check.accuracy:.3f}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{net.NAME}.pt"
    net.save_weights(
        committed,
        weights,
        {
            "version": VERSION,
            "attention_reduction": net.ATTENTION_REDUCTION,
            "attention_kernel": net.ATTENTION_KERNEL,
            "dropout": net.DROPOUT,
            "intensity_percentile": net.INTENSITY_PERCENTILE,
            "synthetic": True,
            "training": asdict(config),
        },
    )
    sha = file_sha256(weights)
    elapsed = time.perf_counter() - started
    result: dict[str, object] = {
        "network": net.NAME,
        "version": VERSION,
        "synthetic": True,
        "statement": "Trained and evaluated on synthetic phantoms only; these figures are not clinical accuracy.",
        "command": command,
        "config": asdict(config),
        "weights_file": weights.name,
        "weights_sha256": sha,
        "weights_bytes": weights.stat().st_size,
        "runs": run_rows,
        "mean_std": summary,
        "per_class_mean": per_class,
        "std": "sample standard deviation over runs (ddof=1)",
        "pooled_test_predictions": pooled.as_dict(),
        "fresh_check": {"seed": check_seed, "per_class": config.check_per_class, "level": "study", **check.as_dict()},
        "seconds": elapsed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    write_metrics(out / f"{net.NAME}.metrics.json", result)
    draw_report(
        truth_all,
        probs_all,
        classes,
        f"{net.NAME} {VERSION}: test images of {config.runs} runs, synthetic phantoms (not clinical)",
        out / f"{net.NAME}.report.png",
    )
    (out / f"{net.NAME}.md").write_text(model_card(result, run_rows, summary, per_class, check))
    log(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB, sha256 {sha[:12]}…) in {elapsed / 60:.1f} min")
    return result


def model_card(
    result: dict[str, object],
    run_rows: list[dict[str, object]],
    summary: dict[str, dict[str, float]],
    per_class: dict[str, dict[str, float]],
    check: metrics.Report,
) -> str:
    """The Markdown model card: what the network is, how these weights were made, and what they are not."""
    config = TrainConfig(**result["config"])  # type: ignore[arg-type]
    minutes = cast(float, result["seconds"]) / 60.0
    megabytes = cast(int, result["weights_bytes"]) / 1e6
    columns = (*METRIC_COLUMNS, "study_accuracy")
    header = "| Run | " + " | ".join(columns) + " |\n|---|" + "---|" * len(columns) + "\n"
    rows = "".join(
        f"| {row['run']} | " + " | ".join(fmt(float(row[c])) for c in columns) + " |\n"  # type: ignore[arg-type]
        for row in run_rows
    )
    rows += (
        "| Mean ± std | "
        + " | ".join(f"{fmt(summary[c]['mean'])} ± {fmt(summary[c]['std'])}" for c in columns)
        + " |\n"
    )
    class_table = "| Class | precision | recall | specificity | F-1 | AUC |\n|---|---|---|---|---|---|\n" + "".join(
        f"| {name} | {fmt(m['precision'])} | {fmt(m['recall'])} | {fmt(m['specificity'])} | {fmt(m['f1'])} | "
        f"{fmt(m['auc'])} |\n"
        for name, m in per_class.items()
    )
    split = f"{1 - config.test_fraction:.0%}:{config.test_fraction:.0%}"
    labels = "\n".join(
        f'- `{label.key}`: {label.display} — ({label.code.value}, {label.code.scheme}, "{label.code.meaning}")'
        for label in net.LABELS
    )
    return f"""# Model card: {net.NAME} {VERSION}

**Trained and evaluated on synthetic phantoms only. The figures below are not clinical accuracy; these
weights must not be used to diagnose a patient.** They exist so the node can be demonstrated and tested end
to end. A site replaces them with weights trained on its own images (same file format, see
`scintnode/models/dscint.py: save_weights`).

## Network

Paper 003: Lin et al., "Multiclass classification of whole-body scintigraphic images using a self-defined
convolutional neural network with attention modules", Med. Phys. 2021;48:5782-5793, doi 10.1002/mp.15196.

- Table 4 exactly: conv 11×11/16 stride 4 pad 2 → max-pool 3/2 → hybrid attention (channel: shared MLP
  over average- and max-pooled features, sigmoid; then spatial: {net.ATTENTION_KERNEL}×{net.ATTENTION_KERNEL} conv over
  channel-wise average and max, sigmoid; eqs. 2-4) → conv 5×5/16 → BatchNorm → max-pool 3/2 →
  3 × conv 3×3/24 → BatchNorm → max-pool 3/1 → FC 1024 → FC 1024 → 4-way softmax.
- Input: one whole-body view, {config.input_rows} rows × {config.input_columns} columns, upright, scaled to its
  {net.INTENSITY_PERCENTILE}th percentile. A study's anterior and posterior views are classified separately
  (the paper's unit is one image) and the node reports the mean of the two softmax outputs; a missing view
  is the other one mirrored left-right (paper §2.2.1).
- Classes (SR finding codes):
{labels}
- Explanation: Grad-CAM of the predicted class on `{net.CAM_LAYER}` (after the fifth convolution and its
  BatchNorm), mapped back onto each stored frame; the SR point is the hottest pixel over both views.

## Training (paper 003 protocol)

- Data: `scintnode.phantoms.bone`, {config.per_class} synthetic studies per class (seed {config.seed}), each with an
  anterior and a posterior 1024×256 view of 2.26 mm pixels: a 99mTc-MDP skeleton with age-dependent bone to
  soft-tissue contrast, kidneys, bladder, injection-site extravasation and urine contamination as distractors,
  mild degenerative joint and spine uptake that grows with age; metastases as hot foci mostly in the axial
  skeleton; arthritis as joint uptake; I-131 whole-body scans after thyroidectomy for thyroid carcinoma.
  About 10 % of studies lack one view, which is replaced by the other one mirrored.
- Augmentation on the fly (§2.2): left-right mirroring, translation by up to {config.max_shift_px} pixels,
  rotation by up to {config.max_rotation_deg:g}°.
- {config.runs} runs; each a random split of the patients, about {split} per class (a patient's images
  never on both sides), a new network trained {config.epochs} epochs, Adam learning rate {config.learning_rate:g},
  weight decay {config.weight_decay:g} (Table 5), batch {config.batch_size}, cross-entropy; metrics on the test
  images, averaged over runs.
- The committed weights are run 1's model (chosen before training, not the best run), checked on
  {config.check_per_class} fresh studies per class (seed {config.seed + 1}) at study level as the node classifies them.
- Weights in half precision (`{result["weights_file"]}`, {megabytes:.1f} MB,
  SHA-256 `{result["weights_sha256"]}`); loaded as float32.

### Deviations from the paper, and why

- Synthetic phantoms instead of 1,078 patient images; nothing here is clinical data.
- {config.epochs} epochs instead of 300 and {config.per_class * 4} studies: training and evaluating all
  {config.runs} runs took {minutes:.0f} minutes on one shared CPU thread.
- Batch {config.batch_size} instead of 4: each Adam step updates 20 M parameters, so bigger batches train faster
  per image on a CPU (measured 43 against 65 ms per image on one thread).
- Learning rate {config.learning_rate:g} instead of 1e-3: with a few epochs instead of 300, 1e-3 spent the first epoch
  recovering from a loss blow-up (5.8 after epoch 1 in a trial, against 2.0 at 3e-4 and 1.4 at 1e-4).
- Not given by the paper, so chosen here: ReLU after each convolution and FC layer, dropout {net.DROPOUT}
  before both FC layers (as AlexNet, whose layout Dscint follows), channel-attention reduction
  {net.ATTENTION_REDUCTION}, spatial kernel {net.ATTENTION_KERNEL}×{net.ATTENTION_KERNEL}, the intensity scaling,
  t_T = {config.max_shift_px} px and r_T = {config.max_rotation_deg:g}°.
- The paper augments offline to a fixed set (Table 3); here every batch is augmented anew.
- The paper's Gaussian pre-filter (kernel 3, sigma 1/3 pixel) is the camera's; images are used as stored.
- Examination-level fusion (mean of the two views) is the node's choice; the paper reports per image.

## How these weights were made

```
{result["command"]}
```

torch {result["torch"]}, {result["threads"]} thread(s), {minutes:.1f} minutes, {result["date"]}.

## Results (synthetic phantoms, not clinical)

Per run, on its test images (macro averages over the 4 classes, as in the paper's Tables 6 and 8; AUC as in
Table 9, one-vs-rest); `study_accuracy` is per study, the two views averaged, as the node classifies:

{header}{rows}
Per class, mean over runs (the paper's Figure 5):

{class_table}
Run-1 model on {int(check.confusion.sum())} fresh studies (seed {config.seed + 1}): accuracy
{fmt(check.accuracy)}, macro F-1 {fmt(check.macro.f1)}, macro AUC {fmt(check.macro.auc)}.

Confusion matrix and ROC curves of the test images of all runs: `{net.NAME}.report.png`.
Every number is in `{net.NAME}.metrics.json`.
"""
