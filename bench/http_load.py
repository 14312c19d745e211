"""End-to-end load over HTTP (issue 3): p50/p99 and throughput per budget tier, from a
separate load-generator process, plus the same routes called in-process for reference.

    python -m bench.http_load [--backend torch] [--duration 10] [--concurrency 32]

Reports: batch-1 p50 per tier and the ratio low/max; saturated mixed-task throughput per
tier; and throughput over HTTP vs the same routes in-process at the batch sizes the server
formed (goal >= 0.7).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time

import aiohttp
import httpx
import numpy as np
import orjson
import uvloop
from PIL import Image

from bench.common import percentile

TASKS = ["count", "presence", "sum", "segment"]
TIERS = ["low", "medium", "high", "max"]


def png(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def bodies(images: np.ndarray, tier: str) -> list[tuple[str, bytes]]:
    """Pre-serialised one-image request bodies cycling through tasks (mixed-task traffic)."""
    out = []
    for i, image in enumerate(images):
        body = {
            "task": TASKS[i % len(TASKS)],
            "budget": tier,
            "inputs": [{"image": png(image)}],
            "mask_format": "png",
        }
        out.append((tier, orjson.dumps(body)))
    return out


async def _drive(
    url: str,
    payloads: list[tuple[str, bytes]],
    concurrency: int,
    duration: float,
    limit: int,
    path: str = "/v1/predict",
    rate: float | None = None,
    headers: dict[str, str] | None = None,
) -> list:
    """Closed loop (`concurrency` clients back to back) or, with `rate`, open loop: requests
    start on a fixed schedule of `rate` per second whatever the answers, up to `limit`.

    aiohttp, not httpx: at saturation httpx spent ~11 ms of CPU per request on these two
    cores (more than the server), aiohttp ~0.5 ms, so the load generator no longer caps the
    throughput it measures."""
    results, stop = [], time.monotonic() + duration
    headers = headers or {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(url, connector=connector, timeout=timeout) as session:

        async def one(i: int) -> None:
            tag, body = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                async with session.post(path, data=body, headers=headers) as r:
                    status, raw = r.status, await r.read()
                    retry = "Retry-After" in r.headers
                v1 = status == 200 and path == "/v1/predict"  # (v2 bodies may be binary)
                receipt = orjson.loads(raw).get("route", {}) if v1 else {}
                batch, fraction = receipt.get("batch_size", 0), receipt.get("flops_fraction")
            except (aiohttp.ClientError, TimeoutError):
                status, batch, fraction, retry = 0, 0, None, False
            ms = (time.perf_counter() - start) * 1000
            results.append((ms, status, batch, time.monotonic(), tag, fraction, retry))

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < stop and len(results) < limit:
                await one(i)
                i += concurrency

        t0 = time.monotonic()
        if rate is None:
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
        else:
            pending = []
            for i in range(min(limit, int(rate * duration))):
                await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
                pending.append(asyncio.create_task(one(i)))
            await asyncio.gather(*pending)
        return [(ms, st, b, t - t0, tag, f, t, retry) for ms, st, b, t, tag, f, retry in results]


def _load_process(url, payloads, concurrency, duration, limit, path, rate, headers, queue) -> None:
    # uvloop: the load generator shares these cores with the server it measures; the default
    # loop cost it ~1.5 ms of CPU per request at 470 req/s, a core of its own
    uvloop.install()
    queue.put(asyncio.run(_drive(url, payloads, concurrency, duration, limit, path, rate, headers)))


def load(
    url: str,
    payloads: list[tuple[str, bytes]],
    concurrency: int,
    duration: float,
    limit: int = 100_000,
    path: str = "/v1/predict",
    rate: float | None = None,
    headers: dict[str, str] | None = None,
) -> list:
    """Run the load generator in its own process; per request (latency_ms, status, batch size,
    seconds since start, tag, FLOPs fraction of the receipt or None, time.monotonic() at the
    answer: the same clock in every process of this machine, whether it had Retry-After).

    Closed loop with `concurrency` clients, or open loop at `rate` requests/s (then
    `concurrency` only caps the connections)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(
        target=_load_process, args=(url, payloads, concurrency, duration, limit, path, rate, headers, queue)
    )
    proc.start()
    results = queue.get(timeout=duration + 180)
    proc.join()
    return results


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 900) -> None:
    """Poll `url` until it answers 200; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f} s")


def start_server(backend: str, port: int, threads: int, **settings: str) -> subprocess.Popen:
    """`trunkline serve` in its own process, ready; extra `settings` become TRUNKLINE_* vars.
    It serves mnist-scenes unless `settings` name the models (`model`, `model_repository`)."""
    if "model" not in settings and "model_repository" not in settings:
        settings["model"] = "mnist-scenes"
    env = {
        **os.environ,
        "TRUNKLINE_BACKEND": backend,
        "TRUNKLINE_PORT": str(port),
        "TRUNKLINE_GRPC_PORT": "0",  # settings={"grpc_port": ...} for the gRPC benchmark
        "TRUNKLINE_THREADS": str(threads),
        "TRUNKLINE_LOG_LEVEL": "warning",
        **{f"TRUNKLINE_{k.upper()}": v for k, v in settings.items()},
    }
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env)
    wait_ready(proc, f"http://127.0.0.1:{port}/v2/health/ready")
    return proc


def in_process_throughput(
    backend_name: str, threads: int, tier: str, batch: int, images: np.ndarray
) -> float:
    """Instances/s of the same routes called in-process on mixed-task batches of `batch`."""
    from models.adapter import load_adapter
    from routing import Budget, RouteTables
    from server.backends import build_backend
    from server.batcher import WorkItem, run_batch
    from server.settings import Settings

    settings = Settings(backend=backend_name, threads=threads)
    adapter = load_adapter("mnist-scenes")
    rt = RouteTables(adapter, adapter.route_rows)
    plans = [rt.resolve([t], Budget.parse(tier)) for t in TASKS]
    routes = {e.task: [e.route] for p in plans for e in p.entries}
    backend = build_backend(backend_name, adapter, settings, routes)
    by_width: dict[float, list] = {}
    for i in range(batch):
        plan = plans[i % len(plans)]
        item = WorkItem(adapter.decode_instance(images[i].tolist(), "image"), plan)
        by_width.setdefault(plan.trunk, []).append(item)
    run = lambda: [run_batch(backend, adapter.batches, w, items) for w, items in by_width.items()]
    run()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def summarise(results: list, warmup_s: float = 1.0) -> dict:
    ok = [r for r in results if r[1] == 200 and r[3] >= warmup_s]
    span = max(r[3] for r in ok) - warmup_s if ok else float("nan")
    lat = [r[0] for r in ok]
    return {
        "requests": len(ok),
        "errors": sum(r[1] != 200 for r in results),
        "throughput_rps": len(ok) / span if span else float("nan"),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "mean_batch": statistics.mean(r[2] for r in ok) if ok else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per saturated run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--batch1-requests", type=int, default=60, help="sequential requests per tier")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--json", help="also write the raw numbers here")
    args = parser.parse_args()

    from models.image.data import make_scenes

    images = make_scenes(256, "test", seed=4242).images
    url = f"http://127.0.0.1:{args.port}"
    server = start_server(args.backend, args.port, args.threads)
    report: dict = {"backend": args.backend, "threads": args.threads, "concurrency": args.concurrency}
    try:
        # batch-1 latency: one request at a time, tiers interleaved request by request
        per_tier = {t: bodies(images, t) for t in TIERS}
        n = args.batch1_requests
        mixed = [per_tier[TIERS[i % 4]][i // 4] for i in range(4 * n)]
        res = load(url, mixed, 1, 600, limit=4 * n)
        report["batch1_p50_ms"] = {
            t: statistics.median(r[0] for r in res if r[4] == t and r[1] == 200) for t in TIERS
        }
        report["batch1_low_vs_max"] = report["batch1_p50_ms"]["low"] / report["batch1_p50_ms"]["max"]
        # saturated mixed-task load per tier
        report["saturated"] = {}
        for tier in TIERS:
            stats = summarise(load(url, per_tier[tier], args.concurrency, args.duration))
            stats["in_process_rps"] = in_process_throughput(
                args.backend, args.threads, tier, max(1, round(stats["mean_batch"])), images
            )
            stats["http_vs_in_process"] = stats["throughput_rps"] / stats["in_process_rps"]
            report["saturated"][tier] = stats
    finally:
        server.terminate()
        server.wait(timeout=60)

    print(
        f"backend={args.backend} threads={args.threads} concurrency={args.concurrency} "
        f"(load generator in its own process)"
    )
    print("batch-1 p50 ms: " + "  ".join(f"{t}={v:.2f}" for t, v in report["batch1_p50_ms"].items()))
    print(f"batch-1 p50 ratio low/max: {report['batch1_low_vs_max']:.3f}  (goal <= 0.5)")
    print("tier     req/s    p50 ms   p99 ms  mean batch  in-process req/s  http/in-process")
    for tier, s in report["saturated"].items():
        print(
            f"{tier:7} {s['throughput_rps']:7.1f} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} "
            f"{s['mean_batch']:10.1f} {s['in_process_rps']:17.1f} {s['http_vs_in_process']:15.2f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
