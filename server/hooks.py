"""Test hooks: settings that make the reliability suite deterministic instead of timing-
dependent. Off unless a `TRUNKLINE_TEST_*` setting turns them on; never for production.

- `test_gate` (a file path): while the file exists, every batch waits before it runs, so a
  test can fill the queue, hold requests in flight or shut down with work running.
- `test_poison`: a batch holding a constant input (every element equal, as a blank image) fails
  in the backend, as a model that raises on some input would.
- `test_leak_kib`: every answered prediction keeps that many KiB for good: the positive control
  of the memory-growth check, which must catch it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from server.backends import Backend

_leaked: list[bytes] = []


class PoisonedInput(RuntimeError):
    """What the poisoned backend raises (its message must never reach a client)."""


class HookedBackend:
    """A backend whose batches wait at the gate and fail on the poison value."""

    def __init__(self, backend: Backend, gate: Path | None, poison: bool) -> None:
        self.backend, self.gate, self.poison = backend, gate, poison
        self.name = backend.name

    def __getattr__(self, attr: str):
        return getattr(self.backend, attr)

    def run_trunk(self, trunk: str, batch: np.ndarray) -> np.ndarray:
        while self.gate is not None and self.gate.exists():
            time.sleep(0.005)
        if self.poison:
            rows = batch.reshape(len(batch), -1)
            if (rows == rows[:, :1]).all(axis=1).any():
                raise PoisonedInput(f"poisoned input in a batch of {len(batch)} at /internal/{trunk}")
        return self.backend.run_trunk(trunk, batch)


def wrap(backend: Backend, settings) -> Backend:
    if settings.test_gate is None and not settings.test_poison:
        return backend
    return HookedBackend(backend, settings.test_gate, settings.test_poison)


def leak(settings) -> None:
    if settings.test_leak_kib:
        # written bytes: resident at once, not zero pages mapped lazily
        _leaked.append(b"\xa5" * (settings.test_leak_kib * 1024))
