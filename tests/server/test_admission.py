"""Admission under load: when a request with `timeout_ms` and `min_budget` steps down the
frontier, when it keeps its route, and when it is shed. The backlog is set by hand on a
real engine (uncalibrated: every route's own latency estimate is 0 ms)."""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.adapter import load_adapter
from routing import Budget
from server.batcher import Recent
from server.compute import ComputeScheduler
from server.engine import Engine, RequestOptions
from server.errors import InvalidInput, Overloaded
from server.metrics import Metrics
from server.settings import Settings


@pytest.fixture(scope="module")
def engine():
    compute = ComputeScheduler()
    settings = Settings(backend="torch", degrade_headroom=0.5)
    yield Engine(load_adapter("mnist-scenes"), settings, compute, Metrics())
    compute.close()


@pytest.fixture
def backlog(engine):
    """Work ahead of a new request: the rest of the running batch, with one instance queued
    (a busy server; an idle one waits for nothing)."""

    def set_ms(ms: float) -> None:
        engine.batcher.busy_until = time.monotonic() + ms / 1000 if ms else 0.0
        engine.batcher.queued = 1 if ms else 0

    engine._pressure_until = 0.0
    yield set_ms
    set_ms(0.0)
    engine._pressure_until = 0.0


def admit(engine, arrived=None, **kw):
    args = {"budget": "max", "min_budget": "low", "timeout_ms": 100} | kw
    return engine.admit(RequestOptions(["sum"], **args), 1, arrived=arrived)


def test_idle_server_keeps_the_requested_route(engine, backlog):
    a = admit(engine)
    assert not a.degraded and a.plan.flops_fraction == 1.0
    assert a.deadline is not None


def test_backlog_past_the_headroom_steps_down_to_min_budget(engine, backlog):
    backlog(70)  # over 0.5 x 100 ms for every route, within 100 ms
    a = admit(engine)
    floor = engine.tables.resolve(["sum"], Budget.parse("low"))
    assert a.degraded and a.plan.flops == floor.flops


def test_time_spent_before_admission_counts(engine, backlog):
    """The timeout counts from arrival: 60 ms already spent (handler) plus the loop's lag
    (20 ms, before the handler, and again for the answer) leave 0 of 100 ms."""
    backlog(1)
    engine.compute.loop_lag_ms = 20
    try:
        with pytest.raises(Overloaded):
            admit(engine, arrived=time.monotonic() - 0.06)
        assert admit(engine, arrived=time.monotonic() - 0.01).degraded  # 10 + 20 + 20 + 1 > 50
    finally:
        engine.compute.loop_lag_ms = 0.0


def test_backlog_past_the_timeout_sheds_with_retry_after(engine, backlog):
    backlog(120)
    with pytest.raises(Overloaded) as e:
        admit(engine)
    assert e.value.retry_after == 1 and e.value.field == "timeout_ms"
    assert "w25" in e.value.message  # names the cheapest route and its cost


def test_under_pressure_requests_start_at_their_cheapest_route(engine, backlog):
    """After a request was degraded to its floor, the next ones on a busy server go straight
    to theirs (even with a short backlog), for a second; an idle server forgets it."""
    backlog(70)
    floor = engine.tables.resolve(["sum"], Budget.parse("low"))
    assert admit(engine).plan.flops == floor.flops
    backlog(1)  # a lull: alone, this request would keep its full route
    assert admit(engine).plan.flops == floor.flops
    engine._pressure_until = 0.0
    assert admit(engine).plan.flops_fraction == 1.0
    backlog(0)
    engine._pressure_until = time.monotonic() + 10
    assert admit(engine).plan.flops_fraction == 1.0


def test_without_min_budget_the_route_never_changes(engine, backlog):
    backlog(70)
    a = admit(engine, min_budget=None)
    assert not a.degraded and a.plan.flops_fraction == 1.0


def test_a_busy_width_counts_the_batch_a_request_joins(engine, backlog):
    top = admit(engine).plan
    engine.batcher.queued = 1  # not idle: a new request joins the 59 instances queued at its width
    engine.batcher.queued_at[top.trunk] = 59
    engine.tables.trunk_latency_ms[top.trunk] = {1: 1.0, 64: 61.0}  # alone 1 ms; that batch ~60 ms
    try:
        a = admit(engine)
    finally:
        engine.batcher.queued = 0
        engine.batcher.queued_at.clear()
        del engine.tables.trunk_latency_ms[top.trunk]
    assert a.degraded and a.plan.width < top.width


@pytest.mark.parametrize("lag_ms", [0, 300, 10_000])
def test_an_idle_server_never_sheds(engine, lag_ms):
    """With the compute thread idle and nothing queued only the route's own compute counts,
    however busy the event loop was: stale estimates cannot shed everything."""
    engine.compute.loop_lag_ms = lag_ms
    engine.tables.trunk_latency_ms["w100"] = {1: 5.0}
    engine.batcher.slowdown["w100"] = Recent(rest=1.0)
    engine.batcher.slowdown["w100"].add(1000.0)  # as if batches just ran 200x slower than calibrated
    try:
        a = admit(engine, min_budget="max", timeout_ms=250)
    finally:
        engine.compute.loop_lag_ms = 0.0
        engine.batcher.slowdown.clear()
        del engine.tables.trunk_latency_ms["w100"]
    assert not a.degraded and a.plan.flops_fraction == 1.0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lag_ms=st.floats(0, 1e6),
    slowdown=st.floats(1, 1e6),
    per_instance_ms=st.floats(0, 1e4),
    n=st.integers(1, 256),
    budget=st.sampled_from(["low", "medium", "high", "max"]),
    floor=st.sampled_from([None, "low"]),
)
def test_property_no_request_is_shed_while_the_compute_thread_is_idle(
    engine, lag_ms, slowdown, per_instance_ms, n, budget, floor
):
    """Whatever the learnt estimates say (loop lag, slowdown, decode cost per instance), a
    request that the route's calibrated compute can answer in time is admitted while nothing
    is queued and the compute thread has nothing to do."""
    assert engine.batcher.idle
    engine.tables.trunk_latency_ms["w100"] = {1: 5.0, 64: 50.0}
    engine.compute.loop_lag_ms = lag_ms
    for trunk in engine.tables.trunks:
        engine.batcher.slowdown[trunk] = Recent(rest=slowdown, tau_s=1e9)
    engine.batcher.per_instance = Recent(rest=per_instance_ms, tau_s=1e9)
    try:
        opts = RequestOptions(["sum"], budget=budget, min_budget=floor, timeout_ms=250)
        engine.admit(opts, n)
    finally:
        engine.compute.loop_lag_ms = 0.0
        engine.batcher.slowdown.clear()
        engine.batcher.per_instance = Recent(rest=0.0)
        del engine.tables.trunk_latency_ms["w100"]


def test_learnt_estimates_relax_when_no_batch_runs():
    recent = Recent(rest=1.0, tau_s=0.05)
    recent.add(50.0)
    high = recent.value()
    time.sleep(0.25)
    assert high > 10 and recent.value() < 1.5


@pytest.mark.parametrize(("priority", "expected"), [(0, 2), (1, 1), (3, 3)])
def test_priority_levels_default_to_the_middle(engine, priority, expected):
    assert admit(engine, timeout_ms=None, priority=priority).priority == expected


def test_priority_past_the_levels_is_refused(engine):
    with pytest.raises(InvalidInput) as e:
        admit(engine, priority=4)
    assert e.value.field == "priority"
