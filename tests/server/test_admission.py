"""Admission under load: when a request with `timeout_ms` and `min_budget` steps down the
frontier, when it keeps its route, and when it is shed. The backlog is set by hand on a
real engine (uncalibrated: every route's own latency estimate is 0 ms)."""

import pytest

from routing import Budget
from server.batcher import Batcher
from server.engine import Engine
from server.errors import APIError
from server.settings import Settings


@pytest.fixture(scope="module")
def engine():
    e = Engine(Settings(degrade_headroom=0.5))
    e.batcher = Batcher(e.backend, max_batch_size=64, batch_wait_ms=0, max_queue=1024)
    yield e
    e.batcher._executor.shutdown()


@pytest.fixture
def backlog(engine):
    def set_ms(ms: float) -> None:
        engine.batcher.loop_lag_ms = ms

    yield set_ms
    set_ms(0.0)


def admit(engine, **kw):
    args = {"budget": "max", "min_budget": "low", "timeout_ms": 100} | kw
    return engine.admit(["sum"], 1, args["budget"], args["min_budget"], args["timeout_ms"])


def test_idle_server_keeps_the_requested_route(engine, backlog):
    a = admit(engine)
    assert not a.degraded and a.plan.flops_fraction == 1.0
    assert a.deadline is not None


def test_backlog_past_the_headroom_steps_down_to_min_budget(engine, backlog):
    backlog(70)  # over 0.5 x 100 ms for every route, within 100 ms
    a = admit(engine)
    floor = engine.tables.resolve(["sum"], Budget.parse("low"))
    assert a.degraded and a.plan.flops == floor.flops


def test_backlog_past_the_timeout_sheds_with_retry_after(engine, backlog):
    backlog(120)
    with pytest.raises(APIError) as e:
        admit(engine)
    assert e.value.status == 503 and e.value.headers["Retry-After"] == "1"


def test_without_min_budget_the_route_never_changes(engine, backlog):
    backlog(70)
    a = admit(engine, min_budget=None)
    assert not a.degraded and a.plan.flops_fraction == 1.0


def test_a_busy_width_counts_its_recent_batch_time(engine, backlog):
    top = admit(engine).plan
    engine.batcher.queued = 1  # not idle: a new request may join a batch like the recent ones
    engine.batcher.batch_ms[top.width] = 60.0
    try:
        a = admit(engine)
    finally:
        engine.batcher.queued = 0
        engine.batcher.batch_ms.clear()
    assert a.degraded and a.plan.width < top.width
