"""The model repository: every hosted model by name, its state, and loading and unloading at
run time (Triton's model repository, KServe's ModelRepository).

Sources: the folders of `--model-repository DIR` (`DIR/<name>/` or `DIR/<name>/<version>/`,
the highest numeric version served, as Triton's default version policy), plus each
`--model PATH|NAME`; with neither, the bundled models. Each model has its own engine
(batcher and admission); all share one compute thread.

Requests hold a *lease* on the engine they use from before their body is read until they are
answered, so a reload or an unload retires an engine only once nobody holds it: no request
can reach a stopped batcher.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from models import checkpoint
from models.adapter import load_adapter
from server.compute import ComputeScheduler
from server.engine import Engine
from server.errors import (
    ControlDisabled,
    InvalidValue,
    LoadFailed,
    ModelNotFound,
    ModelNotReady,
    ModelUnloading,
    ShuttingDown,
    UnknownTask,
)
from server.metrics import Metrics
from server.schemas import RepositoryEntry
from server.settings import Settings

log = logging.getLogger("trunkline")

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ModelState(StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class Slot:
    """One model name: its source folder and the engine serving it, if any."""

    name: str
    source: Path
    engine: Engine | None = None
    state: ModelState = ModelState.UNAVAILABLE
    reason: str = "not loaded"
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def version_folder(source: Path) -> tuple[Path, str]:
    """(checkpoint folder, version) of a model folder: its highest numeric subfolder, or
    the folder itself as version 1."""
    versions = [p for p in source.iterdir() if p.is_dir() and p.name.isdigit()] if source.is_dir() else []
    if versions:
        best = max(versions, key=lambda p: int(p.name))
        return best, best.name
    return source, "1"


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc's malloc_trim): calibration and unloaded
    models leave hundreds of MiB in malloc's arenas that serving never reuses."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:  # glibc only; elsewhere a no-op
        trim(0)


class ModelRepository:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.compute = ComputeScheduler(settings.load_share, nice=settings.compute_nice)
        self.explicit = settings.model_control_mode == "explicit"
        self.slots: dict[str, Slot] = {}
        self.draining = False
        self.started = False
        self._scan()

    # -- sources ----------------------------------------------------------------------
    def _scan(self) -> None:
        """Add a slot for every model folder the settings name (new folders in the
        repository directory appear on the next scan, as Triton's index does)."""
        sources: dict[str, Path] = {}
        repo = self.settings.model_repository
        if repo is not None:
            if not repo.is_dir():
                raise ValueError(f"--model-repository {repo} is not a directory")
            for p in sorted(repo.iterdir()):
                if p.is_dir() and MODEL_NAME.match(p.name):
                    sources[p.name] = p
        for m in self.settings.model:
            path = checkpoint.resolve(m)
            sources[path.name] = path
        if not sources:
            sources = {p.name: p for p in sorted(checkpoint.BUNDLED.iterdir()) if p.is_dir()}
        for name, path in sources.items():
            if name not in self.slots:
                self.slots[name] = Slot(name, path)

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name) if MODEL_NAME.match(name) else None
        if slot is None:
            raise ModelNotFound(f"unknown model {name!r}; this server has {sorted(self.slots)}", "model")
        return slot

    @property
    def default_model(self) -> str:
        serving = [s.name for s in self.slots.values() if s.engine is not None]
        return (serving or list(self.slots))[0]

    def model_for(self, tasks: list[str], field: str) -> str | None:
        """The model of a request that names none: the only model served, or else the only one
        with every task it asks for (None: the default model)."""
        serving = {s.name: s.engine.tasks for s in self.slots.values() if s.engine is not None}
        if len(self.slots) <= 1 or not tasks:
            return None
        having = [name for name, offered in serving.items() if all(t in offered for t in tasks)]
        if len(having) == 1:
            return having[0]
        if not having:
            named = ", ".join(map(repr, tasks))
            raise UnknownTask(
                f"unknown task {named}: no model here has it; models and tasks: {serving}", field
            )
        raise InvalidValue(f"models {having} all have {tasks}: name one of them in `model`", "model")

    # -- serving ----------------------------------------------------------------------
    def loaded(self, name: str | None, version: str | None = None) -> Engine:
        """The engine serving a model (ready or still calibrating), at `version` if given."""
        if self.draining:
            raise ShuttingDown("the server is shutting down", retry_after=1)
        slot = self.slot(name or self.default_model)
        engine = slot.engine
        if slot.state == ModelState.UNLOADING:
            raise ModelUnloading(f"model {slot.name!r} is being unloaded", "model", retry_after=1)
        if engine is None and slot.state == ModelState.LOADING:
            raise ModelNotReady(
                f"model {slot.name!r} is loading; see /v2/models/{slot.name}/ready", retry_after=1
            )
        if engine is None:
            raise ModelNotFound(f"model {slot.name!r} is not loaded ({slot.reason})", "model")
        if version is not None and version != engine.version:
            raise ModelNotFound(
                f"model {slot.name!r} has no version {version!r} loaded (serving version {engine.version})",
                "version",
            )
        return engine

    @contextmanager
    def lease(self, name: str | None, version: str | None = None) -> Iterator[Engine]:
        """The ready engine of a model, held until the request is answered."""
        engine = self.loaded(name, version)
        if not engine.ready:
            raise ModelNotReady(
                f"model {engine.name!r} is still calibrating; see /v2/models/{engine.name}/ready",
                retry_after=1,
            )
        engine.users += 1
        try:
            yield engine
        finally:
            engine.users -= 1

    def engines(self) -> list[Engine]:
        return [s.engine for s in self.slots.values() if s.engine is not None]

    @property
    def ready(self) -> bool:
        """Server readiness: the models named at start are loaded, every engine serving is
        ready, and the server is not draining (a model loaded later does not unready it)."""
        return self.started and not self.draining and all(e.ready for e in self.engines())

    def summary(self, slot: Slot) -> dict:
        engine = slot.engine
        return {
            "name": slot.name,
            "version": engine.version if engine else None,
            "family": engine.adapter.family if engine else None,
            "tasks": engine.tasks if engine else [],
            "state": slot.state.value,
            "reason": slot.reason,
            "ready": bool(engine and engine.ready and slot.state == ModelState.READY),
        }

    def index(self) -> list[RepositoryEntry]:
        self._scan()
        return [
            RepositoryEntry(
                name=s.name,
                version=s.engine.version if s.engine else "",
                state=s.state.value,
                reason=s.reason if s.state != ModelState.READY else "",
            )
            for s in self.slots.values()
        ]

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self.compute.watch_loop_lag()
        results = await asyncio.gather(
            *(self.load(name, control=False) for name in list(self.slots)), return_exceptions=True
        )
        for r in results:
            if isinstance(r, LoadFailed):
                log.error("%s", r)  # the model stays UNAVAILABLE with the reason; others serve
            elif isinstance(r, BaseException):
                raise r
        if not self.engines():
            raise RuntimeError("no model could be loaded: " + "; ".join(map(str, results)))
        release_free_memory()
        self.started = True

    async def load(self, name: str, control: bool = True) -> Engine:
        """Load (or reload) a model from its folder and swap it in once it is ready; on
        failure the version served before keeps serving."""
        if control and not self.explicit:
            raise ControlDisabled(
                "model control is disabled: start the server with --model-control-mode explicit"
            )
        self._scan()
        slot = self.slot(name)
        async with slot.lock:
            old = slot.engine
            if old is None:
                slot.state, slot.reason = ModelState.LOADING, ""
            try:
                engine = await self._build(slot, background=bool(self.engines()))
            except LoadFailed as e:
                if old is None:
                    slot.state, slot.reason = ModelState.UNAVAILABLE, str(e)
                raise
            slot.engine, slot.state, slot.reason = engine, ModelState.READY, ""
            if old is not None:
                await self._retire(old)
            return engine

    async def _build(self, slot: Slot, background: bool) -> Engine:
        started = time.perf_counter()
        path, version = version_folder(slot.source)
        engine = None
        try:
            adapter = await self.compute.run(load_adapter, path, slot.name, version, background=background)
            engine = Engine(adapter, self.settings, self.compute, self.metrics)
            engine.batcher.start()
            await engine.start(background=background)
        except BaseException as e:
            if engine is not None:
                await engine.stop()
            if not isinstance(e, checkpoint.CheckpointError):  # a refused artifact: checkpoint or graph
                raise
            log.warning("loading %s failed: %s", slot.name, e)
            raise LoadFailed(f"failed to load model {slot.name!r}: {e}") from None
        log.info("loaded %s version %s in %.1f s", slot.name, version, time.perf_counter() - started)
        return engine

    async def unload(self, name: str) -> None:
        if not self.explicit:
            raise ControlDisabled(
                "model control is disabled: start the server with --model-control-mode explicit"
            )
        slot = self.slot(name)
        async with slot.lock:
            if slot.engine is None:
                return  # Triton answers an unload of an unloaded model with success
            slot.state, slot.reason = ModelState.UNLOADING, ""
            engine = slot.engine
            await self._retire(engine)
            slot.engine, slot.state, slot.reason = None, ModelState.UNAVAILABLE, "unloaded"
        del engine
        gc.collect()
        release_free_memory()

    async def _retire(self, engine: Engine) -> None:
        """Stop an engine once every request holding it is answered (or the drain
        timeout passed)."""
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while engine.users and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await engine.stop()

    async def stop(self) -> None:
        self.draining = True
        for slot in self.slots.values():
            if slot.engine is not None:
                await slot.engine.stop()
        await self.compute.stop_watching()
        self.compute.close()
