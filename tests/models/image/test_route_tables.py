"""Route tables are Pareto frontiers with a route for every budget tier."""

from models.image import checkpoint
from models.routes import Route, pareto_frontier


def points(rows: dict[str, tuple[int, float]]) -> dict[Route, tuple[int, float]]:
    return {Route.parse(k): v for k, v in rows.items()}


def test_frontier_drops_dominated_routes():
    frontier = pareto_frontier(
        points(
            {
                "w25-k1-d25": (24, 0.60),
                "w25-k1-d50": (25, 0.58),  # dearer and worse: dominated
                "w50-k1-d25": (40, 0.75),
                "w75-k1-d25": (58, 0.74),  # dominated: w50-k1-d25 is cheaper and better
                "w100-k4-d100": (100, 0.80),
            }
        )
    )
    assert [r.id for r in frontier] == ["w25-k1-d25", "w50-k1-d25", "w100-k4-d100"]


def test_saturated_task_still_gets_a_route_per_tier():
    """When scores tie from the smallest route up, each tier keeps its largest tying route."""
    frontier = pareto_frontier(
        points(
            {
                "w25-k1-d25": (24, 1.0),
                "w25-k1-d100": (25, 1.0),
                "w50-k1-d25": (40, 1.0),
                "w75-k1-d25": (58, 0.99),
                "w75-k2-d25": (70, 1.0),
                "w100-k4-d100": (100, 1.0),
            }
        )
    )
    assert [r.id for r in frontier] == [
        "w25-k1-d25",
        "w25-k1-d100",
        "w50-k1-d25",
        "w75-k2-d25",
        "w100-k4-d100",
    ]


def test_full_route_is_kept_even_when_a_smaller_one_scores_higher():
    """A short run can leave the full route behind; the table still reaches a fraction of 1.0."""
    frontier = pareto_frontier(
        points({"w25-k1-d25": (24, 0.60), "w75-k2-d100": (80, 0.82), "w100-k4-d100": (100, 0.81)})
    )
    assert [r.id for r in frontier] == ["w25-k1-d25", "w75-k2-d100", "w100-k4-d100"]


def test_bundled_tables_span_every_tier_and_never_fall():
    _, tables = checkpoint.load("mnist-scenes")
    for task, rows in tables.items():
        fractions = [r["flops_fraction"] for r in rows]
        scores = [r["score"] for r in rows]
        assert len(rows) >= 4, task
        assert fractions == sorted(fractions) and fractions[0] <= 0.25 and fractions[-1] == 1.0, task
        assert scores == sorted(scores), task
        for ceiling in (0.25, 0.5, 0.75, 1.0):
            assert any(f <= ceiling for f in fractions), (task, ceiling)
