"""Engine lifecycle: start, calibrate (then ready), and atomic reload."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging

from fastapi import FastAPI

from server.batcher import Batcher
from server.engine import Engine
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("trunkline")


def start_engine(settings: Settings, metrics: Metrics) -> Engine:
    engine = Engine(settings)
    engine.batcher = Batcher(
        engine.backend,
        settings.max_batch_size,
        settings.batch_wait_ms,
        settings.max_queue,
        on_batch=lambda size, width: metrics.batch_size.labels(engine.name, str(width)).observe(size),
    )
    return engine


def release_free_memory() -> None:
    """Hand the heap pages that calibration freed back to the OS (glibc's malloc_trim).

    Calibration runs every trunk width and route at every batch bucket; glibc keeps the
    freed activation memory in its arenas, hundreds of MiB of resident memory that serving
    (one batch at a time) never needs again."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only; elsewhere a no-op
        trim(0)


async def calibrate(engine: Engine) -> None:
    await asyncio.to_thread(engine.calibrate)
    release_free_memory()
    engine.ready = True
    log.info("model %s ready on the %s backend", engine.name, engine.backend.name)


async def reload_engine(app: FastAPI) -> Engine:
    """Load, start and calibrate a fresh engine, then swap it in atomically.

    Requests already admitted finish on the old engine (they hold a reference to it);
    its batcher stops once they are answered.
    """
    settings, metrics = app.state.settings, app.state.metrics
    engine = await asyncio.to_thread(start_engine, settings, metrics)
    engine.batcher.start()
    await calibrate(engine)
    old, app.state.engine = app.state.engine, engine
    while old.batcher.in_flight:
        await asyncio.sleep(0.01)
    await old.batcher.stop()
    return engine
