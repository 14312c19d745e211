"""Calibration: how long each trunk and task path takes per batch bucket, measured on
the compute thread and kept per checkpoint and machine, so a restart or a reload of the
same checkpoint skips the timing."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from routing import RouteTables

log = logging.getLogger("trunkline")


def machine_key(backend: str, threads: int) -> str:
    """Latencies hold for one CPU model, core count, backend and library versions."""
    cpu = platform.processor()
    try:
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu
        )
    except OSError:
        pass
    parts = [cpu, str(os.cpu_count()), backend, str(threads), torch.__version__, onnxruntime.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def run_ms(fn: Callable, *args) -> float:
    """Wall time of one run, in ms."""
    t = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t) * 1000


async def time_trunk(
    run: Callable[..., Awaitable],
    backend,
    tables: RouteTables,
    batch: np.ndarray,
    trunk: str,
    rounds: int,
    warm_up: bool = True,
) -> None:
    """Time the trunk and every path on that trunk on one batch bucket: the
    fastest of `rounds` runs (after a warm-up run, for graphs not run before). `run` puts
    each single run on the compute thread as its own job, so that serving batches wait for
    one run at most."""

    async def median_ms(fn: Callable, *args) -> float:
        if warm_up:
            await run(fn, *args)
        # the fastest run: what the graph costs when nothing else competes for the cores
        # (a median keeps a spike of a busy machine; the serving slowdown is learnt live)
        return min([await run(run_ms, fn, *args) for _ in range(rounds)])

    bucket = len(batch)
    tokens = await run(backend.run_trunk, trunk, batch)
    tables.trunk_latency_ms.setdefault(trunk, {})[bucket] = await median_ms(backend.run_trunk, trunk, batch)
    for e in tables.entries(trunk=trunk):
        e.latency_ms[bucket] = await median_ms(backend.run_path, e.task, e.route, tokens, batch)


async def warm(
    run: Callable[..., Awaitable], backend, tables: RouteTables, batch: np.ndarray, trunk: str
) -> None:
    """Run every graph on `trunk` once (first runs allocate and pick kernels)."""
    tokens = await run(backend.run_trunk, trunk, batch)
    for e in tables.entries(trunk=trunk):
        await run(backend.run_path, e.task, e.route, tokens, batch)


def snapshot(tables: RouteTables) -> dict:
    return {
        "trunk": {str(w): {str(b): ms for b, ms in t.items()} for w, t in tables.trunk_latency_ms.items()},
        "paths": {
            f"{e.task}/{e.id}": {str(b): ms for b, ms in e.latency_ms.items()} for e in tables.entries()
        },
    }


def save(file: Path, tables: RouteTables) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot(tables)))
    tmp.replace(file)


def restore(file: Path, tables: RouteTables, buckets: list[int]) -> bool:
    """Fill the tables' latencies from a cache file; False when absent or incomplete."""
    try:
        data = json.loads(file.read_text())
        trunk = {str(w): {int(b): float(ms) for b, ms in t.items()} for w, t in data["trunk"].items()}
        paths = {k: {int(b): float(ms) for b, ms in v.items()} for k, v in data["paths"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    wanted = set(buckets)
    entries = tables.entries()
    complete = all(wanted <= set(trunk.get(t, {})) for t in tables.trunks) and all(
        wanted <= set(paths.get(f"{e.task}/{e.id}", {})) for e in entries
    )
    if not complete:
        return False
    tables.trunk_latency_ms.update(trunk)
    for e in entries:
        e.latency_ms.update(paths[f"{e.task}/{e.id}"])
    return True
