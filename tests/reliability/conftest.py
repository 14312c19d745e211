"""The reliability suite: each case runs the real server as a subprocess, watches it with
psutil (same PID, resident memory), and ends with a liveness check, one known-answer
inference and every gauge back at 0.

Queue, deadline and shutdown cases hold batches at a gate (`TRUNKLINE_TEST_GATE`, a file:
while it exists, batches wait) instead of relying on timing."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.conftest import RunningServer
from tests.server.helpers import payload


class Watched(RunningServer):
    """A server subprocess with its gate, its process and the answer it gave when fresh."""

    def __init__(self, tmp: Path, backend: str = "torch", **env: str) -> None:
        self.gate, self.log = tmp / "gate", tmp / "server.log"
        env = {"TRUNKLINE_MODEL": "mnist-scenes", "TRUNKLINE_TEST_GATE": str(self.gate), **env}
        super().__init__(backend, log=str(self.log), **env)
        self.process = psutil.Process(self.proc.pid)
        self.known: tuple[dict, dict] | None = None

    def start(self, known_input: dict) -> Watched:
        self.wait_ready()
        self.known = (known_input, self.predict(known_input))
        return self

    def predict(self, body: dict) -> dict:
        r = httpx.post(f"{self.url}/v1/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["outputs"]

    def rss_mib(self) -> float:
        return self.process.memory_info().rss / 2**20

    def hold(self) -> None:
        """Close the gate: batches wait before they run."""
        self.gate.touch()

    def release(self) -> None:
        self.gate.unlink(missing_ok=True)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus sample over the series that carry `labels`."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            m = re.match(rf"^{re.escape(name)}(?:{{(.*)}})? (\S+)$", line)
            if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
                total += float(m.group(2))
        return total

    def executed(self) -> float:
        """Instances that ran in the backend (the batch-size histogram's sum)."""
        return self.metric("trunkline_batch_size_sum")

    def gauges_settle(self, timeout: float = 2.0) -> None:
        """In-flight requests and queued instances back at 0 within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            values = {g: self.metric(g) for g in ("trunkline_in_flight_requests", "trunkline_queue_depth")}
            if not any(values.values()):
                return
            assert time.monotonic() < deadline, f"gauges did not return to 0: {values}"
            time.sleep(0.05)

    def check_healthy(self, pid: int) -> None:
        """Same process, live, ready, gauges at 0, and the known answer again."""
        assert self.proc.poll() is None and self.process.pid == pid
        assert httpx.get(f"{self.url}/v2/health/live", timeout=10).status_code == 200
        assert httpx.get(f"{self.url}/v2/health/ready", timeout=10).status_code == 200
        self.gauges_settle()
        body, expected = self.known
        got = self.predict(body)
        for a, b in zip(got, expected):
            for task in a:
                np.testing.assert_allclose(a[task]["scores"], b[task]["scores"], atol=1e-4)


@pytest.fixture
def figure(request):
    """`figure(name, value)`: a measured figure for docs/reliability.md, appended as a JSON line
    to $TRUNKLINE_FIGURES when that is set (`TRUNKLINE_FIGURES=f.jsonl make test`)."""
    path = os.environ.get("TRUNKLINE_FIGURES")

    def record(name: str, value) -> None:
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": request.node.name, "figure": name, "value": value}) + "\n")

    return record


@pytest.fixture(scope="session")
def known_input(scenes) -> dict:
    return payload(scenes.images[:2], tasks=["count", "sum"], budget="max")


@pytest.fixture
def serve(tmp_path, known_input):
    """`serve(**env)`: a started server for this test only, checked healthy and stopped after it."""
    servers = []

    def start(**env: str) -> Watched:
        folder = tmp_path / f"server{len(servers)}"
        folder.mkdir()
        server = Watched(folder, **env).start(known_input)
        servers.append((server, server.proc.pid))
        return server

    yield start
    try:
        for server, pid in servers:
            server.check_healthy(pid)
    finally:
        for server, _ in servers:
            server.stop()


@pytest.fixture
def healthy():
    """Checks the server after the test: `healthy(server)` registers it."""
    watched = []

    def register(server: Watched) -> Watched:
        watched.append((server, server.proc.pid))
        return server

    yield register
    for server, pid in watched:
        server.release()
        server.check_healthy(pid)
