"""Readiness waits for calibration; SIGTERM drains in-flight requests and refuses new ones."""

import signal
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.conftest import RunningServer

from .helpers import payload


def in_flight(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("trunkline_in_flight_requests{"):
            return float(line.split()[-1])
    return 0.0


def test_ready_after_calibration_and_graceful_drain(scenes):
    s = RunningServer(
        "torch",
        TRUNKLINE_MODEL="mnist-scenes",
        TRUNKLINE_BATCH_BUCKETS="[1,8,64]",
        TRUNKLINE_CALIBRATION_ROUNDS="3",
        TRUNKLINE_LOG_LEVEL="info",
    )
    try:
        saw_not_ready = False
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                live = httpx.get(f"{s.url}/v2/health/live", timeout=2)
                ready = httpx.get(f"{s.url}/v2/health/ready", timeout=2)
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            assert live.status_code == 200
            if ready.status_code == 503:
                saw_not_ready = True
                r = httpx.post(f"{s.url}/v1/predict", json=payload(scenes.images[:1], "count"))
                if r.status_code != 200:  # 200 only if calibration ended in between
                    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
            elif ready.status_code == 200:
                break
            time.sleep(0.05)
        assert saw_not_ready, "readiness never reported calibration in progress"

        body = payload(scenes.images[:16], tasks=["count", "presence", "sum", "segment"])
        with ThreadPoolExecutor(8) as pool:
            futures = [
                pool.submit(httpx.post, f"{s.url}/v1/predict", json=body, timeout=120) for _ in range(8)
            ]
            while in_flight(s.url) < 8:  # every request is accepted and being served
                time.sleep(0.01)
            s.proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert [r.status_code for r in results] == [200] * 8
        assert s.proc.wait(timeout=60) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
        try:
            httpx.get(f"{s.url}/v2/health/live", timeout=2)
            raise AssertionError("server still accepting connections after drain")
        except httpx.ConnectError:
            pass
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
