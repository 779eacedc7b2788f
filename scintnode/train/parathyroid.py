"""Training and evaluation of ParaNet (paper 000) on synthetic parathyroid studies, by the paper's protocol.

`scintnode train parathyroid` runs here: 10-fold stratified cross-validation, mini-batches of 50, early stopping
once the validation accuracy reaches 94 %, patient-level metrics averaged over the folds and gland-level
agreement from Grad-CAM and Grad-CAM++ candidates (Table 1); then a final model, fp16 weights, metrics JSON,
report PNG and model card."""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scintnode.cam import Method, to_grid
from scintnode.models import paranet as net
from scintnode.models import paranet_glands as glands
from scintnode.models.device import model_device, torch_device
from scintnode.models.paranet_input import FIELD_MM, INPUT_CEILING, NETWORK_PERCENTILE, prepare_counts, register
from scintnode.models.weights_file import file_sha256
from scintnode.phantoms import parathyroid as phantoms
from scintnode.train import metrics
from scintnode.train.card import fmt, write_metrics
from scintnode.train.report import draw_report
from scintnode.train.thyroid import stratified_folds

VERSION = "0.1.0+synthetic"
PATIENT_COLUMNS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auc", "kappa")
CAM_METHODS: tuple[Method, ...] = ("gradcam", "gradcam++")
# How candidates are read off a study (model card): the node's way (a method's late map times the late image's
# uptake), the map alone, and the uptake alone, so that what each part adds is on record.
READINGS: tuple[str, ...] = (*(f"{m} × uptake" for m in CAM_METHODS), *CAM_METHODS, "uptake alone")

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What a run does; the defaults are the settings of the committed weights (see the model card)."""

    variant: str = "paranet-small"
    patients: int = 632  # paper 000
    folds: int = 10  # paper 000
    max_epochs: int = 30  # paper 000: at most 400
    stop_accuracy: float = 0.94  # paper 000: training stops once the validation accuracy reaches 94 %
    validation_share: float = 0.1  # of each fold's training patients, held out for early stopping
    batch_size: int = 50  # paper 000
    learning_rate: float = 3e-3
    seed: int = 2000
    check_patients: int = 60  # fresh patients (another seed) the final model is checked on
    image_size: int | None = None  # None: the variant's
    device: str = "cpu"  # where it trains (`--device`); the committed weights were made on the CPU


QUICK = TrainConfig(patients=20, folds=2, max_epochs=1, check_patients=4, image_size=64)


@dataclass
class Dataset:
    """Network-ready episodes with their truth, glands in network-input pixels of the early image."""

    x: np.ndarray  # (N, 3, S, S) float32 (1.0 = the network scale), thyroid channel zero where no scan was done
    y: np.ndarray  # (N,) class indices into net.CLASS_KEYS
    glands: list[list[tuple[float, float, float]]]  # per patient: (column, row, diameter mm)
    mm_per_pixel: np.ndarray  # (N,)
    has_thyroid: np.ndarray  # (N,) bool


def make_dataset(patients: int, seed: int, image_size: int) -> Dataset:
    """Synthetic cases through the network's own preprocessing (early crop reused for the late image, which is
    then registered onto the early one)."""
    xs, ys, gland_lists, scales, thyroid_flags = [], [], [], [], []
    for case in phantoms.generate(patients, seed):
        early, _, box = prepare_counts(case.early.astype(np.float32), case.pixel_spacing_mm, image_size)
        late, _, _ = prepare_counts(case.late.astype(np.float32), case.pixel_spacing_mm, image_size, box)
        late, _ = register(early, late)
        thyroid = np.zeros_like(early)
        if case.thyroid is not None:
            thyroid, _, _ = prepare_counts(case.thyroid.astype(np.float32), case.thyroid_spacing_mm, image_size)
        scale = box.size / image_size
        xs.append(np.stack([early, late, thyroid]))
        ys.append(net.CLASS_KEYS.index(case.label))
        gland_lists.append(
            [((g.early[0] - box.left) / scale, (g.early[1] - box.top) / scale, g.diameter_mm) for g in case.glands]
        )
        scales.append(case.pixel_spacing_mm * scale)
        thyroid_flags.append(case.thyroid is not None)
    return Dataset(
        np.stack(xs).astype(np.float32),
        np.array(ys, dtype=np.int64),
        gland_lists,
        np.array(scales, dtype=np.float64),
        np.array(thyroid_flags, dtype=bool),
    )


def _validation_split(y: np.ndarray, share: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: `share` of each class (at least one) held out for early stopping."""
    held: list[int] = []
    for cls in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == cls))
        held.extend(int(i) for i in members[: max(1, round(share * len(members)))])
    held_array = np.sort(np.array(held, dtype=np.int64))
    return np.setdiff1d(np.arange(len(y)), held_array), held_array


@dataclass
class FitLog:
    epochs: int = 0
    stopped_early: bool = False
    validation_accuracy: list[float] = field(default_factory=list)


def fit(x: np.ndarray, y: np.ndarray, config: TrainConfig, seed: int, log: Log) -> tuple[net.ParaNet, FitLog]:
    """Cross-entropy, Adam, mini-batches of 50, horizontal flips; stops when validation accuracy >= 94 %."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch_device(config.device)
    model = net.build(config.variant).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    train_index, validation_index = _validation_split(y, config.validation_share, rng)
    inputs, targets = net.network_input(x), torch.from_numpy(y)
    history = FitLog()
    for epoch in range(1, config.max_epochs + 1):
        model.train()
        started, total, seen = time.perf_counter(), 0.0, 0
        order = rng.permutation(train_index)
        for start in range(0, len(order), config.batch_size):
            index = torch.from_numpy(order[start : start + config.batch_size])
            batch = augment(inputs[index], rng).to(device)
            optimiser.zero_grad()
            loss = loss_fn(model(batch), targets[index].to(device))
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
        recalibrate_batch_norm(model, inputs[torch.from_numpy(train_index)], config.batch_size)
        accuracy = float((predict(model, x[validation_index]).argmax(1) == y[validation_index]).mean())
        history.epochs, history.validation_accuracy = epoch, [*history.validation_accuracy, accuracy]
        log(
            f"  epoch {epoch:3d}/{config.max_epochs}  loss {total / max(seen, 1):.4f}  "
            f"validation acc {accuracy:.3f}  {time.perf_counter() - started:.1f}s"
        )
        if accuracy >= config.stop_accuracy:
            history.stopped_early = True
            break
    return model.eval(), history


def augment(batch: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Left-right mirroring (glands occur on both sides) and a shift of each patient by up to a tenth of the
    field (patients lie where they lie): a network that must find the gland wherever it is learns the gland,
    not where the thyroid usually sits, and its Grad-CAM then points at it."""
    if rng.random() < 0.5:
        batch = torch.flip(batch, dims=(3,))
    size = batch.shape[-1]
    limit = max(1, size // 10)
    padded = nn.functional.pad(batch, (limit, limit, limit, limit), mode="replicate")
    out = torch.empty_like(batch)
    for i, (dy, dx) in enumerate(rng.integers(0, 2 * limit + 1, size=(len(batch), 2))):
        out[i] = padded[i, :, dy : dy + size, dx : dx + size]
    return out


def recalibrate_batch_norm(model: net.ParaNet, inputs: torch.Tensor, batch_size: int) -> None:
    """Batch-norm running statistics recomputed over `inputs` with the final weights (no-op without batch norm).

    With a few dozen steps per model, the running averages lag the weights they normalise, and the model in
    eval mode is far worse than in training; an exact average over the training set removes that gap."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    device = model_device(model)
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            model(inputs[start : start + batch_size].to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def predict(model: net.ParaNet, x: np.ndarray, batch_size: int = 50) -> np.ndarray:
    """Class probabilities (N, 2) in eval mode."""
    model.eval()
    device = model_device(model)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = net.network_input(x[start : start + batch_size]).to(device)
            out.append(net.probabilities(model(batch)).cpu().numpy())
    return np.concatenate(out)


def gland_scores(model: net.ParaNet, data: Dataset, index: np.ndarray) -> dict[str, list[glands.GlandScore]]:
    """Table 1 counts per patient for every reading (candidates only when predicted abnormal)."""
    scores: dict[str, list[glands.GlandScore]] = {r: [] for r in READINGS}
    for i in index:
        present = [p for p in net.PATHS if p != "thyroid" or data.has_thyroid[i]]
        mm = float(data.mm_per_pixel[i])
        early, late = data.x[i, 0], data.x[i, 1]
        candidates: dict[str, list[glands.Candidate]] = {}
        for method in CAM_METHODS:
            explained = net.explain(model, data.x[i], present, mm, method)
            abnormal = int(np.argmax(explained.probabilities)) == net.ABNORMAL
            late_map = to_grid(explained.maps["late"], *late.shape)
            candidates[f"{method} × uptake"] = explained.candidates
            candidates[method] = glands.find_peaks(late_map, early, mm) if abnormal else []
        candidates["uptake alone"] = glands.find_peaks(glands.uptake(late, mm), early, mm) if abnormal else []
        for reading, found in candidates.items():
            points = [(c.column, c.row) for c in found]
            scores[reading].append(glands.score_patient(points, data.glands[i], mm))
    return scores


def patient_row(report: metrics.Report) -> dict[str, float]:
    """Table 1's patient-level columns, with abnormal as the positive class, plus AUC and kappa."""
    positive = report.per_class["abnormal"]
    return {
        "accuracy": report.accuracy,
        "sensitivity": positive.sensitivity,
        "specificity": positive.specificity,
        "ppv": positive.ppv,
        "npv": positive.npv,
        "f1": positive.f1,
        "auc": positive.auc,
        "kappa": report.kappa,
    }


def train(config: TrainConfig, out_dir: Path, command: str, log: Log = print) -> dict[str, object]:
    """Cross-validate, train the final model, check it, and write weights, metrics, report and card."""
    started = time.perf_counter()
    variant = net.find_variant(config.variant)
    size = config.image_size or variant.image_size
    log(f"synthetic parathyroid studies: {config.patients} patients, seed {config.seed}, {size}px, {variant.name}")
    data = make_dataset(config.patients, config.seed, size)
    folds: list[dict[str, object]] = []
    pooled_truth, pooled_probs = [], []
    fold_glands: dict[str, list[glands.GlandScore]] = {r: [] for r in READINGS}
    for number, test_index in enumerate(stratified_folds(data.y, config.folds, config.seed), start=1):
        train_index = np.setdiff1d(np.arange(len(data.y)), test_index)
        log(f"fold {number}/{config.folds}: train {len(train_index)}, test {len(test_index)}")
        fold_started = time.perf_counter()
        model, history = fit(data.x[train_index], data.y[train_index], config, config.seed + number, log)
        probs = predict(model, data.x[test_index])
        report = metrics.evaluate(data.y[test_index], probs, net.CLASS_KEYS)
        row = patient_row(report)
        per_reading = {}
        for reading, scores in gland_scores(model, data, test_index).items():
            fold_glands[reading].extend(scores)
            per_reading[reading] = glands.total(scores).as_dict()
        log(f"fold {number}: " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))
        folds.append(
            {
                "fold": number,
                "train": len(train_index),
                "test": len(test_index),
                "epochs": history.epochs,
                "stopped_early": history.stopped_early,
                "seconds": round(time.perf_counter() - fold_started, 1),
                **row,
                "confusion": report.confusion.tolist(),
                "glands": per_reading,
            }
        )
        pooled_truth.append(data.y[test_index])
        pooled_probs.append(probs)
    mean_std = {c: metrics.mean_and_std([float(f[c]) for f in folds]) for c in PATIENT_COLUMNS}  # type: ignore[arg-type]
    log("cross-validation mean ± std: " + "  ".join(f"{k} {m:.3f}±{s:.3f}" for k, (m, s) in mean_std.items()))
    truth_all, probs_all = np.concatenate(pooled_truth), np.concatenate(pooled_probs)
    pooled = metrics.evaluate(truth_all, probs_all, net.CLASS_KEYS)
    gland_cv = {m: glands.total(s).as_dict() for m, s in fold_glands.items()}
    for cam_method, values in gland_cv.items():
        log(
            f"gland level ({cam_method}): "
            + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        )

    # The node explains with the method that localised better in cross-validation (F1 weighs found glands
    # against false foci); the card names it.
    node_method = max(CAM_METHODS, key=lambda m: float(gland_cv[f"{m} × uptake"]["f1"]))
    log(f"node localisation method: {node_method}")
    log(f"final model: all {len(data.y)} patients")
    final, history = fit(data.x, data.y, config, config.seed, log)
    fresh = make_dataset(config.check_patients, config.seed + 1, size)
    check = metrics.evaluate(fresh.y, predict(final, fresh.x), net.CLASS_KEYS)
    check_glands = {
        r: glands.total(s).as_dict() for r, s in gland_scores(final, fresh, np.arange(len(fresh.y))).items()
    }
    log(f"final model on {len(fresh.y)} fresh patients (seed {config.seed + 1}): accuracy {check.accuracy:.3f}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{variant.name}.pt"
    net.save_weights(
        final,
        variant.name,
        size,
        weights,
        {
            "network": variant.name,
            "version": VERSION,
            "synthetic": True,
            "cam_method": node_method,
            "training": {**asdict(config), "image_size": size},
        },
    )
    weights_mb = weights.stat().st_size / 1e6
    record: dict[str, object] = {
        "network": variant.name,
        "version": VERSION,
        "synthetic": True,
        "statement": "Trained and evaluated on synthetic phantoms only; these figures are not clinical accuracy.",
        "command": command,
        "config": {**asdict(config), "image_size": size},
        "weights_file": weights.name,
        "weights_sha256": file_sha256(weights),
        "weights_bytes": weights.stat().st_size,
        "parameters": sum(p.numel() for p in final.parameters()),
        "cross_validation": {
            "folds": folds,
            "mean_std": {k: {"mean": m, "std": s} for k, (m, s) in mean_std.items()},
            "std": "sample standard deviation over folds (ddof=1)",
            "pooled": {"confusion": pooled.confusion.tolist()} | patient_row(pooled),
            "glands": gland_cv,
            "gland_rule": f"found when a candidate lies within the gland's radius + {glands.HIT_MARGIN_MM:g} mm",
        },
        "final_model": {"epochs": history.epochs, "stopped_early": history.stopped_early},
        "node_cam_method": node_method,
        "fresh_check": {
            "seed": config.seed + 1,
            "patients": config.check_patients,
            **patient_row(check),
            "confusion": check.confusion.tolist(),
            "glands": check_glands,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }
    write_metrics(out / f"{variant.name}.metrics.json", record)
    draw_report(
        truth_all,
        probs_all,
        net.CLASS_KEYS,
        f"{variant.name} {VERSION}: {config.folds}-fold CV on synthetic studies (not clinical)",
        out / f"{variant.name}.report.png",
    )
    (out / f"{variant.name}.md").write_text(model_card(record, mean_std, gland_cv, weights_mb))
    log(f"wrote {weights} ({weights_mb:.2f} MB)")
    log(f"done in {float(str(record['seconds'])) / 60:.1f} min")
    return record


def _localisation_summary(gland_cv: dict[str, dict[str, float | int]], node_reading: str) -> str:
    node, alone = gland_cv[node_reading], gland_cv["uptake alone"]
    found, false_share = float(node["sensitivity"]), float(node["false_focal_rate"])
    summary = (
        f"The node's reading finds {found:.1%} of the glands (paper: 83.1 %), and {false_share:.1%} of its candidates\n"
        f"are false foci (paper: 18.2 %); the uptake alone finds {float(alone['sensitivity']):.1%} with"
        f" {float(alone['false_focal_rate']):.1%} false.\n"
        "Up to four candidates are reported per abnormal patient, so most patients with one gland also get false\n"
        "foci: read the points as places to look, not as findings.\n\n"
    )
    if found < 0.5:
        summary += (
            "**These weights do not localise glands well**: only the patient-level result carries much\n"
            "information. Train `paranet` (350 px) or a larger `--image-size`.\n\n"
        )
    return summary


def model_card(
    record: dict[str, object],
    mean_std: dict[str, tuple[float, float]],
    gland_cv: dict[str, dict[str, float | int]],
    weights_mb: float,
) -> str:
    """The Markdown model card: what the network is, how these weights were made, and what they are not."""
    config = record["config"]
    assert isinstance(config, dict)
    name = str(record["network"])
    variant = net.find_variant(name)
    patient = "| | " + " | ".join(PATIENT_COLUMNS) + " |\n|---|" + "---|" * len(PATIENT_COLUMNS) + "\n"
    patient += "| Paper 000 (632 patients) | 0.948 | 0.938 | 0.972 | 0.988 | 0.862 | 0.963 | n/a | 0.91 |\n"
    patient += (
        "| This run, mean ± std over folds | "
        + " | ".join(f"{fmt(mean_std[c][0])} ± {fmt(mean_std[c][1])}" for c in PATIENT_COLUMNS)
        + " |\n"
    )
    gland_columns = (
        "tp",
        "fn",
        "fp",
        "tn",
        "accuracy",
        "sensitivity",
        "specificity",
        "ppv",
        "npv",
        "f1",
        "false_focal_rate",
    )
    gland = "| | " + " | ".join(gland_columns) + " |\n|---|" + "---|" * len(gland_columns) + "\n"
    gland += (
        "| Paper 000 (545 glands, Grad-CAM) | 453 | 92 | 101 | 176 | 0.765 | 0.831 | 0.635 | 0.818 | 0.657 | 0.824 "
    )
    gland += "| 0.182 |\n"
    node_reading = f"{record['node_cam_method']} × uptake"
    for reading, values in gland_cv.items():
        label = f"This run, {reading}" + (" (the node's)" if reading == node_reading else "")
        gland += f"| {label} | " + " | ".join(fmt(values[c]) for c in gland_columns) + " |\n"
    fresh = record["fresh_check"]
    assert isinstance(fresh, dict)
    minutes = float(str(record["seconds"])) / 60.0
    warning = _localisation_summary(gland_cv, node_reading)
    cam_side = int(config["image_size"]) // 2 ** (variant.cam_stage - 1)
    return f"""# Model card: {name} {VERSION}

**Trained and evaluated on synthetic phantoms only. The figures below are not clinical accuracy; these weights
must not be used to diagnose a patient.** They exist so the node can be demonstrated and tested end to end.
A site trains its own (`scintnode train parathyroid --variant paranet` for the paper's size) on its own images.

## Network

Paper 000: Apostolopoulos et al., ParaNet, parathyroid scintigraphy with 99mTc-sestamibi (dual phase +
99mTcO4 thyroid subtraction), 632 patients.

- Three VGG19 paths (16 convolutions in stages of 2, 2, 4, 4, 4, torchvision parameter names
  `features.N.weight`), one per image: MIBI early, MIBI late, pertechnetate thyroid; each 1-channel.
  Global average pooling per path, the three vectors concatenated, dense 750 + ReLU, dropout 0.5,
  dense 256 + ReLU, dense 2 (normal, abnormal), softmax.
- **350 → 21×21×512.** torchvision's VGG19 `features` reduce 350 px to 10×10 after the fifth max-pool. The
  paper states 21×21×512 at the top of each path, which is the output of the last convolution (block5_conv4)
  *before* the fifth pool (350 → 175 → 87 → 43 → 21 after four pools): the paths here end there, then
  global average pooling, as the paper says ("a Global Average Pooling layer at the top (the last
  convolutional layer)"). Dropping a pool changes no parameter name, so a site's VGG19 weights load
  (`scintnode.models.vgg.load_torchvision_features`; a 3-channel first convolution is summed to 1 channel).
- Variants (by name): `paranet` = VGG19 widths 64-128-256-512-512 at 350 px (the paper);
  `{variant.name}` = widths {"-".join(str(w) for w in variant.widths)} (1/16) with batch norm after each
  convolution (torchvision's vgg19_bn layout) at {config["image_size"]} px, same stages and head
  ({record["parameters"]:,} parameters; 61,415,216 for `paranet`).
  The paper reports 3,079,628 trainable + 52,999,836 non-trainable parameters (56,079,464); three full
  1-channel VGG19 feature stacks with this head give 61,415,216, so the paper's network was not exactly
  this one (e.g. it may have frozen and dropped layers it does not name); we follow its text.
- Missing thyroid scan (18.7 % of the paper's patients had none; the paper does not say what it fed the
  third path): an all-zero image on the thyroid path, in training ({phantoms.THYROID_SCAN_SHARE:.1%} of the
  synthetic patients have a scan) and in the node; a real scan is never all zero, so zero is its own flag.
- Preprocessing (§2.1): the anterior frame, isolated spikes (markers, hot pixels, burned-in text) replaced
  by their 5×5 median, a {FIELD_MM:g} mm square on the neck's midline (smaller fields padded; the late image
  cut like the early one when on the same grid, then registered onto it), resized, scaled to its
  {NETWORK_PERCENTILE:g}th percentile, standardised.
- Localisation: Grad-CAM or Grad-CAM++ of the abnormal class on each path (the node uses
  {record["node_cam_method"]}, the better of the two by gland-level F1 in cross-validation) at the last
  convolution of stage {variant.cam_stage} (`paranet`: stage 5, the paper's last convolution). Candidates are
  peaks of the late path's map times the late image's uptake (smoothed {glands.UPTAKE_SMOOTHING_MM:g} mm; at least
  {glands.PEAK_THRESHOLD:g} of the strongest, {glands.PEAK_SEPARATION_MM:g} mm apart, at most {glands.MAX_CANDIDATES}),
  reported only when the patient is predicted abnormal, each with its point on the early and the late image; the
  site comes from the thyroid on the early image (patient's right on the image's left in the anterior view;
  upper/lower, mediastinal below, ectopic cervical above or lateral). The SCs show each path's own map.

## Training (paper 000 protocol)

- Data: `scintnode.phantoms.parathyroid`, {config["patients"]} synthetic patients (seed {config["seed"]}),
  {phantoms.ABNORMAL_SHARE:.1%} abnormal as in the paper; 1, 2 or 4 glands; fast-washout glands; MIBI-avid
  thyroid nodules; thyroid scans on the same or another day.
- {config["folds"]}-fold stratified cross-validation; mini-batches of {config["batch_size"]}; training stops once the
  validation accuracy reaches {config["stop_accuracy"]:.0%} (paper) or after {config["max_epochs"]} epochs;
  validation = {config["validation_share"]:.0%} of each fold's training patients (the paper does not say which).
- Adam, learning rate {config["learning_rate"]:g}, cross-entropy, augmentation as below; batch-norm statistics
  recomputed over the training patients before every
  validation and at the end (with a few dozen steps the running averages lag the weights).
- Weights in half precision (`{record["weights_file"]}`, {weights_mb:.2f} MB, SHA-256 `{record["weights_sha256"]}`).

### Deviations from the paper, and why

- `{variant.name}` is 1/16 of VGG19's widths, with batch norm, at {config["image_size"]} px, and at most
  {config["max_epochs"]} epochs (paper: 400): it is trained on one shared CPU core within half an hour. No
  ImageNet weights (nothing may be downloaded).
- Grad-CAM on stage {variant.cam_stage}: {cam_side}×{cam_side} cells of {FIELD_MM / cam_side:.0f} mm over the
  {FIELD_MM:g} mm field (the paper's stage 5 at 350 px gives 21×21 cells of about {FIELD_MM / 21:.0f} mm; stage 5
  here gives {cam_side // 2}×{cam_side // 2}). A map that coarse marks a region, not a gland, so the candidates
  are taken where the map and the late image's retained uptake agree (in the spirit of Guided Grad-CAM,
  which sharpens the map with image detail). The paper reads its maps directly. The table below gives
  both ways of reading them, and the uptake alone, so that what the map adds is visible.
- The late image is registered (rigid ECC) onto the early one before both enter the network: the patient lies
  down again for the 2-hour image, and unregistered the two paths' maps point at places centimetres apart.
  The paper does not say whether it registered; its readers compare the images by eye.
- Network inputs are scaled to their {NETWORK_PERCENTILE:g}th percentile (clipped at {INPUT_CEILING:g}×), not the
  maximum: a retained gland would otherwise set the late image's scale and dim everything else, a global shortcut
  that no heatmap can place.
- Augmentation: left-right mirroring and shifts of up to a tenth of the field (the paper names
  augmentation, not which). Without the shifts the small network learns where things usually are and its
  maps do not find glands.
- Synthetic studies instead of the paper's 632 patients; ground truth is the phantom, not an expert reading.
- Gland found = a candidate within the gland's radius + {glands.HIT_MARGIN_MM:g} mm (camera resolution); the
  paper compared positions by eye. Gland-level TN = normal patients given no candidate (this reproduces the
  paper's Table 1 arithmetic: 176 TN).

## How these weights were made

```
{record["command"]}
```

torch {record["torch"]}, {record["threads"]} thread(s), {minutes:.1f} minutes, {record["date"]}.

## Results (synthetic studies, not clinical)

Patient level ({config["folds"]}-fold cross-validation, abnormal = positive; metrics averaged over folds, as the
paper does):

{patient}
Gland level (all folds' test patients; Table 1's counts):

{gland}
{warning}Final model on {fresh["patients"]} fresh patients (seed {fresh["seed"]}): accuracy {fmt(fresh["accuracy"])},
sensitivity {fmt(fresh["sensitivity"])}, specificity {fmt(fresh["specificity"])}.

Confusion matrix and ROC of the pooled cross-validation predictions: `{name}.report.png`.
Every number is in `{name}.metrics.json`.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `scintnode train parathyroid` (train/cli.py adds the sub-command)."""
    parser.add_argument("--variant", choices=sorted(net.VARIANTS), help="network size (default paranet-small)")
    parser.add_argument("--out", type=Path, default=net.WEIGHTS_DIR, help=f"output folder (default {net.WEIGHTS_DIR})")
    parser.add_argument("--patients", type=int, help="synthetic patients")
    parser.add_argument("--folds", type=int, help="stratified cross-validation folds (paper: 10)")
    parser.add_argument("--max-epochs", type=int, help="epochs at most per model (paper: 400)")
    parser.add_argument("--image-size", type=int, help="network input side in pixels (default: the variant's)")
    parser.add_argument("--seed", type=int, help="seed for phantoms, folds and initialisation")
    parser.add_argument("--learning-rate", type=float, help="Adam learning rate")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--quick", action="store_true", help="tiny setting for tests (20 patients, 2 folds, 1 epoch, 64px)"
    )


def run_from_args(args: argparse.Namespace, argv: list[str]) -> int:
    base = QUICK if args.quick else TrainConfig()
    overrides = {
        "variant": args.variant,
        "patients": args.patients,
        "folds": args.folds,
        "max_epochs": args.max_epochs,
        "image_size": args.image_size,
        "seed": args.seed,
        "learning_rate": args.learning_rate,
        "device": args.device,
    }
    config = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if config.patients < 2 * config.folds or config.folds < 2 or config.max_epochs < 1:
        print(
            "scintnode train parathyroid: need folds >= 2, patients >= 2 x folds and max-epochs >= 1", file=sys.stderr
        )
        return 2
    if config.image_size is not None and config.image_size < 32:
        print("scintnode train parathyroid: image-size must be at least 32", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, args.threads))
    train(config, args.out, shlex.join(["scintnode", "train", *argv]), log=lambda line: print(line, flush=True))
    return 0
