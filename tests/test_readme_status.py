"""The README's table of status codes is what the server answers: one request per row, against
a real server (auth on, a queue of one, batches held at a gate for the 429)."""

from __future__ import annotations

import gzip
import re
import threading
import time

import httpx
import pytest

from tests.conftest import RunningServer
from tests.server.helpers import payload

from .test_readme import README

ROWS = re.findall(r"^\| (\d{3}) \| ([A-Z_]+) \| (.+) \|$", README, flags=re.M)
TOKEN = "readme-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    gate = tmp_path_factory.mktemp("gate") / "gate"
    s = RunningServer(
        "torch", TRUNKLINE_AUTH_TOKEN=TOKEN, TRUNKLINE_MAX_QUEUE="1", TRUNKLINE_TEST_GATE=str(gate),
        TRUNKLINE_MODEL="mnist-scenes,text-tasks",
    )  # fmt: skip
    s.gate = gate
    s.wait_ready()
    yield s
    s.stop()


def v1(url: str, body: dict | bytes, headers: dict | None = None) -> httpx.Response:
    headers = {**AUTH, **(headers or {})}
    if isinstance(body, bytes):
        return httpx.post(f"{url}/v1/predict", content=body, headers=headers, timeout=60)
    return httpx.post(f"{url}/v1/predict", json=body, headers=headers, timeout=60)


def queue_full(s, one) -> httpx.Response:
    """Hold batches; one request runs (held), one is queued (the queue's one instance); the next."""
    s.gate.touch()
    try:
        threads = [threading.Thread(target=v1, args=(s.url, one)) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(1.0)
        return v1(s.url, one)
    finally:
        s.gate.unlink()
        for t in threads:
            t.join(timeout=60)


def test_every_status_the_readme_lists_is_the_servers(strict, scenes):
    url, one = strict.url, payload(scenes.images[:1], task="count")
    cases = {
        "400": lambda: v1(url, b"{not json", {"content-type": "application/json"}),
        "401": lambda: httpx.post(f"{url}/v1/predict", json=one, timeout=60),
        "403": lambda: httpx.post(f"{url}/v2/repository/models/mnist-scenes/load", headers=AUTH, timeout=60),
        "404": lambda: httpx.post(f"{url}/v2/models/nope/infer", content=b"{}", headers=AUTH, timeout=60),
        "413": lambda: v1(url, payload([scenes.images[0]] * 257, task="count")),
        "415": lambda: v1(
            url, gzip.compress(b"{}"), {"content-type": "application/json", "content-encoding": "br"}
        ),
        "422": lambda: v1(url, payload(scenes.images[:1], task="colour")),
        "429": lambda: queue_full(strict, one),
        "503": lambda: v1(url, {**one, "timeout_ms": 0.001}),
    }
    listed = [status for status, _, _ in ROWS]
    assert listed == sorted(cases), listed  # the table and this test name the same statuses
    for status, _, when in ROWS:
        r = cases[status]()
        assert str(r.status_code) == status, (status, when, r.text)
        assert "error" in r.json(), r.text
        if status in ("429", "503"):
            assert r.headers["Retry-After"], r.headers


def test_the_grpc_codes_the_readme_lists_are_the_servers():
    from server.api_grpc import CODES

    served = {c.name for c in CODES.values()}
    for status, grpc_code, _ in ROWS:
        assert grpc_code in served, (status, grpc_code)
