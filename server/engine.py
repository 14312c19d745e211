"""The engine of one hosted model: its adapter, route tables, backend, batcher, calibration
and admission. Family-agnostic: everything model-specific is asked of the adapter.

The request path reads: decode (adapter, called by the routers) -> admit (resolve the
route, step down under load) -> infer (enqueue, batch, run) -> encode (task kinds).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from dataclasses import dataclass
from functools import partial

import numpy as np

from models.adapter import ModelAdapter
from models.kinds import kind
from routing import Budget, BudgetError, Plan, RouteEntry, RouteTables, UnsatisfiableBudget
from routing.anytime import DEFAULT_CONFIDENCE, Ladder, choose_ladder, unsure
from server import calibration, hooks
from server.backends import create_backend
from server.batcher import Batcher, BatchResult, Decode, Encode, State, WorkItem, select_state
from server.compute import ComputeScheduler
from server.errors import (
    BudgetTooSmall,
    DeadlineExceeded,
    InvalidInput,
    InvalidValue,
    Overloaded,
    QueueFull,
    UnknownTask,
)
from server.metrics import Metrics
from server.schemas import Receipt, RowReceipt, RowTaskReceipt, TaskReceipt
from server.settings import Settings

log = logging.getLogger("trunkline")

AUTO = "auto"  # the budget that asks for a confidence instead of a tier


@dataclass
class RequestOptions:
    """What a request asks besides its inputs, as both APIs parse it."""

    tasks: list[str]
    field: str = "task"  # where the request named its tasks, for errors
    budget: float | str | None = None
    min_budget: float | str | None = None
    timeout_ms: float | None = None
    latency_ms: float | None = None
    task_weights: dict[str, float] | None = None
    priority: int = 0  # 0: the default level
    confidence: object = None  # budget "auto": the confidence an answer must reach (0, 1)
    max_budget: float | str | None = None  # budget "auto": the dearest rung (default max)


@dataclass
class Admission:
    plan: Plan
    degraded: bool
    budget: Budget
    deadline: float | None
    priority: int


@dataclass
class AutoAdmission(Admission):
    """Budget "auto": the ladder the request climbs (`plan` is its first rung)."""

    ladder: Ladder | None = None
    confidence: float = DEFAULT_CONFIDENCE


@dataclass
class RowTrace:
    """What one instance ran for budget "auto": per task the rungs and their confidences."""

    rungs: dict[str, list[RouteEntry]]
    confidences: dict[str, list[float]]
    degraded: dict[str, bool]
    flops: float = 0.0
    full_flops: float = 0.0
    reused_flops: float = 0.0  # trunks a later rung reused instead of running again


@dataclass
class Prediction:
    admission: Admission
    result: BatchResult
    rows: list[RowTrace] | None = None  # budget "auto"
    confidence: dict[str, np.ndarray] | None = None  # budget "auto": per task [N]


class Engine:
    def __init__(
        self, adapter: ModelAdapter, settings: Settings, compute: ComputeScheduler, metrics: Metrics
    ) -> None:
        self.adapter, self.settings, self.compute, self.metrics = adapter, settings, compute, metrics
        self.tables = RouteTables(adapter, adapter.route_rows)
        self.backend = hooks.wrap(create_backend(settings.backend, adapter, settings), settings)
        self.default_budget = Budget.from_text(settings.default_budget)
        self.batcher = Batcher(
            self.backend,
            adapter.batches,
            compute,
            settings.max_batch_size,
            settings.batch_wait_ms,
            settings.max_queue,
            on_batch=lambda size, trunk: metrics.batch_size.labels(self.name, trunk).observe(size),
            batch_estimate=self.tables.batch_latency_ms,
            # test hooks hold batches at a gate: never on the event loop
            inline_ms=settings.inline_batch_ms if settings.test_gate is None else 0.0,
        )
        self.ready = False
        self._pressure_until = 0.0  # see _fit_deadline
        self.users = 0  # requests holding this engine (see ModelRepository.lease)
        self._ladders: dict[tuple, Ladder] = {}
        self._experts = {
            (t, e.route.experts): adapter.experts(t, e.route.experts)
            for t in self.tasks
            for e in self.tables.tables[t]
        }

    @property
    def name(self) -> str:
        return self.adapter.name

    @property
    def version(self) -> str:
        return self.adapter.version

    @property
    def tasks(self) -> list[str]:
        return list(self.adapter.tasks)

    # -- start-up: build graphs, calibrate, ready -------------------------------------
    async def start(self, background: bool) -> None:
        """Build every graph and calibrate it on the compute thread, then turn ready.

        `background` (a model loaded while others serve) runs each step as background work
        there, so the serving models keep most of the compute. A start on the same machine
        with the same checkpoint reads the timings from the cache and only warms each graph."""
        started = time.perf_counter()
        run = lambda fn, *args: self.compute.run(fn, *args, background=background)  # noqa: E731
        trunks = self.tables.trunks
        for route in trunks.values():
            await run(self.backend.add_trunk, route)
        for e in self.tables.entries():
            await run(self.backend.add_path, e.task, e.route)
        graphs = len(trunks) + len(self.tables.entries())
        log.info("%s: built %d graphs in %.1f s", self.name, graphs, time.perf_counter() - started)
        buckets = sorted(self.settings.batch_buckets)
        cache = self._cache_file()
        cached = await asyncio.to_thread(calibration.restore, cache, self.tables, buckets)
        for bucket in buckets[:1] if cached else buckets:
            batch = self.adapter.example_batch(bucket)
            for trunk in trunks:
                if cached:
                    await calibration.warm(run, self.backend, self.tables, batch, trunk)
                else:
                    first = bucket == buckets[0]  # later buckets run graphs that are warm already
                    args = (self.backend, self.tables, batch, trunk, self._rounds, first)
                    await calibration.time_trunk(run, *args)
            if not cached:
                log.info("%s: calibrated batch %d (%.1f s)", self.name, bucket, time.perf_counter() - started)
        if not cached:
            await self._save(cache)
        batcher = weakref.ref(self.batcher)  # the gauge must not keep an unloaded model alive
        self.metrics.queue_depth.labels(self.name).set_function(lambda: getattr(batcher(), "queued", 0))
        self.ready = True
        how = "timings from the cache" if cached else "calibrated"
        log.info(
            "%s %s ready on %s in %.1f s (%s)",
            self.name,
            self.version,
            self.backend.name,
            time.perf_counter() - started,
            how,
        )

    @property
    def _rounds(self) -> int:
        return self.settings.calibration_rounds

    def _cache_file(self):
        key = calibration.machine_key(self.backend.name, self.settings.threads)
        return (
            self.settings.cache_dir / "calibration" / f"{self.name}-{self.adapter.fingerprint()}-{key}.json"
        )

    async def _save(self, cache) -> None:
        try:
            await asyncio.to_thread(calibration.save, cache, self.tables)
        except OSError as e:  # a read-only home: serve on, calibrate again next time
            log.warning("%s: could not save the calibration: %s", self.name, e)

    async def stop(self) -> None:
        await self.batcher.stop()
        self.backend.close()

    # -- requests ----------------------------------------------------------------------
    def known_tasks(self, tasks: list[str]) -> list[str]:
        """The model's tasks among `tasks`, once each: what a metric may be labelled with (a
        client's made-up task names would make a new series each, without end)."""
        return [t for t in dict.fromkeys(tasks) if t in self.adapter.tasks]

    def check_tasks(self, tasks: list[str], field: str) -> None:
        if not tasks:
            raise InvalidInput(f"{field} must name at least one task of {self.tasks}", field)
        for t in tasks:
            if t not in self.adapter.tasks:
                raise UnknownTask(f"unknown task {t!r}; model {self.name!r} has {self.tasks}", field)
        if len(set(tasks)) != len(tasks):
            raise InvalidInput(f"names a task twice: {tasks}", field)

    def priority(self, requested: int, field: str) -> int:
        """Triton's priority levels: 1 runs first; 0 means the default (middle) level."""
        levels = self.settings.priority_levels
        if requested > levels:
            raise InvalidInput(f"must be 0 (default) or a level from 1 (first) to {levels}", field)
        return requested or (levels + 1) // 2

    def admit(
        self, opts: RequestOptions, n: int, priority_field: str = "priority", arrived: float | None = None
    ) -> Admission:
        """Resolve the plan, stepping down the frontier when the backlog says the
        deadline would be missed (never below min_budget). `arrived` (time.monotonic()) is
        when the request reached the server: its timeout counts from there."""
        self.check_tasks(opts.tasks, opts.field)
        if opts.budget == AUTO:
            return self._admit_auto(opts, n, priority_field, arrived)
        for name in ("confidence", "max_budget"):
            if getattr(opts, name) is not None:
                raise InvalidValue(
                    f"applies to budget {AUTO!r} only (this request's budget is {opts.budget!r})", name
                )
        try:
            b = Budget.parse(opts.budget) if opts.budget is not None else self.default_budget
        except BudgetError as e:
            raise InvalidValue(str(e), "budget") from None
        try:
            floor = Budget.parse(opts.min_budget) if opts.min_budget is not None else b
        except BudgetError as e:
            raise InvalidValue(str(e).replace("budget", "min_budget", 1), "min_budget") from None
        if not b.at_least(floor):
            raise InvalidValue(f"min_budget {floor.label} is larger than budget {b.label}", "min_budget")
        weights = opts.task_weights
        if weights:
            unknown = sorted(set(weights) - set(opts.tasks))
            if unknown:
                raise InvalidValue(f"names tasks not requested: {unknown}", "task_weights")
            if any(not math.isfinite(w) or w <= 0 for w in weights.values()):
                raise InvalidValue("must be positive numbers", "task_weights")
        priority = self.priority(opts.priority, priority_field)
        try:
            if opts.latency_ms is not None:
                top = self.tables.resolve_latency(opts.tasks, opts.latency_ms, b, weights)
            else:
                top = self.tables.resolve(opts.tasks, b, weights)
            candidates = [top]
            if opts.timeout_ms is not None and opts.min_budget is not None:
                lower = self.tables.candidates(opts.tasks, b, floor, weights)
                candidates += [p for p in lower if p.flops < top.flops]
        except UnsatisfiableBudget as e:
            raise BudgetTooSmall(str(e), "latency_ms" if opts.latency_ms is not None else "budget") from None
        if opts.timeout_ms is None:
            return Admission(top, False, b, None, priority)
        return self._fit_deadline(candidates, b, n, opts.timeout_ms, priority, arrived)

    # -- budget "auto" -----------------------------------------------------------------
    def _admit_auto(
        self, opts: RequestOptions, n: int, priority_field: str, arrived: float | None
    ) -> AutoAdmission:
        c = opts.confidence if opts.confidence is not None else DEFAULT_CONFIDENCE
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c) or not 0 < c < 1:
            raise InvalidValue(f"must be a number strictly between 0 and 1, got {c!r}", "confidence")
        if opts.latency_ms is not None:
            raise InvalidValue(f"does not combine with budget {AUTO!r}: give timeout_ms", "latency_ms")
        for t in opts.tasks:
            spec = self.adapter.tasks[t]
            why = kind(spec.kind).no_confidence
            if why:
                raise InvalidValue(f"task {t!r}: {why}", "budget")
            if any(e.temperature is None for e in self.tables.tables[t]):
                raise InvalidValue(
                    f"task {t!r} has no calibrated confidence in this checkpoint (`trunkline "
                    "calibrate` fits the tasks with packaged data; one added from a CSV has none "
                    "yet): give a tier or a fraction",
                    "budget",
                )
        budgets = {}
        for name, value, default in (
            ("min_budget", opts.min_budget, "min"),
            ("max_budget", opts.max_budget, "max"),
        ):
            try:
                budgets[name] = Budget.parse(value if value is not None else default)
            except BudgetError as e:
                raise InvalidValue(str(e).replace("budget", name, 1), name) from None
        floor_b, top_b = budgets["min_budget"], budgets["max_budget"]
        if not top_b.at_least(floor_b):
            raise InvalidValue(
                f"max_budget {top_b.label} is smaller than min_budget {floor_b.label}", "max_budget"
            )
        weights = opts.task_weights
        try:
            floor = self.tables.resolve(opts.tasks, floor_b, weights)
            top = self.tables.resolve(opts.tasks, top_b, weights)
        except UnsatisfiableBudget as e:
            raise BudgetTooSmall(str(e).replace("budget", "max_budget", 1), "max_budget") from None
        ladder = self._ladder(floor, top)
        priority = self.priority(opts.priority, priority_field)
        budget = Budget(None, AUTO)
        if opts.timeout_ms is None:
            first = Admission(ladder.rungs[0], False, budget, None, priority)
        else:
            first = self._fit_deadline([ladder.rungs[0]], budget, n, opts.timeout_ms, priority, arrived)
        return AutoAdmission(first.plan, False, budget, first.deadline, priority, ladder, float(c))

    def _ladder(self, floor: Plan, top: Plan) -> Ladder:
        key = (tuple(floor.tasks), tuple(e.id for e in floor.entries), tuple(e.id for e in top.entries))
        ladder = self._ladders.get(key)
        if ladder is None:
            ladder = self._ladders[key] = choose_ladder(self.tables, floor.tasks, floor, top)
        return ladder

    def ladders(self) -> dict[str, list[str]]:
        """Each task's ladder alone, from its cheapest route to `max` (GET /v1/models/{m})."""
        out = {}
        for t, spec in self.adapter.tasks.items():
            if kind(spec.kind).no_confidence or any(e.temperature is None for e in self.tables.tables[t]):
                continue
            floor = self.tables.resolve([t], Budget.parse("min"))
            top = self.tables.resolve([t], Budget.parse("max"))
            out[t] = self._ladder(floor, top).ids
        return out

    def _subplan(self, plan: Plan, tasks: list[str]) -> Plan:
        """The part of a rung's plan for the tasks still unsure (the trunk, once, and theirs)."""
        if len(tasks) == len(plan.entries):
            return plan
        entries = tuple(e for e in plan.entries if e.task in tasks)
        routes = {e.task: e.route for e in entries}
        flops = self.adapter.request_flops(routes)
        return Plan(plan.trunk, entries, flops, self.adapter.flops_fraction(routes), plan.score)

    def _rung_fits(self, plan: Plan, n: int, deadline: float | None) -> bool:
        """Whether a rung's batch is expected to finish before the request's deadline."""
        if deadline is None:
            return True
        own = self.tables.latency_ms(plan, n) or 0.0
        if not self.batcher.idle:
            own = max(own, self.batcher.batch_ms_at(plan.trunk, plan, n)) + self.batcher.ahead_ms(plan.trunk)
        return time.monotonic() + own / 1000 <= deadline

    async def _climb(self, admission: AutoAdmission, inputs, n: int, encode: Encode | None) -> Prediction:
        """Run the ladder: every row on the first rung, then each rung on the rows (and tasks)
        still below the confidence. Rows escalated together, in groups by the tasks they
        still need, enter the batcher at once: they batch with each other and with other
        requests on that trunk, which runs once per batch. A rung on a trunk a row already ran
        (the same trunk key: images at the same width, text at the same depth and width) runs
        only its paths, on the trunk's outputs kept from then."""
        ladder, c = admission.ladder, admission.confidence
        tasks = list(ladder.tasks)
        trunks = [rung.trunk for rung in ladder.rungs]
        first = await self.batcher.submit(
            WorkItem(
                inputs,
                ladder.rungs[0],
                admission.deadline,
                admission.priority,
                n=n,
                keep_inputs=True,
                keep_state=trunks[0] in trunks[1:],
            )
        )
        decoded = first.decoded
        answers = {t: first.outputs[t].copy() for t in tasks}
        confidence = {t: np.empty(n) for t in tasks}
        rows = [
            RowTrace(
                {t: [] for t in tasks}, {t: [] for t in tasks}, dict.fromkeys(tasks, False), full_flops=f
            )
            for f in self.adapter.row_full_flops(decoded, tasks).tolist()
        ]
        pending = {t: np.zeros(n, bool) for t in tasks}
        # per trunk, the trunk's outputs kept for rows of this request: (request rows, tokens, batch)
        kept: dict[str, State] = {}
        if first.state is not None:
            kept[trunks[0]] = first.state
        compute_ms = first.compute_ms

        def record(i: int, where: np.ndarray, group: list[str], outputs: dict, part, reused) -> None:
            rung = ladder.rungs[i]
            routes = {e.task: e.route for e in rung.entries if e.task in group}
            flops = self.adapter.row_flops(part, routes, trunk=not reused)
            saved = self.adapter.row_flops(part, routes) - flops if reused else np.zeros_like(flops)
            for t in group:
                entry = next(e for e in rung.entries if e.task == t)
                conf = kind(self.adapter.tasks[t].kind).confidence(outputs[t], entry.temperature)
                answers[t][where] = outputs[t]
                confidence[t][where] = conf
                pending[t][where] = False if i == ladder.last(t) else unsure(conf, c)
                for j, r in enumerate(where):
                    rows[r].rungs[t].append(entry)
                    rows[r].confidences[t].append(float(conf[j]))
            for j, r in enumerate(where):
                rows[r].flops += float(flops[j])
                rows[r].reused_flops += float(saved[j])

        record(0, np.arange(n), tasks, first.outputs, decoded, False)
        for i, rung in enumerate(ladder.rungs[1:], start=1):
            if not any(pending[t].any() for t in tasks):
                break
            climbing = [t for t in rung.tasks if pending[t].any()]  # a rung holds the tasks that climb there
            if not climbing:
                continue
            unsure_rows = np.flatnonzero(np.any([pending[t] for t in climbing], axis=0))
            if not self._rung_fits(rung, len(unsure_rows), admission.deadline):
                break
            groups: dict[tuple[str, ...], list[int]] = {}
            for r in unsure_rows:
                groups.setdefault(tuple(t for t in climbing if pending[t][r]), []).append(int(r))
            keep = rung.trunk not in kept and rung.trunk in trunks[i + 1 :]
            items = []
            for group, where in groups.items():
                where = np.asarray(where)
                part = self.adapter.take(decoded, where)
                state = _rows_of(kept[rung.trunk], where, n) if rung.trunk in kept else None
                item = WorkItem(
                    part,
                    self._subplan(rung, list(group)),
                    admission.deadline,
                    admission.priority,
                    keep_state=keep,
                    state=state,
                )
                items.append((group, where, part, item))
            results = await asyncio.gather(
                *(self.batcher.submit(item) for *_, item in items), return_exceptions=True
            )
            if any(isinstance(r, DeadlineExceeded) for r in results):
                break  # the deadline passed in the queue: answer what the rows have
            for r in results:
                if isinstance(r, BaseException):
                    raise r
            for (group, where, part, item), result in zip(items, results):
                compute_ms += result.compute_ms
                record(i, where, list(group), result.outputs, part, item.state is not None)
                if result.state is not None:  # rows of the item -> rows of the request
                    kept.setdefault(rung.trunk, []).extend((where[g], t, b) for g, t, b in result.state)
        for t in tasks:
            for r in np.flatnonzero(pending[t]):  # cut short by the deadline
                rows[r].degraded[t] = True
        info = self.adapter.describe(decoded, ladder.rungs[0].routes) or {}
        result = BatchResult(answers, first.batch_size, first.queue_ms, compute_ms, first.decode_ms)
        result.info = {k: v for k, v in info.items() if k in ("tokens", "truncated")}
        result.encoded = encode(answers, confidence) if encode is not None else None
        return Prediction(admission, result, rows, confidence)

    PRESSURE_S = 1.0

    def _fit_deadline(
        self,
        candidates: list[Plan],
        budget: Budget,
        n: int,
        timeout_ms: float,
        priority: int,
        arrived: float | None,
    ) -> Admission:
        # With the compute thread idle and nothing queued, a request waits for nothing: only its
        # own compute counts (a server shedding while idle had stale estimates feeding on
        # themselves). Otherwise: the work ahead, the batch it joins, and the event loop's lag
        # when its answer comes back.
        top = candidates[0]
        candidates = [p for p in candidates if self.batcher.has_room(p.trunk, n)]
        if not candidates:  # every route it may take has a full queue
            raise QueueFull(
                f"queue is full at every route down to min_budget ({self.settings.max_queue} instances "
                "waiting per trunk)",
                retry_after=1,
            )
        idle = self.batcher.idle
        # The time a request has already spent in the server counts against its timeout: since
        # its handler started (measured) and, on a busy server, its wait for the event loop
        # before that (estimated by the loop's lag).
        now = time.monotonic()
        arrived = (arrived if arrived is not None else now) - (
            0.0 if idle else self.compute.loop_lag_ms / 1000
        )
        left_ms = timeout_ms - (now - arrived) * 1000

        def own_ms(plan: Plan) -> float:
            calibrated = self.tables.latency_ms(plan, n) or 0.0
            return calibrated if idle else max(calibrated, self.batcher.batch_ms_at(plan.trunk, plan, n))

        def finish_ms(plan: Plan) -> float:
            return own_ms(plan) + (0.0 if idle else self.batcher.ahead_ms(plan.trunk))

        # Step down while the estimated finish uses more than `degrade_headroom` of the
        # timeout (estimates err by tens of percent under load, and a queue kept short stays
        # short); the cheapest route may use the whole timeout; past that, shed with 503.
        # Under pressure (a request degraded to its floor or shed within the last `PRESSURE_S`),
        # requests that may step down go straight to their cheapest route: a full-cost batch
        # admitted in a lull blocks the cheap ones queued behind it.
        target = timeout_ms * self.settings.degrade_headroom - (timeout_ms - left_ms)
        cheapest = candidates[-1]
        if now < self._pressure_until and not idle:
            plan = cheapest
        else:
            plan = next((p for p in candidates if finish_ms(p) <= target), cheapest)
        if finish_ms(plan) <= left_ms:
            if plan is cheapest and len(candidates) > 1:
                self._pressure_until = now + self.PRESSURE_S
            deadline = arrived + timeout_ms / 1000
            return Admission(plan, plan is not top, budget, deadline, priority)
        self._pressure_until = now + self.PRESSURE_S
        ahead = finish_ms(cheapest) - own_ms(cheapest)
        if log.isEnabledFor(logging.DEBUG):
            b = self.batcher
            log.debug(
                "shed: left %.1f of %.0f ms; lag %.1f; own %.1f; ahead %.1f; running %.1f; "
                "queued %s; slowdown %s; per-instance %.2f",
                left_ms,
                timeout_ms,
                self.compute.loop_lag_ms,
                own_ms(cheapest),
                ahead,
                max(0.0, b.busy_until - now) * 1000,
                dict(b.queued_at),
                {w: round(r.value(), 2) for w, r in b.slowdown.items()},
                b.per_instance.value(),
            )
        raise Overloaded(
            f"cannot answer within timeout_ms={timeout_ms:g} even at min_budget: its route "
            f"{'+'.join(e.id for e in cheapest.entries)} takes about {own_ms(cheapest):.1f} ms for "
            f"{n} instance(s) and about {ahead:.0f} ms of work is ahead of it",
            "timeout_ms",
            retry_after=max(1, math.ceil(ahead / 1000)),
        )

    async def infer(
        self, inputs: np.ndarray | Decode, admission: Admission, n: int = -1, encode: Encode | None = None
    ) -> Prediction:
        """Enqueue, await the batch, and keep the model's metrics. `inputs` may be how to
        decode them (`n` instances) and `encode` what to make of the outputs: both then run
        in the batch, on the compute thread."""
        plan, m, name = admission.plan, self.metrics, self.name
        m.in_flight.labels(name).inc()
        try:
            if isinstance(admission, AutoAdmission):
                prediction = await self._climb(admission, inputs, n, encode)
            else:
                describe = partial(self.adapter.describe, routes=plan.routes)
                item = WorkItem(
                    inputs,
                    plan,
                    admission.deadline,
                    admission.priority,
                    n=n,
                    encode=encode,
                    describe=describe,
                )
                prediction = Prediction(admission, await self.batcher.submit(item))
        finally:
            m.in_flight.labels(name).dec()
        hooks.leak(self.settings)
        result = prediction.result
        m.queue_time.labels(name).observe(result.queue_ms / 1000)
        m.compute_time.labels(name).observe(result.compute_ms / 1000)
        if prediction.rows is not None:
            for t in admission.ladder.tasks:
                for row in prediction.rows:
                    m.answered_by.labels(name, t, str(len(row.rungs[t]) - 1)).inc()
        elif admission.degraded:
            for t in plan.tasks:
                m.degraded.labels(name, t).inc()
        return prediction

    def encode_json(
        self, outputs: dict[str, np.ndarray], options: dict, confidence: dict[str, np.ndarray] | None = None
    ) -> list[dict[str, dict]]:
        """/v1 outputs: per instance, per task, as the task's kind writes them (budget "auto":
        with the calibrated `confidence` of the answer)."""
        specs = [(t, kind(self.adapter.tasks[t].kind), self.adapter.tasks[t].labels) for t in outputs]
        n = len(next(iter(outputs.values())))
        out = [{t: k.to_json(outputs[t][i], labels, options) for t, k, labels in specs} for i in range(n)]
        for t, values in (confidence or {}).items():
            for i in range(n):
                out[i][t]["confidence"] = round(float(values[i]), 6)
        return out

    def encode_tensors(
        self, outputs: dict[str, np.ndarray], confidence: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Open Inference Protocol outputs, by name (budget "auto": `{task}_confidence` too)."""
        tensors = {}
        for t, probs in outputs.items():
            tensors.update(kind(self.adapter.tasks[t].kind).to_tensors(t, probs))
        for t, values in (confidence or {}).items():
            tensors[f"{t}_confidence"] = values.astype(np.float32)
        return tensors

    def tensor_outputs(self) -> list[dict]:
        return [
            spec
            for name, t in self.adapter.tasks.items()
            for spec in kind(t.kind).tensor_specs(name, len(t.labels), self.adapter.output_shape(name))
        ]

    def _task_receipt(self, e: RouteEntry) -> TaskReceipt:
        return TaskReceipt.model_construct(
            route=e.id,
            experts=self._experts[(e.task, e.route.experts)],
            experts_k=e.route.experts,
            decoder_width=e.route.decoder_width,
            score=e.score,
        )

    def receipt(self, p: Prediction) -> Receipt:
        plan, a = p.admission.plan, p.admission
        info = p.result.info or {}
        entries = list(plan.entries)
        flops = info.get("flops", plan.flops)
        fraction = info.get("flops_fraction", round(plan.flops_fraction, 4))
        degraded, extra = a.degraded, {}
        if p.rows is not None:  # budget "auto": per row what it ran; the request sums them
            # per task the dearest route that answered a row of it
            entries = [max((r.rungs[t][-1] for r in p.rows), key=lambda e: e.flops) for t in a.ladder.tasks]
            total, full = sum(r.flops for r in p.rows), sum(r.full_flops for r in p.rows)
            flops, fraction = int(total / len(p.rows)), round(total / full, 4)
            degraded = any(any(r.degraded.values()) for r in p.rows)
            extra = {
                "confidence": a.confidence,
                "flops_total": int(total),
                "rows": [
                    RowReceipt.model_construct(
                        tasks={
                            t: RowTaskReceipt.model_construct(
                                route=r.rungs[t][-1].id,
                                escalations=[e.id for e in r.rungs[t]],
                                confidences=[round(x, 4) for x in r.confidences[t]],
                                degraded=r.degraded[t],
                            )
                            for t in a.ladder.tasks
                        },
                        flops=int(r.flops),
                        flops_fraction=round(r.flops / r.full_flops, 4),
                        reused_flops=int(r.reused_flops),
                    )
                    for r in p.rows
                ],
            }
        top = max(entries, key=lambda e: e.flops)
        return Receipt.model_construct(
            tasks={e.task: self._task_receipt(e) for e in entries},
            trunk_width=top.route.width,
            depth=top.route.depth,
            flops=flops,
            flops_fraction=fraction,
            tokens=info.get("tokens"),
            truncated=info.get("truncated"),
            budget_requested=a.budget.label,
            degraded=degraded,
            backend=self.backend.name,
            model_version=self.version,
            priority=a.priority,
            batch_size=p.result.batch_size,
            queue_ms=round(p.result.queue_ms, 3),
            compute_ms=round(p.result.compute_ms, 3),
            **extra,
        )

    def describe(self) -> dict:
        """/v1/models/{m}: input spec, tasks and their route tables with calibrated latency."""
        tables = self.tables
        return {
            "input": self.adapter.input_metadata(),
            "default_budget": self.default_budget.label,
            "backend": self.backend.name,
            "ladders": self.ladders(),
            "tasks": {
                name: {
                    "kind": t.kind,
                    "labels": t.labels,
                    "routes": [
                        {
                            "id": e.id,
                            "flops": e.flops,
                            "flops_fraction": e.flops_fraction,
                            "score": e.score,
                            "params": e.params,
                            "latency_ms": {
                                str(b): round(tables.route_latency_ms(e, b), 3) for b in sorted(e.latency_ms)
                            },
                        }
                        for e in tables.tables[name]
                    ],
                }
                for name, t in self.adapter.tasks.items()
            },
        }


def _rows_of(state: State, where: np.ndarray, n: int) -> State | None:
    """The kept trunk outputs of request rows `where`, as rows of an item made of them (in
    that order); None unless every one of them was kept (a multi-task ladder may come back
    to a trunk with rows of another task, which did not run it)."""
    position = np.full(n, -1)
    position[where] = np.arange(len(where))
    out = select_state(state, position)
    return out if sum(len(rows) for rows, _, _ in out) == len(where) else None
