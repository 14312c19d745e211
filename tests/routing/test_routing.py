"""Budget parsing and route resolution against a made-up route table."""

import math

import pytest

from models.image.config import mnist_scenes_config
from models.image.flops import ConfigFlops, full_flops, request_flops
from models.routes import Route
from routing import Budget, BudgetError, RouteTables, UnsatisfiableBudget

CFG = mnist_scenes_config()
# per task: a frontier whose score rises with FLOPs
FRONTIER = [
    Route(0.25, 1, 0.25),
    Route(0.25, 2, 0.5),
    Route(0.5, 2, 0.5),
    Route(0.75, 2, 1.0),
    Route(1.0, 4, 1.0),
]


def tables(scores=(0.80, 0.85, 0.90, 0.93, 0.95)) -> RouteTables:
    rows = {}
    for task in CFG.task_names:
        full = full_flops(CFG, [task])
        rows[task] = [
            {
                "id": r.id,
                "flops": request_flops(CFG, r.width, {task: r}),
                "flops_fraction": request_flops(CFG, r.width, {task: r}) / full,
                "score": s,
            }
            for r, s in zip(FRONTIER, scores)
        ]
    return RouteTables(ConfigFlops(CFG), rows)


@pytest.mark.parametrize(
    "value,fraction",
    [
        ("low", 0.25),
        ("medium", 0.5),
        ("high", 0.75),
        ("max", 1.0),
        (0.3, 0.3),
        (1, 1.0),
        ("min", None),
    ],
)
def test_budget_parse(value, fraction):
    assert Budget.parse(value).fraction == fraction


def test_budget_from_text_reads_numbers_and_tiers():
    """Command lines and environment variables carry text; JSON bodies carry numbers."""
    assert Budget.from_text("0.3").fraction == 0.3 and Budget.from_text("low").fraction == 0.25
    with pytest.raises(BudgetError):
        Budget.from_text("nan")


@pytest.mark.parametrize("value", [0, -0.1, 1.5, "huge", "", "0.3", math.nan, math.inf, True, None, [0.5]])
def test_budget_parse_rejects(value):
    with pytest.raises(BudgetError, match="budget must be"):
        Budget.parse(value)


def test_a_routes_published_fraction_selects_that_route():
    """Route tables publish fractions to 4 decimals; asking for one must not fall a route short."""
    t = tables()
    for task in CFG.task_names:
        for e in t.tables[task]:
            plan = t.resolve([task], Budget.parse(round(e.flops_fraction, 4)))
            assert plan.flops >= e.flops or plan.score >= e.score, (task, e.id, plan.routes)


@pytest.mark.parametrize("tier", ["min", "low", "medium", "high", "max"])
def test_every_tier_resolves_within_budget(tier):
    t = tables()
    for task in CFG.task_names:
        plan = t.resolve([task], Budget.parse(tier))
        budget = Budget.parse(tier).fraction
        assert budget is None or round(plan.flops_fraction, 4) <= budget  # as the receipt reports it
    assert t.resolve(["sum"], Budget.parse("max")).routes["sum"] == Route(1.0, 4, 1.0)
    assert t.resolve(["sum"], Budget.parse("min")).routes["sum"] == Route(0.25, 1, 0.25)


def test_best_score_within_budget_wins():
    t = tables()
    plan = t.resolve(["count"], Budget.parse(0.6))
    assert plan.flops_fraction <= 0.6
    better = [e for e in t.tables["count"] if e.score > plan.entries[0].score]
    assert all(e.flops_fraction > 0.6 for e in better)


def test_budget_below_smallest_route_names_the_smallest():
    t = tables()
    smallest = t.smallest_fraction(["segment"])
    with pytest.raises(UnsatisfiableBudget, match=f"smallest budget accepted is {smallest:.4f}") as e:
        t.resolve(["segment"], Budget.parse(0.01))
    assert e.value.smallest == smallest


def test_multi_task_budget_counts_trunk_once_and_bounds_the_request():
    t = tables()
    tasks = ["count", "sum", "segment"]
    plan = t.resolve(tasks, Budget.parse("medium"))
    assert plan.flops_fraction <= 0.5
    assert plan.flops == request_flops(CFG, plan.width, plan.routes)
    assert len({r.width for r in plan.routes.values()}) == 1


def test_task_weights_give_the_preferred_task_the_wider_route():
    t = tables()
    tasks = ["count", "segment"]
    prefer_seg = t.resolve(tasks, Budget.parse(0.35), {"segment": 10.0})
    prefer_count = t.resolve(tasks, Budget.parse(0.35), {"count": 10.0})
    assert prefer_seg.routes["segment"] >= prefer_count.routes["segment"]
    assert prefer_count.routes["count"] >= prefer_seg.routes["count"]
    assert prefer_seg.routes != prefer_count.routes


def test_degradation_candidates_stay_between_floor_and_budget():
    t = tables()
    floor = t.resolve(["sum"], Budget.parse("low"))
    cands = t.candidates(["sum"], Budget.parse("max"), Budget.parse("low"))
    assert cands[0].routes["sum"] == Route(1.0, 4, 1.0)
    assert all(c.score >= floor.score for c in cands)
    assert cands[-1].flops == floor.flops
    assert [c.score for c in cands] == sorted((c.score for c in cands), reverse=True)


def test_latency_resolution_uses_calibration():
    t = tables()
    for trunk, route in t.trunks.items():
        t.trunk_latency_ms[trunk] = {1: 10.0 * route.width}
    for e in t.tables["count"]:
        e.latency_ms[1] = 10.0 * e.flops_fraction
    fast = t.resolve_latency(["count"], 6.0, Budget.parse("max"))
    assert t.latency_ms(fast) <= 6.0
    with pytest.raises(UnsatisfiableBudget, match="latency_ms 0.1 is below the fastest route"):
        t.resolve_latency(["count"], 0.1, Budget.parse("max"))


def test_ties_go_to_the_larger_route_and_degradation_may_step_down():
    """A saturated task (equal scores) runs its full route at `max`; under load it may use
    the cheaper routes of equal score."""
    t = tables(scores=(1.0, 1.0, 1.0, 1.0, 1.0))
    top = t.resolve(["count"], Budget.parse("max"))
    assert top.flops_fraction == 1.0
    low = t.resolve(["count"], Budget.parse("low"))
    assert low.flops == max(p.flops for p in t.plans(["count"]) if p.flops_fraction <= 0.25)
    steps = t.candidates(["count"], Budget.parse("max"), Budget.parse("min"))
    assert steps[0] == top and min(p.flops for p in steps) < top.flops
