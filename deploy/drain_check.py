"""The SIGTERM drill: a server with requests in flight and ten client loops gets SIGTERM.

Every request it accepted must be answered, readiness must turn 503 at once, new requests must
be refused within a second, and the process must exit 0 within the drain timeout + 10 s. The
server runs with `TRUNKLINE_TEST_GATE` (a file: while it exists, batches wait), so the held
requests are in flight for certain when the signal arrives.

Used by tests/reliability/test_shutdown.py (a server subprocess) and by container_smoke.sh
(the image, under podman):

    python deploy/drain_check.py http://127.0.0.1:18080 CONTAINER --gate /tmp/gate -- podman [options]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from models.image.data import make_scenes

IN_FLIGHT = 6
LOOPS = 10


@dataclass
class Target:
    """A server under the drill and how to act on it."""

    url: str
    hold: Callable[[], None]  # close the gate: batches wait
    release: Callable[[], None]  # open it
    terminate: Callable[[], None]  # send SIGTERM
    wait: Callable[[float], int]  # the exit status, waiting at most that many seconds


def body() -> dict:
    image = make_scenes(1, "test", seed=7).images[0]
    return {"task": "count", "budget": "max", "inputs": [{"image": image.tolist()}]}


def in_flight(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    lines = [line for line in text.splitlines() if line.startswith("trunkline_in_flight_requests")]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def drill(target: Target, drain_s: float, held_n: int = IN_FLIGHT, loops: int = LOOPS) -> dict:
    """Run the drill; the measured figures (see `failures` for what they must be)."""
    url = f"{target.url}/v1/predict"
    request = body()
    stop_loops = threading.Event()
    loop_log: list[tuple[float, str]] = []  # (sent at, outcome) of every loop request

    def client_loop() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop_loops.is_set():
                sent = time.monotonic()
                try:
                    outcome = str(client.post(url, json=request).status_code)
                except httpx.TransportError as e:
                    outcome = type(e).__name__
                loop_log.append((sent, outcome))
                time.sleep(0.05 if outcome == "200" else 0.1)

    try:
        with ThreadPoolExecutor(held_n + loops) as pool:
            running = [pool.submit(client_loop) for _ in range(loops)]
            time.sleep(0.5)
            target.hold()  # from here requests wait at the gate: in flight
            held = [pool.submit(httpx.post, url, json=request, timeout=60) for _ in range(held_n)]
            deadline = time.monotonic() + 10
            # the loops' next requests wait at the gate too: every one of them and every held
            # request in flight (the held ones alone could lag behind the loops' and meet SIGTERM)
            while in_flight(target.url) < held_n + loops:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the {held_n} held requests never were in flight")
                time.sleep(0.02)
            sigterm_at = time.monotonic()
            target.terminate()
            try:
                ready: int | str = httpx.get(f"{target.url}/v2/health/ready", timeout=5).status_code
            except httpx.TransportError:
                ready = "refused"
            time.sleep(0.5)
            target.release()
            answered = []
            for f in held:
                try:
                    answered.append(f.result().status_code)
                except httpx.TransportError as e:
                    answered.append(type(e).__name__)
            status = target.wait(drain_s + 10)
            exit_s = time.monotonic() - sigterm_at
            time.sleep(1.0)
            stop_loops.set()
            for f in running:
                f.result()
    finally:
        stop_loops.set()
        target.release()
    before = sorted({o for sent, o in loop_log if sent < sigterm_at})
    late = sorted({o for sent, o in loop_log if sent > sigterm_at + 1.0})
    return {
        "in_flight": held_n,
        "answered": answered,
        "ready_after_sigterm": ready,
        "exit_status": status,
        "exit_s": round(exit_s, 2),
        "drain_timeout_s": drain_s,
        "loop_outcomes_before": before,
        "loop_outcomes_after_1s": late,
    }


def failures(result: dict) -> list[str]:
    """What the drill's figures break, if anything."""
    bad = []
    if result["answered"] != [200] * result["in_flight"]:
        bad.append(f"in-flight requests answered {result['answered']}")
    if result["ready_after_sigterm"] not in (503, "refused"):
        bad.append(f"readiness right after SIGTERM was {result['ready_after_sigterm']}")
    if result["exit_status"] != 0 or result["exit_s"] >= result["drain_timeout_s"] + 10:
        bad.append(f"exit status {result['exit_status']} after {result['exit_s']} s")
    if result["loop_outcomes_before"] != ["200"]:
        bad.append(f"loop requests before SIGTERM: {result['loop_outcomes_before']}")
    late = result["loop_outcomes_after_1s"]
    if not late or "200" in late:
        bad.append(f"loop requests 1 s after SIGTERM: {late} (expected refusals)")
    return bad


def container(url: str, name: str, gate: str, podman: list[str]) -> Target:
    def run(*args: str) -> str:
        return subprocess.run([*podman, *args], check=True, capture_output=True, text=True).stdout

    def wait(timeout: float) -> int:
        out = subprocess.run([*podman, "wait", name], capture_output=True, text=True, timeout=timeout)
        return int(out.stdout.strip())

    return Target(
        url,
        hold=lambda: run("exec", name, "touch", gate),
        release=lambda: subprocess.run([*podman, "exec", name, "rm", "-f", gate], capture_output=True),
        terminate=lambda: run("kill", "--signal", "TERM", name),
        wait=wait,
    )


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python deploy/drain_check.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url")
    parser.add_argument("container")
    parser.add_argument("--gate", default="/tmp/trunkline-gate", help="TRUNKLINE_TEST_GATE in the container")
    parser.add_argument(
        "--drain-s", type=float, default=20, help="TRUNKLINE_DRAIN_TIMEOUT_S in the container"
    )
    args = parser.parse_args(argv[:split])
    podman = argv[split + 1 :] or ["podman"]
    result = drill(container(args.url, args.container, args.gate, podman), args.drain_s)
    print(json.dumps(result))
    bad = failures(result)
    for line in bad:
        print(f"FAIL: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
