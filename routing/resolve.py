"""Route tables and resolution: (tasks, budget) -> the plan that runs.

A plan is one trunk (width, and depth where the family has several) shared by the request's
tasks plus one route per task. Among
plans whose FLOPs fraction fits the budget, the one with the best (weighted) validation
score wins. Ties go to the larger plan: equal validation scores mean no measurable
difference, and the request allowed that much compute (tier `max` is the full route). Under
load, degradation may still step down to a cheaper plan of equal score.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from models.routes import Route
from routing.budget import Budget


class FlopsModel(Protocol):
    """What routing needs of a model: FLOPs per sample of a plan (model adapters are one)."""

    def request_flops(self, routes: dict[str, Route]) -> int:
        """FLOPs per sample of the trunk the routes share, once, and each task's path."""

    def full_flops(self, tasks: list[str]) -> int: ...

    def flops_fraction(self, routes: dict[str, Route]) -> float:
        """The fraction of the same tasks' full route that budgets compare against."""


class UnsatisfiableBudget(ValueError):
    """No route fits: carries the smallest budget the task set accepts."""

    def __init__(self, message: str, smallest: float) -> None:
        super().__init__(message)
        self.smallest = smallest


@dataclass(eq=False)  # one object per table row: hashed and compared by identity
class RouteEntry:
    """One row of a task's route table, plus latencies measured at server start."""

    task: str
    route: Route
    flops: int
    flops_fraction: float
    score: float
    params: int = 0
    temperature: float | None = None  # fitted on validation (models.calibrate); None: not yet
    rung: int | None = None  # its place on the task's fitted anytime ladder (models.calibrate)
    latency_ms: dict[int, float] = field(default_factory=dict)  # batch bucket -> ms (path only)

    @property
    def id(self) -> str:
        return self.route.id


@dataclass(frozen=True)
class Plan:
    """What one request runs: the trunk (`Route.trunk`, the batching key) and each task's route."""

    trunk: str
    entries: tuple[RouteEntry, ...]
    flops: int
    flops_fraction: float
    score: float

    @property
    def width(self) -> float:
        return self.entries[0].route.width

    @property
    def depth(self) -> int | None:
        return self.entries[0].route.depth

    @property
    def routes(self) -> dict[str, Route]:
        return {e.task: e.route for e in self.entries}

    @property
    def tasks(self) -> list[str]:
        return [e.task for e in self.entries]


class RouteTables:
    """Per-task route tables of one model, with budget resolution."""

    def __init__(self, flops: FlopsModel, tables: dict[str, list[dict]]) -> None:
        self.flops = flops
        self.tables: dict[str, list[RouteEntry]] = {}
        for task, rows in tables.items():
            entries = [
                RouteEntry(
                    task,
                    Route.parse(r["id"]),
                    int(r["flops"]),
                    float(r["flops_fraction"]),
                    float(r["score"]),
                    int(r.get("params", 0)),
                    float(r["temperature"]) if r.get("temperature") is not None else None,
                    r.get("rung"),
                )
                for r in rows
            ]
            self.tables[task] = sorted(entries, key=lambda e: e.flops)
        self.trunk_latency_ms: dict[str, dict[int, float]] = {}  # trunk -> bucket -> ms
        self._plans = lru_cache(maxsize=256)(self._enumerate)

    @property
    def trunks(self) -> dict[str, Route]:
        """Every trunk the tables use (`Route.trunk`), with a route that runs it."""
        rows = sorted(
            (e.route for rows in self.tables.values() for e in rows), key=lambda r: (r.depth or 0, r.width)
        )
        return {r.trunk: r for r in rows}

    def entries(self, trunk: str | None = None) -> list[RouteEntry]:
        """Every task's route entries, optionally only those on one trunk."""
        rows = [e for rows in self.tables.values() for e in rows]
        return [e for e in rows if trunk is None or e.route.trunk == trunk]

    def entry(self, task: str, route_id: str) -> RouteEntry:
        for e in self.tables[task]:
            if e.id == route_id:
                return e
        raise KeyError(f"task {task!r} has no route {route_id!r}")

    def _enumerate(self, tasks: tuple[str, ...], weights: tuple[float, ...]) -> list[Plan]:
        """All plans for a task set, sorted best first (score desc, then FLOPs desc)."""
        full = self.flops.full_flops(list(tasks))
        plans = []
        for trunk in self.trunks:
            options = [[e for e in self.tables[t] if e.route.trunk == trunk] for t in tasks]
            for combo in itertools.product(*options):
                routes = {e.task: e.route for e in combo}
                flops = self.flops.request_flops(routes)
                score = sum(w * e.score for w, e in zip(weights, combo)) / sum(weights)
                fraction = (
                    self.flops.flops_fraction(routes)
                    if hasattr(self.flops, "flops_fraction")
                    else flops / full
                )
                plans.append(Plan(trunk, tuple(combo), flops, fraction, score))
        plans.sort(key=lambda p: (-p.score, -p.flops))
        return plans

    def plans(self, tasks: list[str], weights: dict[str, float] | None = None) -> list[Plan]:
        w = tuple(float((weights or {}).get(t, 1.0)) for t in tasks)
        return self._plans(tuple(tasks), w)

    def smallest_fraction(self, tasks: list[str]) -> float:
        return min(p.flops_fraction for p in self.plans(tasks))

    def resolve(self, tasks: list[str], budget: Budget, weights: dict[str, float] | None = None) -> Plan:
        """The best plan within `budget`; `UnsatisfiableBudget` names the smallest one."""
        plans = self.plans(tasks, weights)
        if budget.fraction is None:
            return min(plans, key=lambda p: (p.flops, -p.score))
        for plan in plans:
            if budget.allows(plan.flops_fraction):
                return plan
        smallest = self.smallest_fraction(tasks)
        raise UnsatisfiableBudget(
            f"budget {budget.label} is below the smallest route of {', '.join(tasks)}: "
            f"the smallest budget accepted is {smallest:.4f} (or tier 'min')",
            smallest,
        )

    def candidates(
        self, tasks: list[str], budget: Budget, floor: Budget, weights: dict[str, float] | None = None
    ) -> list[Plan]:
        """Plans a request may step down to under load, best first: within `budget`, and
        never worse than the plan `floor` (its `min_budget`) resolves to."""
        top = self.resolve(tasks, budget, weights)
        lowest = self.resolve(tasks, floor, weights)
        return [
            p
            for p in self.plans(tasks, weights)
            if p.flops <= top.flops and p.score <= top.score and p.score >= lowest.score
        ]

    # -- calibrated latency ------------------------------------------------------------
    def latency_ms(self, plan: Plan, batch: int = 1) -> float | None:
        """Calibrated latency of a plan at a batch size (nearest bucket at or above)."""
        trunk = self.trunk_latency_ms.get(plan.trunk)
        if not trunk:
            return None
        bucket = _bucket(trunk, batch)
        ms = trunk[bucket] + sum(e.latency_ms.get(bucket, 0.0) for e in plan.entries)
        # past the largest bucket timed so far (calibration goes on in the background),
        # assume time grows with the batch: an estimate that errs on the slow side
        return ms * max(1.0, batch / bucket)

    def batch_latency_ms(self, trunk_id: str, size: int, rows: dict[RouteEntry, int]) -> float:
        """Calibrated time of one batch: the trunk on `size` instances, then each route's path
        on its rows (interpolated between the timed batch sizes); 0 before calibration."""
        trunk = self.trunk_latency_ms.get(trunk_id)
        if not trunk:
            return 0.0
        return _interpolate(trunk, size) + sum(
            _interpolate(e.latency_ms, n) for e, n in rows.items() if e.latency_ms and n > 0
        )

    def route_latency_ms(self, entry: RouteEntry, bucket: int) -> float:
        """Calibrated latency of one task's route alone: its trunk plus its path."""
        return self.trunk_latency_ms.get(entry.route.trunk, {}).get(bucket, 0.0) + entry.latency_ms.get(
            bucket, 0.0
        )

    def resolve_latency(
        self, tasks: list[str], latency_ms: float, budget: Budget, weights: dict[str, float] | None = None
    ) -> Plan:
        """The best plan within `budget` whose calibrated batch-1 latency fits."""
        fitting = [
            p
            for p in self.plans(tasks, weights)
            if budget.allows(p.flops_fraction) and (self.latency_ms(p) or 0.0) <= latency_ms
        ]
        if not fitting:
            fastest = min(self.plans(tasks, weights), key=lambda p: self.latency_ms(p) or 0.0)
            raise UnsatisfiableBudget(
                f"latency_ms {latency_ms} is below the fastest route of {', '.join(tasks)} "
                f"({self.latency_ms(fastest):.2f} ms at batch 1)",
                fastest.flops_fraction,
            )
        return fitting[0]


def _interpolate(table: dict[int, float], n: float) -> float:
    """Time at batch size n from times at timed sizes: linear between them, proportional
    past the largest (and below the smallest)."""
    sizes = sorted(table)
    if n <= sizes[0]:
        return table[sizes[0]]
    for lo, hi in zip(sizes, sizes[1:]):
        if n <= hi:
            return table[lo] + (table[hi] - table[lo]) * (n - lo) / (hi - lo)
    return table[sizes[-1]] * n / sizes[-1]


def _bucket(table: dict[int, float], batch: int) -> int:
    buckets = sorted(table)
    for b in buckets:
        if b >= batch:
            return b
    return buckets[-1]
