"""Server overhead: what a request costs on top of its route's compute.

Sequential batch-1 requests from a lean client (`http.client`, one kept-alive connection)
in three input forms, the same route timed in-process on the same backend, rounds
interleaved. overhead = end-to-end p50 - in-process compute p50. The server's own timers
(the `Server-Timing` header: read, parse, admit, queue, decode, compute, encode, handoff,
answer) say where the
rest went; `send` is what the client saw beyond the server's total (HTTP both ways).
"""

from __future__ import annotations

import http.client
import statistics
import time
from urllib.parse import urlparse

import numpy as np
import orjson

from bench.http_load import png
from bench.model_level import goal
from bench.scale import Scale

TASK = "count"
TIERS = ["low", "max"]
FORMS = ["v2 binary", "v1 numbers", "v1 png"]
LIMITS = {"v2 binary": 1.0, "v1 numbers": 1.5, "v1 png": 2.0}
STAGES = ["read", "parse", "admit", "queue", "decode", "compute", "encode", "handoff", "answer", "total"]


def request(form: str, image: np.ndarray, tier: str) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of one batch-1 request in the given input form."""
    if form == "v2 binary":
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
        return "/v2/models/mnist-scenes/infer", header + raw, headers
    value = image.astype(int).tolist() if form == "v1 numbers" else png(image)
    body = orjson.dumps({"task": TASK, "budget": tier, "inputs": [{"image": value}]})
    return "/v1/predict", body, {"Content-Type": "application/json"}


def server_timing(header: str | None) -> dict[str, float]:
    """`parse;dur=0.12, decode;dur=0.3` -> {"parse": 0.12, "decode": 0.3}."""
    out = {}
    for part in (header or "").split(","):
        name, _, params = part.strip().partition(";")
        for p in params.split(";"):
            key, _, value = p.strip().partition("=")
            if key == "dur":
                out[name] = float(value)
    return out


def in_process_ms(task: str, tier: str, images: np.ndarray, threads: int, n: int) -> list[float]:
    """The same route run in-process on `images` as one batch (decoded input; trunk + path, as
    the server runs a batch), `n` times back to back."""
    import torch

    from models.adapter import load_adapter
    from routing import Budget, RouteTables
    from server.backends import build_backend
    from server.batcher import WorkItem, run_batch
    from server.settings import Settings

    torch.set_num_threads(threads)
    adapter = load_adapter("mnist-scenes")
    rt = RouteTables(adapter, adapter.route_rows)
    plan = rt.resolve([task], Budget.parse(tier))
    settings = Settings(threads=threads)  # the server's default backend, as the server runs it
    backend = build_backend(settings.backend, adapter, settings, {task: [plan.entries[0].route]})
    decoded = np.concatenate([adapter.decode_instance(im.tolist(), "image") for im in images])
    item = WorkItem(decoded, plan)
    for _ in range(3):
        run_batch(backend, adapter.batches, plan.trunk, [item])
    times = []
    for _ in range(n):
        t = time.perf_counter()
        run_batch(backend, adapter.batches, plan.trunk, [item])
        times.append((time.perf_counter() - t) * 1000)
    return times


def overhead(url: str, images: np.ndarray, scale: Scale, threads: int) -> dict:
    n = max(20, scale.http_requests * 10)
    host = urlparse(url)
    conn = http.client.HTTPConnection(host.hostname, host.port)
    e2e: dict[tuple[str, str], list[float]] = {(f, t): [] for f in FORMS for t in TIERS}
    stages: dict[tuple[str, str], dict[str, list[float]]] = {k: {} for k in e2e}
    compute: dict[str, list[float]] = {t: [] for t in TIERS}
    for r in range(scale.load_rounds * 2):  # rounds: in-process, then every form and tier
        for tier in TIERS:
            compute[tier] += in_process_ms(TASK, tier, images[:1], threads, n)
        for i in range(n):
            for form in FORMS:
                for tier in TIERS:
                    path, body, headers = request(form, images[(r * n + i) % len(images)], tier)
                    t = time.perf_counter()
                    conn.request("POST", path, body, headers)
                    response = conn.getresponse()
                    response.read()
                    ms = (time.perf_counter() - t) * 1000
                    if response.status != 200:
                        raise RuntimeError(f"{form} {tier}: HTTP {response.status}")
                    if i >= 3:  # the first few after the in-process runs warm the server again
                        e2e[(form, tier)].append(ms)
                        timing = server_timing(response.getheader("Server-Timing"))
                        for k, v in timing.items():
                            stages[(form, tier)].setdefault(k, []).append(v)
                        if "total" in timing:
                            stages[(form, tier)].setdefault("send", []).append(ms - timing["total"])
    conn.close()
    med = statistics.median
    rows, goals = [], []
    for form in FORMS:
        for tier in TIERS:
            key = (form, tier)
            p50, bare = med(e2e[key]), med(compute[tier])
            row = {"form": form, "tier": tier, "e2e_p50_ms": round(p50, 2), "in_process_ms": round(bare, 2)}
            row["overhead_ms"] = round(p50 - bare, 2)
            row |= {s: round(med(v), 3) for s in [*STAGES, "send"] if (v := stages[key].get(s))}
            rows.append(row)
        over = [r["overhead_ms"] for r in rows if r["form"] == form]
        goals.append(
            goal(f"server overhead at batch 1, {form} (ms, median of tiers)", med(over), LIMITS[form])
        )
    for form in FORMS:
        low, high = (
            next(r["e2e_p50_ms"] for r in rows if r["form"] == form and r["tier"] == t) for t in TIERS
        )
        if form == "v1 png":
            goals.append(goal("end-to-end batch-1 p50 low/max over HTTP (v1 PNG)", low / high, 0.65))
    ratio = med(compute["low"]) / med(compute["max"])
    return {"task": TASK, "requests": n, "in_process_low_max": round(ratio, 3), "rows": rows, "goals": goals}
