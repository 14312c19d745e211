"""SIGTERM with requests in flight and ten client loops (`deploy/drain_check.py`, the drill the
container smoke test runs against the image too): every accepted request answered, readiness
gone at once, new requests refused within a second, exit status 0 within the drain timeout
+ 10 s, and no process left behind."""

from __future__ import annotations

import signal

import psutil

from deploy.drain_check import Target, drill, failures

from .conftest import Watched

DRAIN_S = 20


def test_sigterm_drains_in_flight_requests_and_exits_0(tmp_path, known_input, figure):
    server = Watched(tmp_path, TRUNKLINE_DRAIN_TIMEOUT_S=str(DRAIN_S)).start(known_input)
    children = server.process.children(recursive=True)
    target = Target(
        server.url,
        hold=server.hold,
        release=server.release,
        terminate=lambda: server.proc.send_signal(signal.SIGTERM),
        wait=lambda timeout: server.proc.wait(timeout=timeout),
    )
    try:
        result = drill(target, DRAIN_S)
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
    assert failures(result) == []
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    figure("in-flight answered", f"{result['answered'].count(200)}/{result['in_flight']}")
    figure("ready right after SIGTERM", result["ready_after_sigterm"])
    figure("exit status, seconds after SIGTERM", [result["exit_status"], result["exit_s"]])
    figure("loop requests after SIGTERM + 1 s", result["loop_outcomes_after_1s"])
