"""Training and evaluation of the paper 002 thyroid classifier on synthetic phantoms, by the paper's protocol.

`scintnode train thyroid` runs here: stratified k-fold cross-validation (Table 3), a final model on all data,
a check on a fresh synthetic set, then the fp16 weights, metrics JSON, report PNG and model card."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from scintnode.models import thyroid as net
from scintnode.models.device import model_device, torch_device
from scintnode.phantoms import thyroid as phantoms
from scintnode.train import metrics
from scintnode.train.card import fmt, write_metrics
from scintnode.train.report import draw_report

VERSION = "0.1.0+synthetic"
METRIC_COLUMNS = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "auc", "kappa")

Log = Callable[[str], None]


@dataclass(frozen=True)
class TrainConfig:
    """What a run does; the defaults are the settings of the committed weights (see the model card)."""

    per_class: int = 80
    epochs: int = 15
    folds: int = 5
    image_size: int = 112  # the smallest side at which layer4 (stride 32) still gives a 4x4 Grad-CAM
    seed: int = 2024
    batch_size: int = 12  # paper 002
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4  # paper 002
    lr_drop_at: float = 0.7  # fraction of the batches after which the rate drops to 1/10 (paper: a step decay)
    check_per_class: int = 25  # fresh phantoms (another seed) the final model is checked on
    device: str = "cpu"  # where it trains (`--device`); the committed weights were made on the CPU


QUICK = TrainConfig(per_class=3, epochs=1, folds=2, image_size=64, check_per_class=2)


def make_dataset(per_class: int, seed: int, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic phantoms through the network's own preprocessing: inputs (N, S, S) and class indices (N,)."""
    samples = phantoms.generate(per_class, seed)
    inputs = np.stack(
        [net.prepare_frame(p.counts, (p.pixel_spacing_mm,) * 2, image_size).network_input for p in samples]
    )
    return inputs, phantoms.class_index([p.label for p in samples])


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Test indices of each fold; every class is shuffled and dealt round the folds in turn."""
    counts = np.bincount(labels)
    if folds < 2 or folds > int(counts[counts > 0].min()):
        raise ValueError(f"{folds} folds need 2 <= folds <= the smallest class size ({int(counts.min())})")
    rng = np.random.default_rng(seed)
    buckets: list[list[int]] = [[] for _ in range(folds)]
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        for position, index in enumerate(members):
            buckets[(position + offset) % folds].append(int(index))
        offset += len(members)
    return [np.sort(np.array(bucket, dtype=np.int64)) for bucket in buckets]


def fit(x: np.ndarray, y: np.ndarray, config: TrainConfig, seed: int, log: Log) -> net.ThyroidResNet34:
    """Cross-entropy, Adam with weight decay, batch 12, one step decay of the rate to 1/10 (paper 002)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    device = torch_device(config.device)
    model = net.ThyroidResNet34().to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    batches_per_epoch = max(1, len(y) // config.batch_size)
    drop_after = max(1, round(config.lr_drop_at * batches_per_epoch * config.epochs))
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=[drop_after], gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = net.to_network_input(x), torch.from_numpy(y)
    for epoch in range(1, config.epochs + 1):
        model.train()
        started, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        order = rng.permutation(len(y))
        for batch in np.array_split(order, batches_per_epoch):
            index = torch.from_numpy(batch)
            wanted = targets[index].to(device)
            optimiser.zero_grad()
            logits = model(inputs[index].to(device))
            loss = loss_fn(logits, wanted)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == wanted).sum())
            seen += len(batch)
        log(
            f"  epoch {epoch:3d}/{config.epochs}  loss {total / seen:.4f}  train acc {correct / seen:.3f}  "
            f"lr {schedule.get_last_lr()[0]:.2e}  {time.perf_counter() - started:.1f}s"
        )
    return model.eval()


def predict(model: net.ThyroidResNet34, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N, 4) in eval mode."""
    model.eval()
    device = model_device(model)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = net.to_network_input(x[start : start + batch_size]).to(device)
            out.append(net.probabilities(model(batch)).cpu().numpy())
    return np.concatenate(out)


def summary_row(report: metrics.Report) -> dict[str, float]:
    """The Table 3 columns: accuracy, macro sensitivity/specificity/PPV/NPV/F1/AUC and kappa."""
    return {
        "accuracy": report.accuracy,
        "sensitivity": report.macro.sensitivity,
        "specificity": report.macro.specificity,
        "ppv": report.macro.ppv,
        "npv": report.macro.npv,
        "f1": report.macro.f1,
        "auc": report.macro.auc,
        "kappa": report.kappa,
    }


@dataclass(frozen=True)
class FoldResult:
    number: int
    train_size: int
    report: metrics.Report
    seconds: float


@dataclass(frozen=True)
class RunRecord:
    """Everything a training run produced, for the metrics JSON and the model card."""

    config: TrainConfig
    command: str
    folds: tuple[FoldResult, ...]
    summary: dict[str, tuple[float, float]]  # Table 3 column -> (mean, sample std) over folds
    pooled: metrics.Report  # all held-out predictions of the cross-validation together
    check: metrics.Report  # final model on fresh phantoms
    weights: Path
    weights_sha256: str
    seconds: float
    threads: int
    date: str

    def as_dict(self) -> dict[str, object]:
        return {
            "network": net.NAME,
            "version": VERSION,
            "synthetic": True,
            "statement": "Trained and evaluated on synthetic phantoms only; these figures are not clinical accuracy.",
            "command": self.command,
            "config": asdict(self.config),
            "weights_file": self.weights.name,
            "weights_sha256": self.weights_sha256,
            "weights_bytes": self.weights.stat().st_size,
            "cross_validation": {
                "folds": [
                    {
                        "fold": fold.number,
                        "train": fold.train_size,
                        "seconds": round(fold.seconds, 1),
                        **summary_row(fold.report),
                        **fold.report.as_dict(),
                    }
                    for fold in self.folds
                ],
                "mean_std": {k: {"mean": m, "std": sd} for k, (m, sd) in self.summary.items()},
                "std": "sample standard deviation over folds (ddof=1)",
            },
            "cross_validation_pooled": self.pooled.as_dict(),
            "fresh_check": {
                "seed": self.config.seed + 1,
                "per_class": self.config.check_per_class,
                **self.check.as_dict(),
            },
            "seconds": round(self.seconds, 1),
            "torch": torch.__version__,
            "threads": self.threads,
            "machine": platform.machine(),
            "date": self.date,
        }


def train(config: TrainConfig, out_dir: Path, command: str, log: Log = print) -> RunRecord:
    """Cross-validate, train the final model, check it, and write weights, metrics, report and card."""
    started = time.perf_counter()
    classes = net.CLASS_KEYS
    log(f"synthetic thyroid phantoms: {config.per_class} per class, seed {config.seed}, {config.image_size}px")
    x, y = make_dataset(config.per_class, config.seed, config.image_size)

    folds: list[FoldResult] = []
    pooled_truth, pooled_probs = [], []
    for number, test_index in enumerate(stratified_folds(y, config.folds, config.seed), start=1):
        train_index = np.setdiff1d(np.arange(len(y)), test_index)
        log(f"fold {number}/{config.folds}: train {len(train_index)}, test {len(test_index)}")
        fold_started = time.perf_counter()
        model = fit(x[train_index], y[train_index], config, config.seed + number, log)
        probs = predict(model, x[test_index])
        report = metrics.evaluate(y[test_index], probs, classes)
        log(f"fold {number}: " + "  ".join(f"{k} {v:.3f}" for k, v in summary_row(report).items()))
        folds.append(FoldResult(number, len(train_index), report, time.perf_counter() - fold_started))
        pooled_truth.append(y[test_index])
        pooled_probs.append(probs)

    summary = {
        column: metrics.mean_and_std([summary_row(fold.report)[column] for fold in folds]) for column in METRIC_COLUMNS
    }
    log("cross-validation mean ± std: " + "  ".join(f"{k} {m:.3f}±{sd:.3f}" for k, (m, sd) in summary.items()))
    truth_all, probs_all = np.concatenate(pooled_truth), np.concatenate(pooled_probs)

    log(f"final model: all {len(y)} phantoms")
    final = fit(x, y, config, config.seed, log)
    x_check, y_check = make_dataset(config.check_per_class, config.seed + 1, config.image_size)
    check = metrics.evaluate(y_check, predict(final, x_check), classes)
    log(f"final model on {len(y_check)} fresh phantoms (seed {config.seed + 1}): accuracy {check.accuracy:.3f}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{net.NAME}.pt"
    net.save_weights(
        final,
        weights,
        {
            "network": net.NAME,
            "version": VERSION,
            "image_size": config.image_size,
            "hidden": list(net.HIDDEN),
            "dropout": net.DROPOUT,
            "field_mm": net.FIELD_MM,
            "synthetic": True,
            "training": asdict(config),
        },
    )
    record = RunRecord(
        config=config,
        command=command,
        folds=tuple(folds),
        summary=summary,
        pooled=metrics.evaluate(truth_all, probs_all, classes),
        check=check,
        weights=weights,
        weights_sha256=net.file_sha256(weights),
        seconds=time.perf_counter() - started,
        threads=torch.get_num_threads(),
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
    )
    write_metrics(out / f"{net.NAME}.metrics.json", record.as_dict())
    draw_report(
        truth_all,
        probs_all,
        classes,
        f"{net.NAME} {VERSION}: {config.folds}-fold CV on synthetic phantoms (not clinical)",
        out / f"{net.NAME}.report.png",
    )
    (out / f"{net.NAME}.md").write_text(model_card(record))
    log(f"wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB, sha256 {record.weights_sha256[:12]}…)")
    log(f"done in {record.seconds / 60:.1f} min")
    return record


def model_card(record: RunRecord) -> str:
    """The Markdown model card: what the network is, how these weights were made, and what they are not."""
    config, check = record.config, record.check
    header = "| Fold | " + " | ".join(METRIC_COLUMNS) + " |\n|---|" + "---|" * len(METRIC_COLUMNS) + "\n"
    rows = "".join(
        f"| {fold.number} | " + " | ".join(fmt(summary_row(fold.report)[c]) for c in METRIC_COLUMNS) + " |\n"
        for fold in record.folds
    )
    rows += (
        "| Mean ± std | "
        + " | ".join(f"{fmt(record.summary[c][0])} ± {fmt(record.summary[c][1])}" for c in METRIC_COLUMNS)
        + " |\n"
    )
    per_class = (
        "| Class | sensitivity | specificity | PPV | NPV | F1 | AUC |\n|---|---|---|---|---|---|---|\n"
        + "".join(
            f"| {name} | {fmt(m.sensitivity)} | {fmt(m.specificity)} | {fmt(m.ppv)} | {fmt(m.npv)} | "
            f"{fmt(m.f1)} | {fmt(m.auc)} |\n"
            for name, m in check.per_class.items()
        )
    )
    labels = "\n".join(
        f'  - `{label.key}`: {label.display} — ({label.code.value}, {label.code.scheme}, "{label.code.meaning}")'
        for label in net.LABELS
    )
    size = config.image_size
    return f"""# Model card: {net.NAME} {VERSION}

**Trained and evaluated on synthetic phantoms only. The figures below are not clinical accuracy; these
weights must not be used to diagnose a patient.** They exist so the node can be demonstrated and tested end
to end. A site replaces them with weights trained on its own images (same file format, see
`scintnode/models/thyroid.py: save_weights`).

## Network

Paper 002: Zhao et al., "Diagnosis of thyroid disease using deep convolutional neural network models applied
to thyroid scintigraphy images: a multicenter study", Front. Endocrinol. 2023, doi 10.3389/fendo.2023.1224191.

- ResNet-34 (He et al., CVPR 2016) backbone with torchvision's parameter names; its final FC is replaced by
  512 → FC {net.HIDDEN[0]} + leaky ReLU + dropout {net.DROPOUT} → FC {net.HIDDEN[1]} + leaky ReLU → FC 4 + softmax.
  The paper does not give the hidden widths; {net.HIDDEN[0]} and {net.HIDDEN[1]} are our choice.
- Input: the anterior frame of a planar 99mTc-pertechnetate NM image, padded to a square (cropped to
  {net.FIELD_MM:g} mm around the counts when the field of view is wider), resized to {size}×{size},
  scaled to its {net.INTENSITY_PERCENTILE}th percentile, replicated to 3 channels and ImageNet-normalised.
- Classes (SR finding codes):
{labels}
- Explanation: Grad-CAM of the predicted class on `layer4`, mapped back onto the source frame.

## Training (paper 002 protocol, as far as it applies)

- Data: `scintnode.phantoms.thyroid`, {config.per_class} synthetic phantoms per class (seed {config.seed});
  128×128 or 256×256 matrices, butterfly gland, salivary glands, soft-tissue background, 7–10 mm FWHM blur,
  Poisson counts.
- Cross-entropy; Adam, learning rate {config.learning_rate:g}, weight decay {config.weight_decay:g}; batch
  {config.batch_size}; the rate drops to 1/10 after {config.lr_drop_at:.0%} of the batches; epochs: {config.epochs}.
- {config.folds}-fold stratified cross-validation (Table 3 of the paper), then a final model on all
  phantoms, checked on {config.check_per_class} fresh phantoms per class (seed {config.seed + 1}).
- Weights stored in half precision (`{record.weights.name}`, {record.weights.stat().st_size / 1e6:.1f} MB,
  SHA-256 `{record.weights_sha256}`); loaded as float32.

### Deviations from the paper, and why

- No ImageNet pretraining: nothing may be downloaded here, so the backbone starts from torchvision's random
  initialisation. `scintnode.models.resnet.load_backbone` loads a site's torchvision ImageNet weights.
- Input {size}×{size} instead of the usual 224×224, epochs: {config.epochs} instead of 200,
  learning rate {config.learning_rate:g} with one step decay instead of a decay every 80 batches, and
  {config.per_class * 4} phantoms: the weights were trained on a shared 2-core CPU without a GPU.
- Synthetic phantoms instead of 2,581 patient images: no patient data is available to this project.
- Kappa is Cohen's kappa of prediction against truth (the paper reports a kappa per model).

## How these weights were made

```
{record.command}
```

torch {torch.__version__}, {record.threads} threads, {record.seconds / 60:.1f} minutes, {record.date}.

## Results (synthetic phantoms, not clinical)

{config.folds}-fold cross-validation (macro averages over the 4 classes, as in the paper's Table 3):

{header}{rows}
Final model on {int(check.confusion.sum())} fresh phantoms (seed {config.seed + 1}):
accuracy {fmt(check.accuracy)}, kappa {fmt(check.kappa)}.

{per_class}
Confusion matrix and ROC curves of the pooled cross-validation predictions: `{net.NAME}.report.png`.
Every number is in `{net.NAME}.metrics.json`.
"""
