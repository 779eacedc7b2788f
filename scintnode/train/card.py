"""Building blocks of the model cards and metrics files the training commands write beside their weights.

Used at the end of a training run: the run's environment, and the per-split metrics as a Markdown table."""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import torch


def environment() -> dict[str, object]:
    """What a run records about where it ran: torch version, CPU threads, machine, date."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


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
