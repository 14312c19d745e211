"""Dynamic batching keyed by trunk width, one batcher per hosted model.

Requests whose plans share a trunk width are stacked into one batch: the trunk runs once,
then the batch is split by (task, route), each path runs on its rows, and the rows are put
back in request order. Batches run on the shared compute thread, off the event loop; while
one runs, the next fills. Within a width the queue is ordered by priority (a lower number
first, as Triton's priority levels), then by arrival; the next batch comes from the width
whose head request ranks first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from routing import Plan
from server.backends import Backend
from server.compute import ComputeScheduler
from server.errors import DeadlineExceeded, QueueFull

_order = itertools.count()
log = logging.getLogger("trunkline")


def _report_crash(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the batching loop stopped", exc_info=task.exception())


@dataclass(eq=False)  # compared by (priority, arrival) only, never by its arrays
class WorkItem:
    inputs: np.ndarray  # this request's decoded instances, as the adapter decoded them
    plan: Plan
    deadline: float | None = None  # time.monotonic() seconds
    cost_ms: float = 0.0  # estimated compute share, for backlog estimates
    priority: int = 0  # lower runs first
    enqueued: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None
    seq: int = field(default_factory=lambda: next(_order))

    def __len__(self) -> int:
        return len(self.inputs)

    def __lt__(self, other: WorkItem) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


class Recent:
    """An exponentially weighted mean of recent samples that relaxes back to `rest` as time
    passes without new ones, so that an estimate learnt in a burst (one huge batch, a slow
    spell) cannot outlive it when few batches run afterwards."""

    def __init__(self, rest: float, tau_s: float = 1.0, weight: float = 0.2) -> None:
        self.rest, self.tau, self.weight = rest, tau_s, weight
        self._value, self._at = rest, time.monotonic()

    def add(self, sample: float) -> None:
        self._value = (1 - self.weight) * self.value() + self.weight * sample
        self._at = time.monotonic()

    def value(self) -> float:
        decay = math.exp(-(time.monotonic() - self._at) / self.tau)
        return self.rest + (self._value - self.rest) * decay


@dataclass
class BatchResult:
    outputs: dict[str, np.ndarray]  # task -> probabilities for this item's rows
    batch_size: int
    queue_ms: float
    compute_ms: float


def run_batch(
    backend: Backend, stack: Callable[[list[np.ndarray]], np.ndarray], width: float, items: list[WorkItem]
) -> list[dict[str, np.ndarray]]:
    """Trunk once for the whole batch, then each (task, route) path on its rows."""
    batch = stack([it.inputs for it in items])
    tokens = backend.run_trunk(width, batch)
    rows: dict[tuple, list[int]] = defaultdict(list)
    offsets = np.cumsum([0] + [len(it) for it in items])
    for i, it in enumerate(items):
        for entry in it.plan.entries:
            rows[(entry.task, entry.route)].extend(range(offsets[i], offsets[i + 1]))
    per_path = {}
    for (task, route), idx in rows.items():
        idx = np.asarray(idx)
        per_path[(task, route)] = (idx, backend.run_path(task, route, tokens[idx], batch[idx]))
    results = []
    for i, it in enumerate(items):
        out = {}
        for entry in it.plan.entries:
            idx, probs = per_path[(entry.task, entry.route)]
            start = int(np.searchsorted(idx, offsets[i]))
            out[entry.task] = probs[start : start + len(it)]
        results.append(out)
    return results


class Batcher:
    def __init__(
        self,
        backend: Backend,
        stack: Callable[[list[np.ndarray]], np.ndarray],
        compute: ComputeScheduler,
        max_batch_size: int,
        batch_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.backend, self.stack, self.compute = backend, stack, compute
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # callback(batch_size, width) for metrics
        self.queues: dict[float, list[WorkItem]] = defaultdict(list)  # heaps by (priority, arrival)
        self.queued = 0  # instances waiting
        self.queued_at: dict[float, int] = defaultdict(int)  # instances waiting, per trunk width
        self.queued_cost_ms = 0.0
        self.busy_until = 0.0  # monotonic estimate of when the running batch ends
        self.in_flight = 0  # requests submitted and not yet answered
        self._wakeup = asyncio.Event()
        # what batches really cost, learnt while serving (calibration ran on an idle machine):
        self.slowdown = Recent(rest=1.0)  # measured / estimated compute of recent batches
        self.instance_ms: dict[float, Recent] = {}  # recent compute per instance, per trunk width
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def backlog_ms(self) -> float:
        """Estimated time until a request arriving now would start computing: the event
        loop's lag (requests queue there before they reach admission when request handling,
        not compute, is the bottleneck), the running batch's rest, and the queued compute."""
        running = max(0.0, self.busy_until - time.monotonic()) * 1000
        return self.compute.loop_lag_ms + running + self.queued_cost_ms * self.slowdown.value()

    @property
    def idle(self) -> bool:
        """Nothing queued here and the shared compute thread has nothing to do."""
        return not self.queued and self.compute.idle

    def batch_ms_at(self, width: float, n: int) -> float:
        """Compute time of the batch that n more instances at `width` would join: what an
        instance at this width recently cost, times the instances that batch would hold."""
        recent = self.instance_ms.get(width)
        if recent is None:
            return 0.0
        return recent.value() * min(self.max_batch_size, self.queued_at[width] + n)

    async def submit(self, item: WorkItem) -> BatchResult:
        n = len(item)
        if self.queued + n > self.max_queue:
            raise QueueFull(
                f"queue is full ({self.queued} of {self.max_queue} instances waiting)", retry_after=1
            )
        item.future = asyncio.get_running_loop().create_future()
        heapq.heappush(self.queues[item.plan.width], item)
        self.queued += n
        self.queued_at[item.plan.width] += n
        self.queued_cost_ms += item.cost_ms
        self.in_flight += 1
        self._wakeup.set()
        try:
            return await item.future
        finally:
            self.in_flight -= 1

    def _next_width(self) -> float | None:
        heads = [(q[0], w) for w, q in self.queues.items() if q]
        return min(heads)[1] if heads else None

    def _take(self, width: float) -> list[WorkItem]:
        queue, items, size = self.queues[width], [], 0
        while queue and (not items or size + len(queue[0]) <= self.max_batch_size):
            item = heapq.heappop(queue)
            self.queued -= len(item)
            self.queued_at[width] -= len(item)
            self.queued_cost_ms -= item.cost_ms
            if item.future.done():  # cancelled by a disconnected client
                continue
            if item.deadline is not None and time.monotonic() > item.deadline:
                item.future.set_exception(
                    DeadlineExceeded(
                        "timed out waiting in the queue; retry later or raise timeout_ms",
                        "timeout_ms",
                        retry_after=1,
                    )
                )
                continue
            items.append(item)
            size += len(item)
        return items

    async def _loop(self) -> None:
        while True:
            width = self._next_width()
            if width is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # let a batch fill for up to batch_wait after its first request arrived
            queue = self.queues[width]
            wait = queue[0].enqueued + self.batch_wait - time.monotonic()
            if wait > 0 and sum(len(i) for i in queue) < self.max_batch_size:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
            items = self._take(width)
            if items:
                await self._run(width, items)

    async def _run(self, width: float, items: list[WorkItem]) -> None:
        size = sum(len(i) for i in items)
        estimate = sum(i.cost_ms for i in items)
        self.busy_until = time.monotonic() + estimate * self.slowdown.value() / 1000
        started = time.monotonic()
        try:
            outputs = await self.compute.run(run_batch, self.backend, self.stack, width, items)
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the loop
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self.busy_until = 0.0
        compute_ms = (time.monotonic() - started) * 1000
        if estimate > 0:
            self.slowdown.add(compute_ms / estimate)
        self.instance_ms.setdefault(width, Recent(rest=0.0)).add(compute_ms / size)
        if self.on_batch:
            self.on_batch(size, width)
        for it, out in zip(items, outputs):
            if not it.future.done():
                queue_ms = (started - it.enqueued) * 1000
                it.future.set_result(BatchResult(out, size, queue_ms, compute_ms))
