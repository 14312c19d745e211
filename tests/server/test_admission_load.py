"""Admission against a real server under closed-loop load it can carry: requests with
`timeout_ms` are answered, not shed, on a fresh server and after a heavy multi-task request,
run after run. A server once fell into shedding nearly everything and stayed there: after
one 48-image request its estimates stayed high, few batches ran to correct them, and 16
clients got 503s for all but ~16% of their requests.

Each run counts the requests sent after its first second: on a fresh server the first batches
at each batch size run cold (several times their calibrated time), the slowdown estimate
jumps and some requests are shed for about a second (seen: 51-64% answered over the first
3 s in 3 of 12 runs); what must never happen is shedding that lasts. A run that sheds more
is run once more, which shedding that lasts fails again: in a full suite on 2 shared cores a
moment's stall once shed 17% of a run (82.5% answered) right after a run that passed."""

import asyncio
import time

import aiohttp
import httpx
import orjson
import pytest

from tests.conftest import RunningServer

from .helpers import payload


@pytest.fixture(scope="module")
def fresh(scenes):
    s = RunningServer("torch", TRUNKLINE_THREADS="2", TRUNKLINE_MODEL="mnist-scenes")
    s.wait_ready()
    yield s
    s.stop()


def closed_loop(url: str, body: dict, clients: int, seconds: float, after: float = 0.0) -> list[int]:
    """`clients` connections, each sending the next request as soon as the last is answered;
    the statuses of the requests sent `after` seconds or later."""
    data = orjson.dumps(body)

    async def main() -> list[int]:
        statuses: list[int] = []
        start = time.monotonic()
        stop = start + seconds
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def client() -> None:
                while time.monotonic() < stop:
                    sent = time.monotonic() - start
                    async with session.post(
                        f"{url}/v1/predict", data=data, headers={"content-type": "application/json"}
                    ) as r:
                        await r.read()
                        if sent >= after:
                            statuses.append(r.status)

            await asyncio.gather(*(client() for _ in range(clients)))
        return statuses

    return asyncio.run(main())


def test_requests_with_timeouts_are_answered_run_after_run(fresh, scenes):
    body = payload(scenes.images[:1], "sum", budget="max", min_budget="max", timeout_ms=250)
    heavy = payload(list(scenes.images) * 3, tasks=["count", "presence", "sum", "segment"], budget="max")
    for run in range(4):
        if run == 2:  # one unusual batch: 48 images through all four tasks
            assert httpx.post(f"{fresh.url}/v1/predict", json=heavy, timeout=120).status_code == 200
        for attempt in range(2):  # a stall of the shared machine sheds for a moment: run again
            statuses = closed_loop(fresh.url, body, clients=16, seconds=4, after=1.0)
            answered = statuses.count(200) / len(statuses)
            assert set(statuses) <= {200, 503}, (run, attempt, set(statuses))
            if answered >= 0.9:
                break
        assert answered >= 0.9, (run, len(statuses), answered)  # shedding that lasts
