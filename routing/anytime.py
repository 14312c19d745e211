"""Anytime answers (budget "auto"): a ladder of plans per task set, cheapest first, and the
rule that decides which rows climb it.

A row runs the ladder's first rung; a task's answer whose calibrated confidence is at least
the request's `confidence` is final, the others go up one rung (only for the tasks still
unsure), until the last rung answers whatever is left. The ladder is chosen from the route
table alone, at load time (docs/design.md, "Anytime answers"): two rungs,

1. the floor: the plan `min_budget` resolves to (default: the cheapest plan);
2. the cheapest plan, within `max_budget` (default `max`), whose validation score equals the
   best one there: what `max` answers, at the least cost.

(A single rung where the floor already scores as well.) On both bundled models' validation
splits, every ladder with middle rungs that was tried (geometric steps of 2x to 6x in FLOPs,
a middle rung at the geometric mean) cost more FLOPs for the same score: a row that climbs
pays for every rung it ran.
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.resolve import Plan, RouteTables

DEFAULT_CONFIDENCE = 0.9


@dataclass(frozen=True)
class Ladder:
    tasks: tuple[str, ...]
    rungs: tuple[Plan, ...]  # cheapest first

    @property
    def ids(self) -> list[str]:
        return ["+".join(e.id for e in p.entries) for p in self.rungs]


def choose_ladder(tables: RouteTables, tasks: list[str], floor: Plan, top: Plan) -> Ladder:
    """The ladder from `floor` to the cheapest plan as good as `top` (the module's rule)."""
    plans = [p for p in tables.plans(tasks) if floor.flops <= p.flops <= top.flops]
    best = max(p.score for p in plans) if plans else top.score
    last = min((p for p in plans if p.score >= best), key=lambda p: (p.flops, -p.score), default=top)
    if last.flops <= floor.flops or floor.score >= best:
        return Ladder(tuple(tasks), (floor,))
    return Ladder(tuple(tasks), (floor, last))


def unsure(confidence, threshold: float):
    """The rows (a boolean mask) whose confidence is below the threshold: they climb."""
    return confidence < threshold
