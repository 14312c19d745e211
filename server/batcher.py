"""Dynamic batching keyed by trunk, one batcher per hosted model.

Requests whose plans share a trunk are stacked into one batch: the trunk runs once,
then the batch is split by (task, route), each path runs on its rows, and the rows are put
back in request order. Batches run on the shared compute thread, off the event loop; while
one runs, the next fills. Within a trunk the queue is ordered by priority (a lower number
first, as Triton's priority levels), then by arrival; the next batch comes from the trunk
whose head request ranks first.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


Decode = Callable[[], np.ndarray]
Encode = Callable[[dict[str, np.ndarray]], Any]
# trunk outputs kept for some of an item's rows: groups of (row indices, tokens, model batch),
# one per input batch the trunk ran on (text pads each group to its own length)
State = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def select_state(state: State, position: np.ndarray) -> State:
    """The rows of `state` that `position` maps (row -> its row in a new item, or -1), as rows
    of that item."""
    out = []
    for rows, tokens, batch in state:
        mine = np.flatnonzero(position[rows] >= 0)
        if len(mine):
            out.append((position[rows[mine]], tokens[mine], batch[mine]))
    return out


@dataclass(eq=False)  # compared by (priority, arrival) only, never by its arrays
class WorkItem:
    """One request's instances in the queue.

    `inputs` are the decoded instances, or (the server's case) how to decode them: decoding
    runs in the batch, on the compute thread, and so does `encode` of the outputs, so that
    the event loop only parses, admits and answers. `n` is the number of instances."""

    inputs: np.ndarray | Decode
    plan: Plan
    deadline: float | None = None  # time.monotonic() seconds
    priority: int = 0  # lower runs first
    n: int = -1  # instances; taken from `inputs` when they come decoded
    encode: Encode | None = None
    describe: Callable[[Any], dict | None] | None = None  # receipt fields from the decoded inputs
    keep_inputs: bool = False  # hand the decoded inputs back (budget "auto" escalates them)
    keep_state: bool = False  # hand the trunk's outputs back (a later rung on this trunk reuses them)
    state: State | None = None  # the trunk's outputs for every row: run only the paths on them
    enqueued: float = field(default_factory=time.monotonic)
    future: asyncio.Future | None = None
    queued: bool = False  # waiting in a batcher's queue
    seq: int = field(default_factory=lambda: next(_order))

    def __post_init__(self) -> None:
        if self.n < 0:
            self.n = len(self.inputs)

    def __len__(self) -> int:
        return self.n

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
    compute_ms: float  # the batch's model compute (trunk and paths)
    decode_ms: float = 0.0  # the batch's decoding and encoding, also on the compute thread
    encode_ms: float = 0.0
    encoded: Any = None  # what the item's `encode` made of its outputs
    info: dict | None = None  # what the item's `describe` said of its decoded inputs
    decoded: Any = None  # the decoded inputs, where the item asked to keep them
    state: State | None = None  # the trunk's outputs, where the item asked to keep them


@dataclass
class BatchRun:
    """What running a batch gave: per item its outputs or the error that failed it alone,
    and milliseconds of each step (timed on the compute thread, without the event loop's
    lag in picking the result up)."""

    outputs: list[dict[str, np.ndarray] | BaseException]
    encoded: list[Any]
    info: list[dict | None]
    decode_ms: float
    compute_ms: float
    encode_ms: float
    decoded: list[Any] = field(default_factory=list)
    states: list[State | None] = field(default_factory=list)


def _decode(item: WorkItem) -> np.ndarray:
    array = item.inputs() if callable(item.inputs) else item.inputs
    if len(array) != item.n:
        raise ValueError(f"decoded {len(array)} instances; the request has {item.n}")
    return array


Batches = Callable[[list], list[tuple[np.ndarray, np.ndarray]]]


def run_batch(backend: Backend, batches: Batches, trunk: str, items: list[WorkItem]) -> BatchRun:
    """Decode each item, run the trunk once for the whole batch, then each (task, route) path
    on its rows, then encode each item's outputs. An item that fails to decode or encode
    fails alone; the others are answered. `batches` (the adapter's) makes the trunk's input
    batches of the decoded instances: one, or several groups of similar length for ragged
    inputs such as text."""
    t0 = time.perf_counter()
    outputs: list = [None] * len(items)
    info: list = [None] * len(items)
    kept: list = [None] * len(items)
    arrays, good = [], []
    for i, it in enumerate(items):
        try:
            array = _decode(it)
            info[i] = it.describe(array) if it.describe is not None else None
            kept[i] = array if it.keep_inputs else None
            arrays.append(array)
            good.append(i)
        except Exception as exc:  # noqa: BLE001 - a bad input fails its own request only
            outputs[i] = exc
    t1 = time.perf_counter()
    states: list = [None] * len(items)
    for i, out in zip(good, _isolated(backend, batches, trunk, [items[i] for i in good], arrays)):
        if isinstance(out, BaseException):
            outputs[i] = out
        else:
            outputs[i], states[i] = out
    t2 = time.perf_counter()
    encoded: list = [None] * len(items)
    for i in good:
        if items[i].encode is not None:
            try:
                encoded[i] = items[i].encode(outputs[i])
            except Exception as exc:  # noqa: BLE001
                outputs[i] = exc
    t3 = time.perf_counter()
    ms = (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000
    return BatchRun(outputs, encoded, info, *ms, kept, states)


def _isolated(backend: Backend, batches: Batches, trunk: str, items: list[WorkItem], arrays: list) -> list:
    """`_forward`, and when the batch fails, each item again on its own: the item that fails
    the backend fails alone (its error in its place), the others are answered."""
    if not items:
        return []
    try:
        return _forward(backend, batches, trunk, items, arrays)
    except Exception as exc:  # noqa: BLE001
        if len(items) == 1:
            return [exc]
    log.warning("a batch of %d requests failed in the backend; running them one by one", len(items))
    return [_isolated(backend, batches, trunk, [it], [a])[0] for it, a in zip(items, arrays)]


def _forward(
    backend: Backend, batches: Batches, trunk: str, items: list[WorkItem], arrays: list
) -> list[tuple[dict[str, np.ndarray], State | None]]:
    """The trunk once per input batch of the items that bring no state, then each
    (task, route) path on the rows that want it, on those tokens and on the tokens the other
    items brought (stacked together where their shapes match); outputs go back to request
    order, with the trunk's outputs for the items that asked to keep them."""
    offsets = np.cumsum([0] + [len(a) for a in arrays])
    total = int(offsets[-1])
    wants: dict[tuple, np.ndarray] = {}  # (task, route) -> which rows run it
    for i, it in enumerate(items):
        for e in it.plan.entries:
            wants.setdefault((e.task, e.route), np.zeros(total, bool))[offsets[i] : offsets[i + 1]] = True
    groups: dict[tuple, list] = {}  # token and batch shapes -> [(rows, tokens, batch)]

    def add(rows: np.ndarray, tokens: np.ndarray, batch: np.ndarray) -> None:
        groups.setdefault((tokens.shape[1:], batch.shape[1:]), []).append((rows, tokens, batch))

    fresh = [i for i, it in enumerate(items) if it.state is None]
    if fresh:
        index = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in fresh])
        for rows, batch in batches([arrays[i] for i in fresh]):
            add(index[rows], backend.run_trunk(trunk, batch), batch)
    for i, it in enumerate(items):
        for rows, tokens, batch in it.state or ():
            add(offsets[i] + rows, tokens, batch)
    stacked = [
        parts[0] if len(parts) == 1 else tuple(np.concatenate(p) for p in zip(*parts))
        for parts in groups.values()
    ]
    results: dict[tuple, np.ndarray] = {}
    for rows, tokens, batch in stacked:
        for (task, route), wanted in wants.items():
            local = np.flatnonzero(wanted[rows])
            if not len(local):
                continue
            if len(local) == len(rows):
                probs = backend.run_path(task, route, tokens, batch)
            else:
                probs = backend.run_path(task, route, tokens[local], batch[local])
            out = results.get((task, route))
            if out is None:
                out = results[(task, route)] = np.empty((total, *probs.shape[1:]), probs.dtype)
            out[rows[local]] = probs
    answers = []
    for i, it in enumerate(items):
        state = None
        if it.keep_state:
            position = np.full(total, -1)
            position[offsets[i] : offsets[i + 1]] = np.arange(offsets[i + 1] - offsets[i])
            state = select_state(stacked, position)
        outputs = {e.task: results[(e.task, e.route)][offsets[i] : offsets[i + 1]] for e in it.plan.entries}
        answers.append((outputs, state))
    return answers


class Batcher:
    def __init__(
        self,
        backend: Backend,
        batches: Batches,
        compute: ComputeScheduler,
        max_batch_size: int,
        batch_wait_ms: float,
        max_queue: int,
        on_batch: Callable[[int, str], None] | None = None,
        batch_estimate: Callable[[str, int, dict], float] | None = None,
        inline_ms: float = 0.0,
    ) -> None:
        self.backend, self.batches, self.compute = backend, batches, compute
        # a batch estimated to take at most this long runs on the event loop's own thread when
        # the compute thread is idle: no hand-off there and back (~0.35 ms at batch 1 here)
        self.inline_ms = inline_ms
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch  # callback(batch_size, trunk) for metrics
        self.queues: dict[str, list[WorkItem]] = defaultdict(list)  # heaps by (priority, arrival)
        self.queued = 0  # instances waiting
        self.queued_at: dict[str, int] = defaultdict(int)  # instances waiting, per trunk
        self.queued_rows: dict[str, Counter] = defaultdict(Counter)  # per trunk: route -> rows
        self.busy_until = 0.0  # monotonic estimate of when the running batch ends
        self.in_flight = 0  # requests submitted and not yet answered
        self._wakeup = asyncio.Event()
        # calibrated compute of a batch (trunk, instances, rows per route) -> ms, and how much slower
        # batches really ran while serving (calibration ran on an idle machine), per trunk
        self.batch_estimate = batch_estimate or (lambda trunk, size, rows: 0.0)
        self.slowdown: dict[str, Recent] = {}
        # decoding and encoding per instance (they run in the batch, on the compute thread)
        self.per_instance = Recent(rest=0.0, tau_s=10.0)
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())
        self._task.add_done_callback(_report_crash)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def ahead_ms(self, trunk: str) -> float:
        """Estimated time before the batch that a request at `trunk` joins starts: the event
        loop's lag (requests queue there before they reach admission when request handling,
        not compute, is the bottleneck), the running batch's rest, the batches queued at other
        trunks, and the full batches queued ahead of it at its own trunk. The instances it
        will share its batch with are not counted here: `batch_ms_at` counts them."""
        running = max(0.0, self.busy_until - time.monotonic()) * 1000
        other = sum(
            self.batch_ms(w, self.queued_at[w], self.queued_rows[w]) for w in self.queues if w != trunk
        )
        queued = self.queued_at[trunk]
        full = queued // self.max_batch_size * self.max_batch_size
        own = self.batch_ms(trunk, queued, self.queued_rows[trunk]) * full / queued if full else 0.0
        return self.compute.loop_lag_ms + running + other + own

    def batch_ms(self, trunk: str, size: int, rows: dict) -> float:
        """A batch's time on the compute thread: its calibrated compute times how much slower
        than calibrated recent batches at this trunk ran, plus decoding and encoding."""
        recent = self.slowdown.get(trunk)
        compute = self.batch_estimate(trunk, size, rows) * (recent.value() if recent else 1.0)
        return compute + size * self.per_instance.value()

    def batch_ms_at(self, trunk: str, plan: Plan, n: int) -> float:
        """Compute of the batch that n more instances of `plan` would join: with the
        instances queued at its trunk that do not fill a batch ahead of it."""
        queued = self.queued_at[trunk]
        rest = queued % self.max_batch_size
        rows = Counter({e: n for e in plan.entries})
        if rest:
            for e, r in self.queued_rows[trunk].items():
                rows[e] += round(r * rest / queued)
        return self.batch_ms(trunk, min(self.max_batch_size, rest + n), rows)

    @property
    def idle(self) -> bool:
        """Nothing queued here and the shared compute thread has nothing to do."""
        return not self.queued and self.compute.idle

    def has_room(self, trunk: str, n: int) -> bool:
        """Whether n more instances fit the queue of `trunk` (`max_queue` per trunk)."""
        return self.queued_at[trunk] + n <= self.max_queue

    async def submit(self, item: WorkItem) -> BatchResult:
        """Queue `item` and await its batch. A request whose deadline passes while it waits is
        answered 503 then and never executed; one whose client goes away (its task cancelled)
        leaves the queue at once."""
        n, trunk = len(item), item.plan.trunk
        if not self.has_room(trunk, n):
            raise QueueFull(
                f"queue is full ({self.queued_at[trunk]} of {self.max_queue} instances waiting at "
                f"trunk {trunk})",
                retry_after=1,
            )
        loop = asyncio.get_running_loop()
        item.future = loop.create_future()
        heapq.heappush(self.queues[trunk], item)
        item.queued = True
        self.queued += n
        self.queued_at[trunk] += n
        for e in item.plan.entries:
            self.queued_rows[trunk][e] += n
        self.in_flight += 1
        self._wakeup.set()
        timer = None
        if item.deadline is not None:
            timer = loop.call_later(max(0.0, item.deadline - time.monotonic()), self._expire, item)
        try:
            return await item.future
        finally:
            self.in_flight -= 1
            if timer is not None:
                timer.cancel()
            if item.queued:  # cancelled while waiting: its client went away
                self._remove(item)

    def _expire(self, item: WorkItem) -> None:
        """The deadline of a queued request passed: 503 now; it never runs (a request already
        in a running batch gets its answer)."""
        if item.queued and not item.future.done():
            self._remove(item)
            waited = (time.monotonic() - item.enqueued) * 1000
            item.future.set_exception(
                DeadlineExceeded(
                    f"timed out after {waited:.0f} ms in the queue; retry later or raise timeout_ms",
                    "timeout_ms",
                    retry_after=1,
                )
            )

    def _remove(self, item: WorkItem) -> None:
        queue = self.queues[item.plan.trunk]
        queue.remove(item)
        heapq.heapify(queue)
        self._dequeued(item)

    def _next_trunk(self) -> str | None:
        heads = [(q[0], w) for w, q in self.queues.items() if q]
        return min(heads)[1] if heads else None

    def _pop(self, trunk: str) -> WorkItem:
        item = heapq.heappop(self.queues[trunk])
        self._dequeued(item)
        return item

    def _dequeued(self, item: WorkItem) -> None:
        trunk = item.plan.trunk
        item.queued = False
        self.queued -= len(item)
        self.queued_at[trunk] -= len(item)
        for e in item.plan.entries:
            self.queued_rows[trunk][e] -= len(item)

    def _take(self, trunk: str) -> list[WorkItem]:
        """The next batch at `trunk`, in priority order, no larger than lets every request in
        it with a deadline be answered in time (by the batch's estimate); the rest waits for
        the next batch. A request that would be late even alone is answered 503 now and never
        executed: a late answer helps nobody and costs the others compute."""
        queue, items, size, rows = self.queues[trunk], [], 0, Counter()
        earliest = math.inf  # the earliest deadline in the batch
        lag = self.compute.loop_lag_ms
        while queue and (not items or size + len(queue[0]) <= self.max_batch_size):
            item = queue[0]
            if item.future.done():  # cancelled by a disconnected client
                self._pop(trunk)
                continue
            deadline = min(earliest, item.deadline if item.deadline is not None else math.inf)
            if deadline < math.inf:
                with_it = rows + Counter({e: len(item) for e in item.plan.entries})
                done_by = time.monotonic() + (self.batch_ms(trunk, size + len(item), with_it) + lag) / 1000
                if done_by > deadline:
                    if items:
                        break  # it waits for the next batch, where it may run alone
                    self._pop(trunk).future.set_exception(
                        DeadlineExceeded(
                            "would not be answered within the timeout; retry later or raise timeout_ms",
                            "timeout_ms",
                            retry_after=1,
                        )
                    )
                    continue
            self._pop(trunk)
            items.append(item)
            size += len(item)
            for e in item.plan.entries:
                rows[e] += len(item)
            earliest = deadline
        return items

    async def _loop(self) -> None:
        while True:
            trunk = self._next_trunk()
            if trunk is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # let a batch fill for up to batch_wait after its first request arrived
            queue = self.queues[trunk]
            wait = queue[0].enqueued + self.batch_wait - time.monotonic()
            if wait > 0 and sum(len(i) for i in queue) < self.max_batch_size:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=wait)
                except TimeoutError:
                    pass
                continue
            items = self._take(trunk)
            if items:
                await self._run(trunk, items)

    async def _run(self, trunk: str, items: list[WorkItem]) -> None:
        size = sum(len(i) for i in items)
        rows = Counter()
        for it in items:
            for e in it.plan.entries:
                rows[e] += len(it)
        estimate = self.batch_ms(trunk, size, rows)
        self.busy_until = time.monotonic() + estimate / 1000
        started = time.monotonic()
        try:
            if 0 < self.inline_ms and estimate <= self.inline_ms and self.compute.idle:
                run: BatchRun = run_batch(self.backend, self.batches, trunk, items)
            else:
                run = await self.compute.run(run_batch, self.backend, self.batches, trunk, items)
        except Exception as exc:  # noqa: BLE001 - a failed batch fails its requests, not the loop
            for it in items:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self.busy_until = 0.0
        calibrated = self.batch_estimate(trunk, size, rows)
        if calibrated > 0:
            self.slowdown.setdefault(trunk, Recent(rest=1.0)).add(run.compute_ms / calibrated)
        self.per_instance.add((run.decode_ms + run.encode_ms) / size)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "batch %s n%d: decode %.1f compute %.1f (calibrated %.1f) encode %.1f wall %.1f",
                trunk,
                size,
                run.decode_ms,
                run.compute_ms,
                calibrated,
                run.encode_ms,
                (time.monotonic() - started) * 1000,
            )
        if self.on_batch:
            self.on_batch(size, trunk)
        for it, out, encoded, info, kept, state in zip(
            items, run.outputs, run.encoded, run.info, run.decoded, run.states
        ):
            if it.future.done():
                continue
            if isinstance(out, BaseException):
                it.future.set_exception(out)
                continue
            queue_ms = (started - it.enqueued) * 1000
            ms = run.compute_ms, run.decode_ms, run.encode_ms
            it.future.set_result(BatchResult(out, size, queue_ms, *ms, encoded, info, kept, state))
