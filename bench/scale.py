"""How much each benchmark run measures: `tiny` (CI: seconds, proves it runs), `quick`, `full`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scale:
    name: str
    rounds: int  # interleaved A/B rounds of model-level timings
    http_requests: int  # sequential batch-1 requests per task and tier over HTTP
    duration_s: float  # seconds per load run
    load_rounds: int  # interleaved rounds of each load comparison
    accuracy_scenes: int  # test scenes per route for accuracy vs FLOPs
    own_envs: bool  # peers in their own throwaway venvs (tiny runs them in this one)
    concurrency: int = 32


SCALES = {
    "tiny": Scale(
        "tiny",
        rounds=2,
        http_requests=2,
        duration_s=1.5,
        load_rounds=1,
        accuracy_scenes=40,
        own_envs=False,
        concurrency=8,
    ),
    "quick": Scale(
        "quick", rounds=7, http_requests=10, duration_s=5, load_rounds=2, accuracy_scenes=500, own_envs=True
    ),
    "full": Scale(
        "full", rounds=15, http_requests=30, duration_s=12, load_rounds=3, accuracy_scenes=2000, own_envs=True
    ),
}
