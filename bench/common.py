"""Timing helpers: interleaved rounds and medians, because these machines are noisy."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    fns: dict[str, Callable[[], object]], rounds: int = 15, inner: int = 3
) -> dict[str, float]:
    """Median milliseconds per call of each fn, measured in alternating rounds (A B C A B C ...)."""
    for fn in fns.values():
        fn()  # warm
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            samples[name].append((time.perf_counter() - start) * 1000 / inner)
    return {name: statistics.median(v) for name, v in samples.items()}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]
