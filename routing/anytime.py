"""Anytime answers (budget "auto"): a ladder of plans per task set, cheapest first, and the
rule that decides which rows climb it.

A row runs the ladder's first rung; a task's answer whose calibrated confidence is at least
the request's `confidence` is final, the others go up to the task's next rung, until the
task's last rung answers whatever is left. Ladders are chosen at load time from the route
table (docs/design.md, "Anytime answers"). Per task, a sequence of routes:

- the route the floor gives it (the plan `min_budget` resolves to, default the cheapest);
- then the ladder `models.calibrate` fitted on the validation split (the route rows it marked
  `rung` 0, 1, ...), without its rungs at or below the floor and above `max_budget` (and
  where `max_budget` cut it, the task's route in the best plan `max_budget` allows closes it);
- a task with no fitted ladder: that best plan's route, where it scores better than the floor.

Then the tasks' sequences are merged into plans of one trunk each (what the batcher runs):
each rung takes the cheapest next route of any task and, beside it, every other task's next
route on the same trunk. A rung holds only the tasks that climb there; one task's ladder is
its sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

from routing.resolve import Plan, RouteEntry, RouteTables

DEFAULT_CONFIDENCE = 0.9


@dataclass(frozen=True)
class Ladder:
    tasks: tuple[str, ...]
    rungs: tuple[Plan, ...]  # cheapest first; the first holds every task, later ones those that climb

    @property
    def ids(self) -> list[str]:
        return ["+".join(e.id for e in p.entries) for p in self.rungs]

    def last(self, task: str) -> int:
        """The index of the task's last rung: what answers it whatever its confidence."""
        return max(i for i, p in enumerate(self.rungs) if task in p.tasks)


def choose_ladder(tables: RouteTables, tasks: list[str], floor: Plan, top: Plan) -> Ladder:
    """The ladder from `floor` to at most `top` (the module's rule)."""
    plans = [p for p in tables.plans(tasks) if floor.flops <= p.flops <= top.flops]
    best = max(p.score for p in plans) if plans else top.score
    last = min((p for p in plans if p.score >= best), key=lambda p: (p.flops, -p.score), default=top)
    if floor.score >= best:
        last = floor
    sequences = [_sequence(tables, e, _entry(top, e.task), _entry(last, e.task)) for e in floor.entries]
    return Ladder(tuple(tasks), (floor, *_merge(tables, [s[1:] for s in sequences])))


def _entry(plan: Plan, task: str) -> RouteEntry:
    return next(e for e in plan.entries if e.task == task)


def _sequence(tables: RouteTables, floor: RouteEntry, top: RouteEntry, best: RouteEntry) -> list[RouteEntry]:
    """One task's routes, from its floor (the module's rule); `best` is its route in the best
    plan within the bounds."""
    fitted = sorted((e for e in tables.tables[floor.task] if e.rung is not None), key=lambda e: e.rung)
    above = [e for e in fitted if e.flops > floor.flops]
    kept = [e for e in above if e.flops <= top.flops]
    if not kept:
        return [floor, best] if best.flops > floor.flops and best.score > floor.score else [floor]
    if len(kept) < len(above) and best.flops > kept[-1].flops and best.score > kept[-1].score:
        kept.append(best)  # max_budget cut the fitted ladder: end on the best route it allows
    return [floor, *kept]


def _merge(tables: RouteTables, rests: list[list[RouteEntry]]) -> list[Plan]:
    """The tasks' routes after the floor as plans of one trunk each, cheapest first."""
    rungs, rests = [], [list(r) for r in rests]
    while any(rests):
        trunk = min((r[0] for r in rests if r), key=lambda e: e.flops).route.trunk
        entries = tuple(r.pop(0) for r in rests if r and r[0].route.trunk == trunk)
        rungs.append(next(p for p in tables.plans([e.task for e in entries]) if p.entries == entries))
    return rungs


def unsure(confidence, threshold: float):
    """The rows (a boolean mask) whose confidence is below the threshold: they climb."""
    return confidence < threshold
