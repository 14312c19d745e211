"""The compute thread every hosted model shares, and the event loop's lag.

Model compute runs on one worker thread (torch and onnxruntime use their own intra-op
threads inside it), so that the event loop never blocks on it and two models' batches
interleave instead of competing for the same cores. Serving batches run first, in the
order they were submitted; background work (building and calibrating a model that is being
loaded) runs in small jobs, and while serving batches wait it takes at most
`background_share` of the thread's time, so that loading a model barely slows the others.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class ComputeScheduler:
    def __init__(self, background_share: float = 0.25, nice: int = 0) -> None:
        self.background_share = background_share
        self.nice = nice
        self._serving: deque = deque()
        self._background: deque = deque()
        self._cv = threading.Condition()
        self._background_after = 0.0  # monotonic time before which background work yields
        self._last_serving = -1e9  # when the last serving job ended
        self._closed = False
        self._running = False
        self._thread = threading.Thread(target=self._work, name="trunkline-compute", daemon=True)
        self._thread.start()
        self.loop_lag_ms = 0.0  # how late the event loop runs a timer: requests wait that long too
        self._lag_task: asyncio.Task | None = None

    async def run(self, fn: Callable[..., Any], *args: Any, background: bool = False) -> Any:
        """Run `fn(*args)` on the compute thread and await its result."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cv:
            if self._closed:
                raise RuntimeError("the compute thread is stopped")
            (self._background if background else self._serving).append((fn, args, loop, future))
            self._cv.notify()
        return await future

    @property
    def idle(self) -> bool:
        """No job running and none waiting (background work counts: it holds the thread)."""
        return not (self._running or self._serving or self._background)

    QUIET_S = 1.0  # no serving work for this long: background work runs at full speed

    def _next(self):
        with self._cv:
            self._running = False
            while True:
                if self._closed and not self._serving:
                    return None, False  # background work of a stopping server is dropped
                now = time.monotonic()
                quiet = now - self._last_serving > self.QUIET_S
                if self._background and (quiet or now >= self._background_after):
                    self._running = True
                    return self._background.popleft(), True
                if self._serving:
                    self._running = True
                    return self._serving.popleft(), False
                # background work waiting for its turn, or nothing to do
                self._cv.wait(timeout=self._background_after - now if self._background else None)

    def _work(self) -> None:
        if self.nice and hasattr(os, "setpriority"):
            # below the event loop: its intra-op threads, created from here, inherit this, so
            # the loop (parsing, admission, answers) preempts compute instead of queueing
            # behind it. Raising one's own niceness needs no privilege.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
        while True:
            job, background = self._next()
            if job is None:
                return
            fn, args, loop, future = job
            started = time.monotonic()
            try:
                result, error = fn(*args), None
            except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                result, error = None, e
            if background:
                took = time.monotonic() - started
                share = self.background_share
                self._background_after = time.monotonic() + took * (1 - share) / share
            else:
                self._last_serving = time.monotonic()
            loop.call_soon_threadsafe(_settle, future, result, error)
            del job, fn, args, result, error  # hold nothing of a finished job (an unloaded model)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=60)

    # -- the event loop's lag ---------------------------------------------------------
    def watch_loop_lag(self) -> None:
        self._lag_task = asyncio.get_running_loop().create_task(self._watch_loop_lag())

    async def stop_watching(self) -> None:
        if self._lag_task:
            self._lag_task.cancel()
            await asyncio.gather(self._lag_task, return_exceptions=True)

    async def _watch_loop_lag(self, period: float = 0.01) -> None:
        """Exponentially weighted lag of a 10 ms timer; rises fast, decays over ~5 periods."""
        while True:
            t = time.monotonic()
            await asyncio.sleep(period)
            lag = max(0.0, time.monotonic() - t - period) * 1000
            self.loop_lag_ms = lag if lag > self.loop_lag_ms else 0.8 * self.loop_lag_ms + 0.2 * lag


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting request went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
