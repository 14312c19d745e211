"""gRPC vs HTTP v2 binary on one server: batch-1 overhead and saturated throughput.

One `trunkline serve` with both fronts (mnist-scenes, the default backend). Batch 1: sequential
requests, one kept-alive connection per protocol (`http.client`; a gRPC channel calling with
pre-serialised bytes), low and max tiers, protocols interleaved request by request, and the
same route timed in-process; overhead = e2e p50 - in-process p50. The server's own timers come
back as `Server-Timing` (HTTP) and `server-timing` trailing metadata (gRPC). Saturation:
closed loop, 16 clients, each protocol in its own load-generator process (aiohttp on uvloop;
grpc.aio), rounds alternating.
"""

from __future__ import annotations

import asyncio
import http.client
import multiprocessing as mp
import statistics
import time

import grpc
import numpy as np
import orjson
from tritonclient.grpc import service_pb2

from bench.http_load import load, start_server, summarise
from bench.model_level import goal
from bench.overhead import in_process_ms, server_timing
from bench.scale import Scale

TASK = "count"
TIERS = ["low", "max"]
INFER = "/inference.GRPCInferenceService/ModelInfer"
CLIENTS = 16


def http_body(image: np.ndarray, tier: str) -> tuple[bytes, dict[str, str]]:
    raw = image.astype(np.uint8).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, *image.shape],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"task": TASK, "budget": tier, "binary_data_output": True},
        }
    )
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    return header + raw, headers


def grpc_body(image: np.ndarray, tier: str) -> bytes:
    request = service_pb2.ModelInferRequest(model_name="mnist-scenes")
    request.inputs.add(name="image", datatype="UINT8", shape=[1, *image.shape])
    request.raw_input_contents.append(image.astype(np.uint8).tobytes())
    request.parameters["task"].string_param = TASK
    request.parameters["budget"].string_param = tier
    return request.SerializeToString()


def batch_one(port: int, grpc_port: int, images: np.ndarray, scale: Scale, threads: int) -> list[dict]:
    n = max(20, scale.http_requests * 10)
    conn = http.client.HTTPConnection("127.0.0.1", port)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    infer = channel.unary_unary(INFER)
    e2e = {(p, t): [] for p in ("http", "grpc") for t in TIERS}
    stages: dict[tuple[str, str], dict[str, list[float]]] = {k: {} for k in e2e}
    compute: dict[str, list[float]] = {t: [] for t in TIERS}
    for r in range(scale.load_rounds * 2):
        for tier in TIERS:
            compute[tier] += in_process_ms(TASK, tier, images[:1], threads, n)
        for i in range(n):
            image = images[(r * n + i) % len(images)]
            for tier in TIERS:
                body, headers = http_body(image, tier)
                t = time.perf_counter()
                conn.request("POST", "/v2/models/mnist-scenes/infer", body, headers)
                response = conn.getresponse()
                response.read()
                http_ms = (time.perf_counter() - t) * 1000
                assert response.status == 200, response.status
                http_timing = server_timing(response.getheader("Server-Timing"))
                message = grpc_body(image, tier)
                t = time.perf_counter()
                _, call = infer.with_call(message, timeout=60)
                grpc_ms = (time.perf_counter() - t) * 1000
                grpc_timing = server_timing(dict(call.trailing_metadata()).get("server-timing"))
                if i < 3:  # the first few after the in-process runs warm the server again
                    continue
                for proto, ms, timing in (("http", http_ms, http_timing), ("grpc", grpc_ms, grpc_timing)):
                    e2e[(proto, tier)].append(ms)
                    for k, v in timing.items():
                        stages[(proto, tier)].setdefault(k, []).append(v)
                    if "total" in timing:
                        stages[(proto, tier)].setdefault("send", []).append(ms - timing["total"])
    conn.close()
    channel.close()
    med = statistics.median
    rows = []
    for (proto, tier), times in e2e.items():
        bare = med(compute[tier])
        row = {
            "protocol": proto,
            "tier": tier,
            "e2e_p50_ms": round(med(times), 3),
            "in_process_ms": round(bare, 3),
        }
        row["overhead_ms"] = round(med(times) - bare, 3)
        row |= {k: round(med(v), 3) for k, v in stages[(proto, tier)].items()}
        rows.append(row)
    return rows


async def _grpc_drive(address: str, messages: list[bytes], concurrency: int, duration: float) -> list:
    import grpc.aio

    results, stop = [], time.monotonic() + duration
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(INFER)
        t0 = time.monotonic()

        async def worker(w: int) -> None:
            i = w
            while time.monotonic() < stop:
                start = time.perf_counter()
                try:
                    await infer(messages[i % len(messages)], timeout=60)
                    status = 200
                except grpc.aio.AioRpcError:
                    status = 0
                results.append(((time.perf_counter() - start) * 1000, status, 0, time.monotonic() - t0))
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return results


def _grpc_process(address, messages, concurrency, duration, queue) -> None:
    queue.put(asyncio.run(_grpc_drive(address, messages, concurrency, duration)))


def grpc_load(address: str, messages: list[bytes], concurrency: int, duration: float) -> list:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_grpc_process, args=(address, messages, concurrency, duration, queue))
    proc.start()
    results = queue.get(timeout=duration + 180)
    proc.join()
    return results


def saturation(port: int, grpc_port: int, images: np.ndarray, scale: Scale) -> list[dict]:
    tier = "low"
    body, headers = http_body(images[0], tier)  # one header length: every image has one shape
    payloads = [(tier, http_body(im, tier)[0]) for im in images]
    messages = [grpc_body(im, tier) for im in images]
    runs: dict[str, list[dict]] = {"http": [], "grpc": []}
    for _ in range(scale.load_rounds):
        results = load(
            f"http://127.0.0.1:{port}", payloads, CLIENTS, scale.duration_s,
            path="/v2/models/mnist-scenes/infer", headers=headers,
        )  # fmt: skip
        runs["http"].append(summarise(results))
        runs["grpc"].append(
            summarise(grpc_load(f"127.0.0.1:{grpc_port}", messages, CLIENTS, scale.duration_s))
        )
    best = {p: max(runs[p], key=lambda r: r["throughput_rps"]) for p in runs}
    return [
        {"protocol": p, "clients": CLIENTS, "tier": tier} | {k: round(v, 2) for k, v in r.items()}
        for p, r in best.items()
    ]


def grpc_vs_http(images: np.ndarray, scale: Scale, threads: int, port: int) -> dict:
    from server.settings import Settings

    grpc_port = port + 1
    extra = {"batch_buckets": "[1,8]", "calibration_rounds": "1"} if scale.name == "tiny" else {}
    proc = start_server(Settings().backend, port, threads, grpc_port=str(grpc_port), **extra)
    try:
        rows = batch_one(port, grpc_port, images, scale, threads)
        saturated = saturation(port, grpc_port, images, scale)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    med = statistics.median
    over = {p: med(r["overhead_ms"] for r in rows if r["protocol"] == p) for p in ("http", "grpc")}
    rps = {r["protocol"]: r["throughput_rps"] for r in saturated}
    return {
        "task": TASK,
        "overhead_ms_http": round(over["http"], 3),
        "overhead_ms_grpc": round(over["grpc"], 3),
        "saturated_grpc_over_http": round(rps["grpc"] / rps["http"], 3),
        "rows": rows,
        "saturated": saturated,
        "goals": [
            goal(
                "batch-1 overhead, gRPC / HTTP v2 binary (median of tiers)", over["grpc"] / over["http"], 1.0
            )
        ],
    }
