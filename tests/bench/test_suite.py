"""The benchmark suite runs end to end at its tiny scale and produces every table and plot.

Timings are not asserted (shared, noisy machines); only that each comparison ran and measured.
"""

import json
import math

import pytest

from bench.__main__ import ALL, main
from bench.report import TITLES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, main(["all", "--tiny", "--out", str(out), "--port", "8290"])


# differences of two medians (end to end minus in-process; what the client saw beyond the
# server's total): at the tiny scale's few samples either may come out below 0
DIFFERENCES = {"overhead_ms", "send"}


def numbers(rows: list[dict], skip: set[str] = frozenset()) -> list[float]:
    return [
        v
        for r in rows
        for k, v in r.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k not in skip
    ]


def test_every_comparison_ran_and_measured(tiny):
    _, results = tiny
    assert {name.replace("-", "_") for name in ALL} <= set(results)
    for name, value in results.items():
        values = numbers(value["rows"])
        assert values, name
        assert all(math.isfinite(v) for v in values), (name, value["rows"])
        if name != "text_quality":  # its scores include correlations, in [-1, 1] at the tiny scale
            assert all(v >= 0 for v in numbers(value["rows"], DIFFERENCES)), (name, value["rows"])
        for g in value["goals"]:
            assert math.isfinite(g["value"]) and isinstance(g["met"], bool), (name, g)


def test_peers_answered_the_same_traffic(tiny):
    _, results = tiny
    rows = {r["server"]: r for r in results["peers"]["rows"]}
    assert {"trunkline", "fastapi"} <= set(rows)  # litserve runs only in its own venv (--quick)
    for name, row in rows.items():
        assert row["saturated_rps"] > 0 and row["errors"] == 0, name


def test_overload_arms_and_memory(tiny):
    _, results = tiny
    arms = [(r["images_per_request"], r["arm"]) for r in results["overload"]["rows"]]
    names = ("degradation (min_budget low)", "no degradation", "all at low")
    assert arms == [(n, a) for n in (1, 16) for a in names]
    assert all(r["requests"] > 0 for r in results["overload"]["rows"])
    rss = [r["rss_mib"] for r in results["memory"]["rows"]]
    assert len(rss) == 6 and rss[-1] == pytest.approx(sum(rss[1:5]), abs=0.5)


def test_text_sections(tiny):
    _, results = tiny
    quality = {r["task"] for r in results["text_quality"]["rows"]}
    assert quality == {"sentiment", "question_type", "spam", "sentiment_score"}
    assert {r["task"] for r in results["text_quality"]["frontier"]} == quality
    serving = results["text_serving"]
    assert serving["saturated_rps"]["low"] > 0 and serving["saturated_rps"]["max"] > 0
    assert serving["padding"]["length_groups"] <= serving["padding"]["one_batch"]
    assert len(serving["memory"]["rows"]) == 6


def test_report_files(tiny):
    out, results = tiny
    md = (out / "RESULTS.md").read_text()
    for key in results:
        assert TITLES[key] in md
    for png in ("accuracy_vs_flops.png", "budget_scaling.png", "peers.png", "overload.png"):
        assert (out / "plots" / png).stat().st_size > 1000
    raw = json.loads((out / "results.json").read_text())
    [run] = raw["runs"]  # a fresh folder: this run measured every section
    assert run["scale"] == "tiny" and set(run["sections"]) == set(raw["results"]) == set(results)


def test_anytime_covers_every_task_with_a_confidence(tiny):
    out, results = tiny
    anytime = results["anytime"]
    points = {(c["model"], c["task"], c["confidence"]) for c in anytime["curves"]}
    tasks = {("text-tasks", t) for t in ("sentiment", "question_type", "spam")}
    tasks |= {("mnist-scenes", t) for t in ("count", "presence", "sum", "segment")}
    assert {(m, t) for m, t, _ in points} == tasks  # not sentiment_score: a regression has none
    assert len(points) == 6 * len(tasks)
    for c in anytime["curves"]:
        assert 0 < c["fraction"] and sum(c["answered_by"]) > 0
    assert {r["arm"] for r in anytime["http"]} == {"max", "auto", "min"}
    # why a target is met or not: every task with one has its cheap routes' bound, which
    # escalating every row always reaches (max answers then) at no less than the route's cost
    targeted = {("text-tasks", t) for t in ("sentiment", "question_type", "spam")}
    targeted |= {("mnist-scenes", t) for t in ("count", "presence", "sum")}
    assert {(f["model"], f["task"]) for f in anytime["floors"]} == targeted
    for f in anytime["floors"]:
        assert 0 <= f["agrees with max"] <= 1 and 0 <= f["escalated at the bound"] <= 1
        assert f["two-rung bound FLOPs / max's"] >= f["FLOPs / max's"]
    for plot in anytime["plots"]:
        assert (out / plot).stat().st_size > 1000
