"""Building blocks of the model cards and metrics files the training commands write beside their weights.

Used at the end of a training run: the run's environment, and the per-split metrics as a Markdown table."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch


def environment() -> dict[str, object]:
    """What a run records about where it ran: torch version, CPU threads, machine, date."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def fmt(value: object) -> str:
    """A value for a card: floats to 3 decimals ("n/a" for NaN), anything else as text."""
    if isinstance(value, (float, np.floating)):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def write_metrics(path: Path, record: object) -> None:
    """The metrics JSON beside the weights; numpy scalars and arrays become plain JSON."""
    path.write_text(json.dumps(record, indent=2, default=_plain) + "\n")


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def metrics_table(
    split_name: str,
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str],
    summary: Mapping[str, Mapping[str, float]],
) -> str:
    """One Markdown row per split (numbered by `rows[i][split_name]`), then the mean ± std row."""
    lines = [f"| {split_name.capitalize()} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for row in rows:
        values = [fmt(float(str(row[column]))) for column in columns]
        lines.append(f"| {row[split_name]} | " + " | ".join(values) + " |")
    means = [f"{fmt(summary[c]['mean'])} ± {fmt(summary[c]['std'])}" for c in columns]
    lines.append("| Mean ± std | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"
