"""The batching loop driven by a fake backend (LitServe's test_batched_loop style): what runs
together, in which order, and what each request gets back, with no model and no server."""

import asyncio
import threading
import time

import numpy as np
import pytest

from models.adapter import InputError
from models.routes import Route
from routing import Plan, RouteEntry
from server.batcher import Batcher, WorkItem
from server.compute import ComputeScheduler
from server.errors import DeadlineExceeded, QueueFull


class FakeBackend:
    """Trunk: x + width; path: tokens * task factor. Records every call; can be gated."""

    name = "fake"
    FACTOR = {"a": 10.0, "b": 100.0}

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.gate = threading.Event()
        self.gate.set()

    def run_trunk(self, trunk, batch):
        width = int(trunk.removeprefix("w")) / 100
        self.gate.wait(timeout=10)
        self.calls.append(("trunk", width, batch[:, 0].tolist()))
        return batch + width

    def run_path(self, task, route, tokens, batch):
        if task == "boom":
            raise RuntimeError("backend failure")
        self.calls.append(("path", task, len(tokens)))
        return tokens * self.FACTOR[task]


def plan(width: float, *tasks: str) -> Plan:
    entries = tuple(RouteEntry(t, Route(width, 1, 1.0), 1, width, 1.0) for t in tasks)
    return Plan(Route(width, 1, 1.0).trunk, entries, 1, width, 1.0)


def batches(inputs):
    batch = np.concatenate(inputs)
    return [(np.arange(len(batch)), batch)]


@pytest.fixture
def setup():
    compute, backend = ComputeScheduler(), FakeBackend()

    def make(**kw) -> Batcher:
        args = {"max_batch_size": 64, "batch_wait_ms": 0, "max_queue": 1024} | kw
        b = Batcher(backend, batches, compute, **args)
        b.start()
        return b

    yield backend, make
    compute.close()


def item(values, p, **kw) -> WorkItem:
    return WorkItem(np.array(values, dtype=np.float32)[:, None], p, **kw)


async def hold(b: Batcher, backend: FakeBackend, width: float = 1.0) -> asyncio.Task:
    """Hold the compute thread on a first batch (input 0) so that what follows queues."""
    backend.gate.clear()
    blocker = asyncio.create_task(b.submit(item([0], plan(width, "a"))))
    await asyncio.sleep(0.05)
    return blocker


def test_requests_of_different_tasks_share_one_trunk_run(setup):
    backend, make = setup

    async def main():
        b = make()
        first = await hold(b, backend, width=0.5)
        rest = [
            b.submit(item([1, 2], plan(0.5, "a"))),
            b.submit(item([3], plan(0.5, "b"))),
            b.submit(item([4], plan(0.5, "a", "b"))),
        ]
        backend.gate.set()
        results = await asyncio.gather(first, *rest)
        await b.stop()
        return results

    r0, r1, r2, r3 = asyncio.run(main())
    trunks = [c for c in backend.calls if c[0] == "trunk"]
    assert trunks == [("trunk", 0.5, [0.0]), ("trunk", 0.5, [1.0, 2.0, 3.0, 4.0])]
    np.testing.assert_allclose(r1.outputs["a"][:, 0], [15.0, 25.0])  # (x + 0.5) * 10, in order
    np.testing.assert_allclose(r2.outputs["b"][:, 0], [350.0])
    np.testing.assert_allclose(r3.outputs["a"][:, 0], [45.0])
    np.testing.assert_allclose(r3.outputs["b"][:, 0], [450.0])
    assert r1.batch_size == r2.batch_size == r3.batch_size == 4
    assert sorted(c[1:] for c in backend.calls if c[0] == "path")[-2:] == [("a", 3), ("b", 2)]


def test_widths_run_in_separate_batches(setup):
    backend, make = setup

    async def main():
        b = make()
        out = await asyncio.gather(b.submit(item([1], plan(0.25, "a"))), b.submit(item([2], plan(1.0, "a"))))
        await b.stop()
        return out

    low, full = asyncio.run(main())
    assert {c[1] for c in backend.calls if c[0] == "trunk"} == {0.25, 1.0}
    assert low.outputs["a"][0, 0] == pytest.approx(12.5) and full.outputs["a"][0, 0] == pytest.approx(30.0)


def test_priority_orders_the_queue_then_arrival(setup):
    backend, make = setup

    async def main():
        b = make(max_batch_size=1)
        blocker = await hold(b, backend)
        tasks = [
            asyncio.create_task(b.submit(item([v], plan(1.0, "a"), priority=p)))
            for v, p in ((1, 3), (2, 2), (3, 1), (4, 2), (5, 1))
        ]
        await asyncio.sleep(0.01)
        backend.gate.set()
        await asyncio.gather(blocker, *tasks)
        await b.stop()

    asyncio.run(main())
    order = [c[2][0] for c in backend.calls if c[0] == "trunk"]
    assert order == [0, 3, 5, 2, 4, 1]


def test_a_request_past_its_deadline_is_never_run(setup):
    backend, make = setup

    async def main():
        b = make()
        blocker = await hold(b, backend)
        late = asyncio.create_task(b.submit(item([7], plan(1.0, "a"), deadline=time.monotonic() + 0.02)))
        await asyncio.sleep(0.1)
        assert late.done() and b.queued == 0  # answered at its deadline, while the batch still runs
        backend.gate.set()
        await blocker
        with pytest.raises(DeadlineExceeded):
            await late
        await b.stop()

    asyncio.run(main())
    assert all(7.0 not in c[2] for c in backend.calls if c[0] == "trunk")


def test_a_full_queue_refuses_and_a_failed_batch_fails_only_its_requests(setup):
    """The queue holds max_queue instances per trunk; a request that fails in the backend,
    batched with a good one, fails alone."""
    backend, make = setup

    async def main():
        b = make(max_queue=2)
        blocker = await hold(b, backend)
        bad = asyncio.create_task(b.submit(item([1], plan(1.0, "boom"))))
        good = asyncio.create_task(b.submit(item([2], plan(1.0, "a"))))
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull):
            await b.submit(item([3], plan(1.0, "a")))
        backend.gate.set()
        await blocker
        with pytest.raises(RuntimeError, match="backend failure"):
            await bad
        result = await good
        after = await b.submit(item([4], plan(1.0, "a")))  # the loop goes on
        await b.stop()
        return result, after

    good, after = asyncio.run(main())
    assert good.outputs["a"][0, 0] == pytest.approx(30.0) and after.outputs["a"][0, 0] == pytest.approx(50.0)


def test_two_models_share_the_compute_thread_in_turn(setup):
    backend, make = setup

    async def main():
        a, b = make(max_batch_size=1), make(max_batch_size=1)
        backend.gate.clear()
        jobs = [a.submit(item([v], plan(1.0, "a"))) for v in (1, 2, 3)]
        jobs += [b.submit(item([v], plan(1.0, "a"))) for v in (11, 12, 13)]
        tasks = [asyncio.create_task(j) for j in jobs]
        await asyncio.sleep(0.05)
        backend.gate.set()
        await asyncio.gather(*tasks)
        await a.stop()
        await b.stop()

    asyncio.run(main())
    order = [c[2][0] for c in backend.calls if c[0] == "trunk"]
    assert order == [1, 11, 2, 12, 3, 13]


def test_requests_of_two_widths_queued_together_are_all_answered(setup):
    """Queue heads of several widths are compared by (priority, arrival) only."""
    backend, make = setup

    async def main():
        b = make()
        blocker = await hold(b, backend)
        tasks = [
            asyncio.create_task(b.submit(item([v], plan(w, "a"))))
            for v, w in ((1, 0.25), (2, 1.0), (3, 0.25))
        ]
        await asyncio.sleep(0.01)
        backend.gate.set()
        out = await asyncio.wait_for(asyncio.gather(blocker, *tasks), timeout=5)
        await b.stop()
        return out

    assert len(asyncio.run(main())) == 4


def test_an_item_that_fails_to_decode_fails_alone_in_its_batch(setup):
    """Decoding runs in the batch: an item whose decode raises gets that error; the seven
    good items it was batched with are answered from one trunk run."""
    backend, make = setup

    def undecodable():
        raise InputError("inputs.0.image", "is not a decodable PNG image")

    async def main():
        b = make()
        first = await hold(b, backend)
        good = [
            b.submit(WorkItem(lambda v=v: np.array([[v]], np.float32), plan(1.0, "a"), n=1))
            for v in range(1, 8)
        ]
        bad = b.submit(WorkItem(undecodable, plan(1.0, "a"), n=1))
        backend.gate.set()
        results = await asyncio.gather(first, *good[:3], bad, *good[3:], return_exceptions=True)
        await b.stop()
        return results

    results = asyncio.run(main())
    assert isinstance(results[4], InputError) and results[4].field == "inputs.0.image"
    answers = [r for i, r in enumerate(results[1:]) if i != 3]
    assert [r.outputs["a"][0, 0] for r in answers] == pytest.approx([(v + 1.0) * 10 for v in range(1, 8)])
    assert all(r.batch_size == 8 for r in answers)
    assert [c for c in backend.calls if c[0] == "trunk"][-1] == (
        "trunk",
        1.0,
        [float(v) for v in range(1, 8)],
    )


def test_a_batch_is_cut_where_a_deadline_would_pass_and_late_requests_never_run(setup):
    """Estimated 10 ms an instance: two 3-instance requests due in 50 ms would be late
    together (60 ms), so they run in two batches, both in time; one due in 5 ms would be late
    even alone and is answered 503 without running."""
    backend = FakeBackend()
    compute = ComputeScheduler()

    async def main():
        b = Batcher(backend, batches, compute, 64, 0, 1024, batch_estimate=lambda w, size, rows: 10.0 * size)
        b.start()
        due = time.monotonic() + 0.05
        pair = [b.submit(item([v, v, v], plan(1.0, "a"), deadline=due)) for v in (1, 2)]
        doomed = b.submit(item([9], plan(1.0, "a"), deadline=time.monotonic() + 0.005))
        out = await asyncio.gather(*pair, doomed, return_exceptions=True)  # all queued, then taken
        await b.stop()
        return out

    r1, r2, doomed = asyncio.run(main())
    compute.close()
    assert r1.batch_size == 3 and r2.batch_size == 3
    assert isinstance(doomed, DeadlineExceeded)
    trunks = [c[2] for c in backend.calls if c[0] == "trunk"]
    assert trunks == [[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]  # 9.0 never ran
