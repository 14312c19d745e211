"""Budget auto's ladders against a made-up route table: the fitted ladder, cut to the
request's bounds, and the tasks' ladders merged into plans of one trunk each."""

import numpy as np

from models.calibrate import Rung, fit_ladder
from models.kinds import kind
from routing import Budget, RouteTables
from routing.anytime import choose_ladder
from tests.routing.test_routing import FRONTIER, tables

IDS = [r.id for r in FRONTIER]  # w25-k1-d25, w25-k2-d50, w50-k2-d50, w75-k2-d100, w100-k4-d100


def fitted(ladders: dict[str, list[int]]) -> RouteTables:
    """The made-up tables, with each task's fitted ladder (indexes into FRONTIER) marked."""
    t = tables()
    for task, rungs in ladders.items():
        for e in t.tables[task]:
            e.rung = rungs.index(IDS.index(e.id)) if IDS.index(e.id) in rungs else None
    return t


def ladder(t: RouteTables, tasks: list[str], low="min", high="max"):
    floor, top = t.resolve(tasks, Budget.parse(low)), t.resolve(tasks, Budget.parse(high))
    return choose_ladder(t, tasks, floor, top)


def test_a_task_climbs_its_fitted_ladder():
    assert ladder(fitted({"sum": [0, 2, 4]}), ["sum"]).ids == [IDS[0], IDS[2], IDS[4]]


def test_without_a_fitted_ladder_the_floor_and_the_best_route():
    assert ladder(tables(), ["sum"]).ids == [IDS[0], IDS[4]]


def test_bounds_cut_the_fitted_ladder():
    t = fitted({"sum": [0, 2, 4]})
    # min_budget: the floor replaces the rungs at or below it
    assert ladder(t, ["sum"], low=0.35).ids == [IDS[1], IDS[2], IDS[4]]
    assert ladder(t, ["sum"], low=0.5).ids == [IDS[2], IDS[4]]
    # max_budget: the rungs above it go, the best route it allows closes the ladder
    top = t.resolve(["sum"], Budget.parse(0.8)).entries[0]
    assert top.id not in (IDS[2], IDS[4])
    assert ladder(t, ["sum"], high=0.8).ids == [IDS[0], IDS[2], top.id]


def test_tasks_of_one_request_climb_their_own_ladders_one_trunk_per_rung():
    t = fitted({"sum": [0, 2, 4], "count": [0, 1, 3]})
    lad = ladder(t, ["sum", "count"])
    assert set(lad.rungs[0].tasks) == {"sum", "count"}
    for p in lad.rungs:
        assert len({e.route.trunk for e in p.entries}) == 1 and p.trunk == p.entries[0].route.trunk
    for task, rungs in (("sum", [0, 2, 4]), ("count", [0, 1, 3])):
        climbed = [e.id for p in lad.rungs for e in p.entries if e.task == task]
        assert climbed == [IDS[i] for i in rungs]
        assert lad.last(task) == max(i for i, p in enumerate(lad.rungs) if task in p.tasks)
    flops = [p.flops for p in lad.rungs[1:]]
    assert [min(e.flops for e in p.entries) for p in lad.rungs[1:]] == sorted(
        min(e.flops for e in p.entries) for p in lad.rungs[1:]
    ), flops  # cheapest next route first


def _rung(name, trunk, right_sure, cost, path_cost=None) -> Rung:
    """100 rows of class 1: sure and right on `right_sure`, unsure and wrong elsewhere."""
    p1 = np.full(100, 0.45)
    p1[right_sure] = 0.99
    probs = np.stack([1 - p1, p1], 1).astype(np.float32)
    return Rung(
        name, trunk, probs, 1.0, np.full(100, cost), np.full(100, cost if path_cost is None else path_cost)
    )


def test_the_fit_takes_a_middle_rung_that_pays_and_prices_a_reused_trunk():
    target = np.ones(100, np.int64)
    k = kind("classification")
    a = _rung("a", "ta", np.arange(60), 0.1)
    b = _rung("b", "tb", np.arange(90), 0.4)  # right on 90: below the best, never last
    c = _rung("c", "tc", np.arange(100), 1.0)
    # [a, c]: 0.1 + 0.4 x 1.0 = 0.5; [a, b, c]: 0.1 + 0.4 x 0.4 + 0.1 x 1.0 = 0.36
    ids, reached = fit_ladder(k, [c, b, a], target, None)
    assert ids == ["a", "b", "c"] and abs(reached["cost"] - 0.36) < 1e-9 and reached["score"] == 1.0
    # c on a's trunk costs its paths only after a: [a, c] = 0.1 + 0.4 x 0.2 = 0.18
    c_on_a = _rung("c", "ta", np.arange(100), 1.0, path_cost=0.2)
    ids, reached = fit_ladder(k, [a, b, c_on_a], target, None)
    assert ids == ["a", "c"] and abs(reached["cost"] - 0.18) < 1e-9
