"""The same app under two ASGI servers: uvicorn (httptools, uvloop; what `trunkline serve` runs)
against Granian (Rust HTTP, `--interface asgi --loop uvloop`), batch-1 requests on one
keep-alive connection, low and max alternating, both bundled models in one server.

    pip install granian && python -m bench.asgi_servers [--requests 400]

Granian is not a dependency: this is how the choice of uvicorn was measured (bench/RESULTS.md
section 16's notes and README).
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import time

import orjson

from bench.fast_routes import TEXTS
from bench.http_load import wait_ready
from bench.overhead import request, server_timing


def measure(server: str, port: int, requests: int) -> dict[str, float]:
    env = {
        **os.environ,
        "TRUNKLINE_PORT": str(port),
        "TRUNKLINE_GRPC_PORT": "0",
        "TRUNKLINE_LOG_LEVEL": "warning",
        "TRUNKLINE_MODEL": "mnist-scenes,text-tasks",
    }
    if server == "granian":
        granian = shutil.which("granian") or sys.exit("granian is not installed: pip install granian")
        cmd = [granian, "--interface", "asgi", "--factory", "--port", str(port), "--loop", "uvloop"]
        cmd += ["--log-level", "warning", "--no-ws", "server.app:create_app"]
    else:
        cmd = [sys.executable, "-m", "server.cli", "serve"]
    proc = subprocess.Popen(cmd, env=env)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/v2/health/ready")
        from models.image.data import make_scenes

        images = make_scenes(64, "test", seed=4242).images
        conn = http.client.HTTPConnection("127.0.0.1", port)
        samples: dict[str, list[tuple[float, float]]] = {}

        def post(key: str, path: str, body: bytes, headers: dict) -> None:
            t = time.perf_counter()
            conn.request("POST", path, body, headers)
            r = conn.getresponse()
            r.read()
            assert r.status == 200, (server, path, r.status)
            ms = (time.perf_counter() - t) * 1000
            total = server_timing(r.getheader("Server-Timing")).get("total", 0.0)
            samples.setdefault(key, []).append((ms, ms - total))

        for i in range(requests + 50):
            for tier in ("low", "max"):
                path, body, headers = request("v2 binary", images[i % len(images)], tier)
                post(f"images {tier}", path, body, headers)
                text = {"model": "text-tasks", "task": "sentiment", "budget": tier}
                text["inputs"] = [{"text": TEXTS[i % len(TEXTS)]}]
                post(f"text {tier}", "/v1/predict", orjson.dumps(text), {"Content-Type": "application/json"})
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    out = {}
    for key, values in samples.items():
        values = values[50:]  # warm-up
        out[f"{key} p50 ms"] = round(statistics.median(v[0] for v in values), 2)
        out[f"{key} outside the server's timers ms"] = round(statistics.median(v[1] for v in values), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--port", type=int, default=8395)
    args = parser.parse_args()
    for server in ("uvicorn", "granian"):
        print(server, orjson.dumps(measure(server, args.port, args.requests)).decode(), flush=True)


if __name__ == "__main__":
    main()
