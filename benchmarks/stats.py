"""Summary figures the benchmarks print."""

from __future__ import annotations

from collections.abc import Sequence


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile as the nearest observed value (no interpolation between the few runs a benchmark has)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
