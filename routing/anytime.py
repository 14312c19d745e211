"""Anytime answers (budget "auto"): a ladder of plans per task set, cheapest first, and the
rule that decides which rows climb it.

A row runs the ladder's first rung; a task's answer whose calibrated confidence is at least
the request's `confidence` is final, the others go up one rung (only for the tasks still
unsure), until the last rung answers whatever is left. Ladders are chosen at load time from
the route table (docs/design.md, "Anytime answers"):

- one task: the ladder `models.calibrate` fitted on the validation split (the route rows it
  marked `rung` 0, 1, ...: the cheapest ladder of up to three rungs that reaches the best
  route's score - 0.5 points at some confidence, a rung on a trunk already run costing only
  its paths), cut to the request's `min_budget` (the floor replaces the rungs below it) and
  `max_budget` (rungs above it are dropped, and the plan the rule below ends on closes the
  ladder when it scores better than what is left);
- several tasks, or a table with no fitted ladder: two rungs, the floor (the plan
  `min_budget` resolves to, default the cheapest) and the cheapest plan, within `max_budget`
  (default `max`), whose validation score equals the best one there. One rung where the
  floor already scores as well.
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
    """The ladder from `floor` to at most `top` (the module's rule)."""
    plans = [p for p in tables.plans(tasks) if floor.flops <= p.flops <= top.flops]
    best = max(p.score for p in plans) if plans else top.score
    last = min((p for p in plans if p.score >= best), key=lambda p: (p.flops, -p.score), default=top)
    above = [p for p in _fitted(tables, tasks) if p.flops > floor.flops]
    fitted = [p for p in above if p.flops <= top.flops]
    if fitted:
        rungs = [floor, *fitted]
        if len(fitted) < len(above) and last.flops > rungs[-1].flops and last.score > rungs[-1].score:
            rungs.append(last)  # max_budget cut the fitted ladder: end on the best plan it allows
        return Ladder(tuple(tasks), tuple(rungs))
    if last.flops <= floor.flops or floor.score >= best:
        return Ladder(tuple(tasks), (floor,))
    return Ladder(tuple(tasks), (floor, last))


def _fitted(tables: RouteTables, tasks: list[str]) -> list[Plan]:
    """The plans of a single task's fitted ladder, in rung order ([] where none was fitted)."""
    if len(tasks) != 1:
        return []
    by_entry = {p.entries[0]: p for p in tables.plans(tasks)}
    rungs = sorted((e for e in tables.tables[tasks[0]] if e.rung is not None), key=lambda e: e.rung)
    return [by_entry[e] for e in rungs]


def unsure(confidence, threshold: float):
    """The rows (a boolean mask) whose confidence is below the threshold: they climb."""
    return confidence < threshold
