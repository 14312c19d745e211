"""The engine behind both APIs: model, route tables, backend, batcher and calibration.

The request path reads: decode (api_*) -> resolve route (`admit`) -> enqueue (`infer`)
-> run (batcher) -> encode (api_*).
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from dataclasses import dataclass

import numpy as np

from models import checkpoint
from models.config import ModelConfig
from models.model import TaskRoutedModel
from routing import Budget, BudgetError, Plan, RouteTables, UnsatisfiableBudget
from server.backends import create_backend
from server.batcher import Batcher, BatchResult, WorkItem
from server.errors import APIError
from server.settings import Settings

log = logging.getLogger("trunkline")


@dataclass
class Admission:
    plan: Plan
    degraded: bool
    budget: Budget
    deadline: float | None


@dataclass
class Prediction:
    admission: Admission
    result: BatchResult


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        model, tables = checkpoint.load(settings.model)
        self.model: TaskRoutedModel = model
        self.cfg: ModelConfig = model.cfg
        self.tables = RouteTables(self.cfg, tables)
        routes = {t: [e.route for e in rows] for t, rows in self.tables.tables.items()}
        self.backend = create_backend(settings.backend, model, routes, settings)
        self.default_budget = Budget.parse(settings.default_budget)
        self.experts = {
            (t, k): model.experts(t, k) for t in self.cfg.task_names for k in self.cfg.routes.experts
        }
        self.batcher: Batcher | None = None
        self.ready = False

    @property
    def name(self) -> str:
        return self.cfg.name

    # -- start-up ----------------------------------------------------------------------
    def calibrate(self) -> None:
        """Warm and time every trunk width and task path at every batch bucket."""
        spec, rounds = self.cfg.input, self.settings.calibration_rounds
        started = time.perf_counter()
        rng = np.random.default_rng(0)
        for bucket in self.settings.batch_buckets:
            images = rng.random((bucket, spec.channels, spec.height, spec.width), np.float32)
            for width in self.tables.widths:
                tokens = self.backend.run_trunk(width, images)
                ms = _time_ms(self.backend.run_trunk, (width, images), rounds)
                self.tables.trunk_latency_ms.setdefault(width, {})[bucket] = ms
                for e in self.tables.entries(width=width):
                    args = (e.task, e.route, tokens, images)
                    e.latency_ms[bucket] = _time_ms(self.backend.run_path, args, rounds)
        elapsed = time.perf_counter() - started
        log.info("calibrated %d batch buckets in %.1f s", len(self.settings.batch_buckets), elapsed)

    # -- requests ----------------------------------------------------------------------
    def check_tasks(self, tasks: list[str], field: str) -> None:
        if not tasks:
            raise APIError(field, f"{field} must name at least one task")
        known = self.cfg.task_names
        for t in tasks:
            if t not in known:
                raise APIError(
                    field, f"{field}: unknown task {t!r}; this model has {known}", 422, "unknown_task"
                )
        if len(set(tasks)) != len(tasks):
            raise APIError(field, f"{field} names a task twice: {tasks}")

    def admit(
        self,
        tasks: list[str],
        n: int,
        budget=None,
        min_budget=None,
        timeout_ms=None,
        latency_ms=None,
        task_weights=None,
    ) -> Admission:
        """Resolve the plan, stepping down the frontier when the backlog says the
        deadline would be missed (never below min_budget)."""
        try:
            b = Budget.parse(budget) if budget is not None else self.default_budget
        except BudgetError as e:
            raise APIError("budget", str(e)) from None
        try:
            floor = Budget.parse(min_budget) if min_budget is not None else b
        except BudgetError as e:
            raise APIError("min_budget", str(e).replace("budget", "min_budget", 1)) from None
        if not b.at_least(floor):
            raise APIError("min_budget", f"min_budget {floor.label} is larger than budget {b.label}")
        if task_weights:
            unknown = sorted(set(task_weights) - set(tasks))
            if unknown:
                raise APIError("task_weights", f"task_weights names tasks not requested: {unknown}")
            if any(not math.isfinite(w) or w <= 0 for w in task_weights.values()):
                raise APIError("task_weights", "task_weights must be positive numbers")
        try:
            if latency_ms is not None:
                top = self.tables.resolve_latency(tasks, latency_ms, b, task_weights)
            else:
                top = self.tables.resolve(tasks, b, task_weights)
            candidates = [top]
            if timeout_ms is not None and min_budget is not None:
                candidates = [top] + [
                    p for p in self.tables.candidates(tasks, b, floor, task_weights) if p.flops < top.flops
                ]
        except UnsatisfiableBudget as e:
            field = "latency_ms" if latency_ms is not None else "budget"
            raise APIError(field, str(e), 422, "budget_too_small") from None
        if timeout_ms is None:
            return Admission(top, False, b, None)
        backlog = self.batcher.backlog_ms() if self.batcher else 0.0

        def finish_ms(plan: Plan) -> float:
            own = self.tables.latency_ms(plan, n) or 0.0
            if self.batcher:
                own = max(own, self.batcher.batch_ms_at(plan.width))
            return backlog + own

        # Step down while the estimated finish uses more than `degrade_headroom` of the
        # timeout (estimates err by tens of percent under load, and a queue kept short stays
        # short); the cheapest route may use the whole timeout; past that, shed with 503.
        target = timeout_ms * self.settings.degrade_headroom
        plan = next((p for p in candidates if finish_ms(p) <= target), candidates[-1])
        if finish_ms(plan) <= timeout_ms:
            deadline = time.monotonic() + timeout_ms / 1000
            return Admission(plan, plan is not top, b, deadline)
        retry = str(max(1, math.ceil(backlog / 1000)))
        raise APIError(
            "timeout_ms",
            f"cannot answer within timeout_ms={timeout_ms:g} even at min_budget "
            f"(estimated backlog {backlog:.0f} ms)",
            503,
            "overloaded",
            {"Retry-After": retry},
        )

    def cost_ms(self, plan: Plan, n: int) -> float:
        """Estimated compute share of n instances when batched at the largest bucket."""
        bucket = max(self.settings.batch_buckets)
        per_batch = self.tables.latency_ms(plan, bucket)
        return (per_batch or 0.0) * n / bucket

    async def infer(self, images: np.ndarray, admission: Admission) -> Prediction:
        item = WorkItem(images, admission.plan, admission.deadline, self.cost_ms(admission.plan, len(images)))
        result = await self.batcher.submit(item)
        return Prediction(admission, result)

    def receipt(self, p: Prediction) -> dict:
        plan = p.admission.plan
        return {
            "tasks": {
                e.task: {
                    "route": e.id,
                    "experts": self.experts[(e.task, e.route.experts)],
                    "experts_k": e.route.experts,
                    "decoder_width": e.route.decoder_width,
                    "score": e.score,
                }
                for e in plan.entries
            },
            "trunk_width": plan.width,
            "flops": plan.flops,
            "flops_fraction": round(plan.flops_fraction, 4),
            "budget_requested": p.admission.budget.label,
            "degraded": p.admission.degraded,
            "backend": self.backend.name,
            "batch_size": p.result.batch_size,
            "queue_ms": round(p.result.queue_ms, 3),
            "compute_ms": round(p.result.compute_ms, 3),
        }


def _time_ms(fn, args: tuple, rounds: int) -> float:
    fn(*args)  # warm
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(*args)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)
