"""Soak and memory growth against a running Trunkline server (tests/reliability, docs/reliability.md).

    python -m bench.soak chaos --minutes 60     # start a server, run the chaos clients, report
    python -m bench.soak memory --requests 100000 --backend onnxruntime

`chaos`: valid, short-deadline, killed-mid-request, malformed and burst clients at once. Valid
requests must all succeed; p99 of the valid ones in the first and the last tenth of the run
(ten minutes of an hour) may drift by < 10%; RSS is sampled throughout; at the end every gauge
is back at 0. `memory`: mixed requests; RSS growth over the second half < 5% or < 32 MiB.
Both print one JSON object and write it to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import psutil

from bench.common import percentile
from bench.http_load import png, start_server

TASKS = ["count", "presence", "sum", "segment"]
BUDGETS = ["min", "low", "medium", "high", "max", 0.3]


def _images(n: int = 64) -> np.ndarray:
    from models.image.data import make_scenes

    return make_scenes(n, "test", seed=7).images


@dataclass
class Requests:
    """The request mix: each a (method, path, body bytes, headers) tuple."""

    images: np.ndarray
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def valid(self) -> tuple:
        im = self.images[self.rng.randrange(len(self.images))]
        task = self.rng.choice(TASKS)
        budget = self.rng.choice(BUDGETS)
        kind = self.rng.randrange(4)
        if kind == 0:  # /v1, PNG
            body = {"task": task, "budget": budget, "inputs": [{"image": png(im)}]}
            return "/v1/predict", json.dumps(body).encode(), {}
        if kind == 1:  # /v1, several tasks, pixel lists
            tasks = self.rng.sample(TASKS, 2)
            body = {"tasks": tasks, "budget": budget, "inputs": [{"image": im.tolist()}]}
            return "/v1/predict", json.dumps(body).encode(), {}
        if kind == 2:  # v2 JSON
            body = {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, 56, 56],
                        "data": im.reshape(-1).tolist(),
                    }
                ],
                "parameters": {"task": task, "budget": budget},
            }
            return "/v2/models/mnist-scenes/infer", json.dumps(body).encode(), {}
        header = json.dumps(  # v2 binary tensor extension
            {
                "inputs": [
                    {
                        "name": "image",
                        "datatype": "UINT8",
                        "shape": [1, 56, 56],
                        "parameters": {"binary_data_size": 3136},
                    }
                ],
                "parameters": {"task": task, "budget": budget},
            }
        ).encode()
        return (
            "/v2/models/mnist-scenes/infer",
            header + im.astype(np.uint8).tobytes(),
            {"Inference-Header-Content-Length": str(len(header))},
        )

    def malformed(self) -> tuple:
        cases = [
            b"{",
            b'{"task": "count", "inputs": []}',
            b'{"task": "colour", "inputs": [{"image": "AAAA"}]}',
            b'{"task": "count", "budget": true, "inputs": [{"image": [[1]]}]}',
            b'{"task": "count", "inputs": [{"image": "not base64!"}]}',
            json.dumps({"task": "count", "inputs": [{"image": [[0] * 56] * 55}]}).encode(),
            b"[" * 5000 + b"]" * 5000,
        ]
        return "/v1/predict", self.rng.choice(cases), {}


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def gauges(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out = {}
    for name in ("trunkline_in_flight_requests", "trunkline_queue_depth"):
        out[name] = sum(float(m) for m in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))
    return out


def _post(client: httpx.Client, url: str, req: tuple, **kw) -> tuple[int | str, float]:
    path, body, headers = req
    t = time.monotonic()
    try:
        status: int | str = client.post(
            f"{url}{path}", content=body, headers={"Content-Type": "application/json", **headers}, **kw
        ).status_code
    except httpx.TimeoutException:
        status = "timeout"
    except httpx.TransportError as e:
        status = type(e).__name__
    return status, time.monotonic() - t


# -- memory growth ----------------------------------------------------------------------
async def _blast(url: str, reqs: list[tuple], concurrency: int) -> dict[str, int]:
    """Send `reqs` with `concurrency` connections (aiohttp: a tenth of httpx's CPU per request,
    which shares these cores with the server); statuses counted."""
    statuses: dict[str, int] = {}
    queue = iter(reqs)
    async with aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker() -> None:
            for path, body, headers in queue:
                async with session.post(
                    path, data=body, headers={"Content-Type": "application/json", **headers}
                ) as r:
                    await r.read()
                    statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def memory_growth(url: str, pid: int, requests: int, concurrency: int = 8, images=None) -> dict:
    """`requests` mixed requests (a tenth malformed); RSS after warm-up (a tenth, at most
    1,000), at the half and at the end; the check: growth over the second half < 5% or < 32 MiB."""
    mix = Requests(images if images is not None else _images())
    reqs = [mix.malformed() if i % 10 == 9 else mix.valid() for i in range(requests)]
    statuses: dict[str, int] = {}
    samples = []
    warm = min(1000, requests // 10)
    half = (requests + warm) // 2
    started = time.monotonic()
    for part in (reqs[:warm], reqs[warm:half], reqs[half:]):
        for k, v in asyncio.run(_blast(url, part, concurrency)).items():
            statuses[k] = statuses.get(k, 0) + v
        samples.append(rss_mib(pid))
    growth = samples[2] - samples[1]
    return {
        "requests": requests,
        "seconds": round(time.monotonic() - started, 1),
        "statuses": dict(sorted(statuses.items())),
        "rss_mib": {
            "after_warmup": round(samples[0], 1),
            "half": round(samples[1], 1),
            "end": round(samples[2], 1),
        },
        "second_half_growth_mib": round(growth, 1),
        "second_half_growth_pct": round(100 * growth / samples[1], 2),
        "passed": growth < 32 or growth / samples[1] < 0.05,
    }


# -- chaos ------------------------------------------------------------------------------
def chaos(url: str, pid: int, seconds: float, log: Callable[[str], None] = print) -> dict:
    """Every kind of client at once for `seconds`; what each got, p99 drift and RSS."""
    stop = threading.Event()
    started = time.monotonic()
    valid: list[tuple[float, int | str, float]] = []  # (at, status, latency)
    others: dict[str, dict[str, int]] = {}
    rss: list[tuple[float, float]] = []
    images = _images()

    def count(kind: str, status) -> None:
        d = others.setdefault(kind, {})
        d[str(status)] = d.get(str(status), 0) + 1

    def valid_client(seed: int) -> None:
        mix = Requests(images, random.Random(seed))
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                status, took = _post(c, url, mix.valid())
                valid.append((time.monotonic() - started, status, took))

    def deadline_client() -> None:
        mix = Requests(images, random.Random(11))
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                path, body, headers = mix.valid()
                if path == "/v1/predict":
                    req = json.loads(body) | {"timeout_ms": random.choice([1, 5, 20]), "min_budget": "min"}
                    body = json.dumps(req).encode()
                count("short deadline", _post(c, url, (path, body, headers))[0])

    def killed_client() -> None:
        mix = Requests(images, random.Random(12))
        while not stop.is_set():
            with httpx.Client(timeout=httpx.Timeout(10, read=random.choice([0.001, 0.003, 0.01]))) as c:
                count("killed mid-request", _post(c, url, mix.valid())[0])

    def malformed_client() -> None:
        mix = Requests(images, random.Random(13))
        with httpx.Client(timeout=60) as c:
            while not stop.is_set():
                count("malformed", _post(c, url, mix.malformed())[0])

    def burst_client() -> None:
        mix = Requests(images, random.Random(14))
        while not stop.is_set():
            reqs = [mix.valid() for _ in range(64)]
            with (
                httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64)) as c,
                ThreadPoolExecutor(32) as p,
            ):
                for status, _ in p.map(lambda r: _post(c, url, r), reqs):
                    count("burst", status)
            stop.wait(2.0)

    def watch() -> None:
        while not stop.is_set():
            rss.append((time.monotonic() - started, rss_mib(pid)))
            if len(rss) % 30 == 0:
                log(
                    f"[soak] {rss[-1][0] / 60:.1f} min: {len(valid)} valid requests, RSS {rss[-1][1]:.0f} MiB"
                )
            stop.wait(2.0)

    clients = [lambda s=s: valid_client(s) for s in range(4)]
    clients += [deadline_client, killed_client, malformed_client, burst_client, watch]
    with ThreadPoolExecutor(len(clients)) as pool:
        futures = [pool.submit(c) for c in clients]
        stop.wait(seconds)
        stop.set()
        for f in futures:
            f.result()
    time.sleep(2.0)  # let the killed requests' batches finish
    tenth = seconds / 10
    first = [t for at, s, t in valid if at < tenth and s == 200]
    last = [t for at, s, t in valid if at >= seconds - tenth and s == 200]
    p99_first, p99_last = percentile(first, 99) * 1000, percentile(last, 99) * 1000
    failed = Counter(str(s) for _, s, _ in valid if s != 200)
    end_gauges = gauges(url)
    return {
        "seconds": round(seconds),
        "valid_requests": len(valid),
        "valid_failures": dict(failed),
        "others": others,
        "p99_ms_first_tenth": round(p99_first, 2),
        "p99_ms_last_tenth": round(p99_last, 2),
        "p99_drift": round(p99_last / p99_first - 1, 3),
        "rss_mib_start": round(rss[0][1], 1),
        "rss_mib_end": round(rss[-1][1], 1),
        "gauges_at_end": end_gauges,
        "live": httpx.get(f"{url}/v2/health/live", timeout=10).status_code == 200,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("what", choices=["chaos", "memory"])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--port", type=int, default=8490)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    proc = start_server(args.backend, args.port, args.threads)
    url = f"http://127.0.0.1:{args.port}"
    try:
        if args.what == "chaos":
            result = chaos(url, proc.pid, args.minutes * 60)
            result["passed"] = not result["valid_failures"] and result["p99_drift"] < 0.10
        else:
            result = memory_growth(url, proc.pid, args.requests)
        result |= {"backend": args.backend, "pid_same": proc.poll() is None}
    finally:
        proc.terminate()
        result_rc = proc.wait(timeout=60)
    result["exit_status"] = result_rc
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
