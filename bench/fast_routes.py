"""Fast routes (issue 19): is a cheap route cheap in wall-clock too, for both families?

- in-process, batch 1: low / max time per family and backend, against the low route's FLOPs
  fraction (torch eager modules vs onnxruntime graphs, rounds interleaved);
- end to end over HTTP, batch 1, one keep-alive connection: low / max p50 per family on the
  default backend (images as v2 binary tensors, text as v1 JSON);
- mixed one-image traffic in-process on onnxruntime: sessions each with their own intra-op
  thread pool (what served 31 req/s) against sessions without one (today), and torch;
- the text max route at batch 32 (32 tokens): GFLOP/s against the machine's fp32 GEMM peak
  measured in the same run at the same thread count.

    python -m bench fast-routes --quick
"""

from __future__ import annotations

import http.client
import random
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import torch

from bench.http_load import start_server
from bench.model_level import goal
from bench.overhead import request, server_timing
from bench.scale import Scale
from models.adapter import load_adapter
from models.routes import Route
from server.backends import build_backend
from server.backends.onnx import OnnxBackend
from server.settings import Settings

FAMILIES = {"mnist-scenes": "sum", "text-tasks": "sentiment"}
TEXTS = [
    "this movie was a delight from start to finish, really good fun",
    "what is the capital city of france",
    "win a free cruise now, call today to claim your prize",
]
E2E_LIMITS = {"mnist-scenes": 0.55, "text-tasks": 0.33}


def low_and_max(adapter, task: str) -> tuple[Route, Route]:
    """Tier `low` (the best route within 0.25 of the FLOPs) and `max` (the full route)."""
    rows = adapter.route_rows[task]
    low = max((r for r in rows if r["flops_fraction"] <= 0.25), key=lambda r: r["score"])
    return Route.parse(low["id"]), Route.parse(rows[-1]["id"])


def one_input(adapter, n: int = 1) -> np.ndarray:
    if adapter.family == "text":
        return adapter.stack([adapter.tokenize([TEXTS[i % len(TEXTS)] for i in range(n)])])
    return adapter.example_batch(n)


def route_fn(backend, task: str, route: Route, batch: np.ndarray):
    """One batch through the route as the server runs it: the trunk, then the task's path."""
    return lambda: backend.run_path(task, route, backend.run_trunk(route.trunk, batch), batch)


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def in_process(scale: Scale, threads: int, onnx_dir: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """Batch 1, low and max, both backends, rounds interleaved; and larger batches once each,
    which says which backend to pick at which batch size."""
    rows, goals, by_batch = [], [], []
    n = 100 * scale.rounds
    for name, task in FAMILIES.items():
        adapter = load_adapter(name)
        low, full = low_and_max(adapter, task)
        fraction = adapter.flops_fraction({task: low})
        batch = one_input(adapter)
        settings = Settings(threads=threads, onnx_dir=onnx_dir)
        made = {b: build_backend(b, adapter, settings, {task: [low, full]}) for b in ("torch", "onnxruntime")}
        runs = {(b, r): route_fn(be, task, r, batch) for b, be in made.items() for r in (low, full)}
        for fn in runs.values():
            for _ in range(20):
                fn()
        ms = {k: [] for k in runs}
        for _ in range(scale.rounds):  # interleaved: every (backend, route) once per round
            for k, fn in runs.items():
                ms[k].append(_median_ms(fn, n // scale.rounds))
        for b in made:
            lo, hi = statistics.median(ms[(b, low)]), statistics.median(ms[(b, full)])
            rows.append(
                {
                    "model": name,
                    "task": task,
                    "backend": b,
                    "low route": low.id,
                    "low ms": round(lo, 3),
                    "max ms": round(hi, 3),
                    "low/max time": round(lo / hi, 3),
                    "low FLOPs fraction": round(fraction, 3),
                    "time ratio / FLOPs fraction": round(lo / hi / fraction, 2),
                }
            )
            if b == "onnxruntime":
                goals.append(
                    goal(f"{name}: in-process batch-1 low/max time / FLOPs fraction", lo / hi / fraction, 1.4)
                )
        for size in (8, 64):
            big = one_input(adapter, size)
            timed = {
                (b, r): statistics.median(
                    _median_ms(route_fn(be, task, r, big), max(2, scale.rounds // 2)) for _ in range(3)
                )
                for b, be in made.items()
                for r in (low, full)
            }
            for r, tier in ((low, "low"), (full, "max")):
                t, o = timed[("torch", r)], timed[("onnxruntime", r)]
                by_batch.append(
                    {
                        "model": name,
                        "tier": tier,
                        "batch": size,
                        "torch ms": round(t, 2),
                        "onnxruntime ms": round(o, 2),
                        "onnxruntime / torch": round(o / t, 3),
                    }
                )
        for be in made.values():
            be.close()
    return rows, goals, by_batch


class PooledOnnx(OnnxBackend):
    """The onnxruntime backend as it was: every session with its own `threads`-thread pool."""

    def __init__(self, adapter, threads: int, cache_dir: Path) -> None:
        super().__init__(adapter, 1, cache_dir)
        self.options.intra_op_num_threads = threads


def mixed_traffic(scale: Scale, threads: int, onnx_dir: Path) -> list[dict]:
    """One-image requests for random (task, route) pairs of every route, back to back."""
    adapter = load_adapter("mnist-scenes")
    routes = {t: [Route.parse(r["id"]) for r in rows] for t, rows in adapter.route_rows.items()}
    pairs = [(t, r) for t, rs in routes.items() for r in rs]
    settings = Settings(threads=threads, onnx_dir=onnx_dir)
    arms = {
        "torch": build_backend("torch", adapter, settings, routes),
        "onnxruntime, a thread pool per session (before)": PooledOnnx(adapter, threads, onnx_dir),
        "onnxruntime, no pools; big batches split (now)": build_backend(
            "onnxruntime", adapter, settings, routes
        ),
    }
    pooled = arms["onnxruntime, a thread pool per session (before)"]
    for t, rs in routes.items():
        for r in rs:
            pooled.add_trunk(r)
            pooled.add_path(t, r)
    x = adapter.example_batch(1)
    count = 150 * scale.rounds
    rows = []
    for name, be in arms.items():
        rng = random.Random(0)
        for _ in range(30):
            t, r = rng.choice(pairs)
            be.run_path(t, r, be.run_trunk(r.trunk, x), x)
        start = time.perf_counter()
        for _ in range(count):
            t, r = rng.choice(pairs)
            be.run_path(t, r, be.run_trunk(r.trunk, x), x)
        rows.append(
            {"arm": name, "requests": count, "req/s": round(count / (time.perf_counter() - start), 1)}
        )
        be.close()
    return rows


def gemm_peak_gflops(threads: int, sizes: tuple[int, ...] = (1024, 2048)) -> dict[str, float]:
    """fp32 GEMM GFLOP/s at `threads` threads: torch (MKL/oneDNN) and onnxruntime (MLAS) on
    square matrices; the machine's peak is the best of them."""
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    out = {}
    for n in sizes:
        a, b = torch.rand(n, n), torch.rand(n, n)
        ms = statistics.median(_median_ms(lambda a=a, b=b: a @ b, 5) for _ in range(3))
        out[f"torch {n}"] = 2 * n**3 / (ms / 1000) / 1e9
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["a", "b"], ["c"])],
            "gemm",
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, [n, n]) for x in "ab"],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        feeds = {"a": a.numpy(), "b": b.numpy()}
        session.run(None, feeds)
        ms = statistics.median(_median_ms(lambda s=session, f=feeds: s.run(None, f), 5) for _ in range(3))
        out[f"onnxruntime {n}"] = 2 * n**3 / (ms / 1000) / 1e9
    return out


def text_batch32(scale: Scale, threads: int, onnx_dir: Path) -> tuple[list[dict], list[dict]]:
    adapter = load_adapter("text-tasks")
    task = FAMILIES["text-tasks"]
    _, full = low_and_max(adapter, task)
    tokens = adapter.cfg.reference_tokens  # the length route tables count FLOPs at
    rng = np.random.default_rng(0)
    batch = np.ones((32, 2, tokens), np.int64)
    batch[:, 0] = rng.integers(1000, 20000, size=(32, tokens))
    flops = 32 * adapter.request_flops({task: full})
    gemms = gemm_peak_gflops(threads)
    peak = max(gemms.values())
    rows = [
        {"arm": f"fp32 GEMM {k}x{k.split()[-1]}, {threads} threads", "GFLOP/s": round(v, 1)}
        for k, v in gemms.items()
    ]
    goals = []
    settings = Settings(threads=threads, onnx_dir=onnx_dir)
    for b in ("torch", "onnxruntime"):
        be = build_backend(b, adapter, settings, {task: [full]})
        fn = route_fn(be, task, full, batch)
        fn()
        ms = statistics.median(_median_ms(fn, max(3, scale.rounds)) for _ in range(3))
        rate = flops / (ms / 1000) / 1e9
        rows.append(
            {
                "arm": f"text max route, batch 32 x {tokens} tokens, {b}",
                "GFLOP/s": round(rate, 1),
                "ms": round(ms, 2),
                "of peak": round(rate / peak, 3),
            }
        )
        if b == "onnxruntime":
            goals.append(
                goal("text max route at batch 32: GFLOP/s / fp32 GEMM peak", rate / peak, 0.6, at_most=False)
            )
        be.close()
    return rows, goals


def end_to_end(scale: Scale, threads: int, port: int, onnx_dir: Path) -> tuple[list[dict], list[dict]]:
    """Both models in one default server; batch-1 requests on one connection, low and max
    alternating, images as v2 binary and text as v1 JSON."""
    from models.image.data import make_scenes

    images = make_scenes(64, "test", seed=4242).images
    proc = start_server(
        Settings().backend,
        port,
        threads,
        model="mnist-scenes,text-tasks",
        onnx_dir=str(onnx_dir),
        **({"batch_buckets": "[1,8]", "calibration_rounds": "1"} if scale.name == "tiny" else {}),
    )
    n = 60 * scale.http_requests
    samples: dict[tuple[str, str], list[tuple[float, dict]]] = {}
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port)

        def post(path: str, body: bytes, headers: dict) -> tuple[float, dict]:
            t = time.perf_counter()
            conn.request("POST", path, body, headers)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"{path}: HTTP {r.status}")
            return (time.perf_counter() - t) * 1000, server_timing(r.getheader("Server-Timing"))

        for i in range(n + 20):
            for tier in ("low", "max") if i % 2 == 0 else ("max", "low"):
                path, body, headers = request("v2 binary", images[i % len(images)], tier)
                a = post(path, body, headers)
                text = {"model": "text-tasks", "task": FAMILIES["text-tasks"], "budget": tier}
                text["inputs"] = [{"text": TEXTS[i % len(TEXTS)]}]
                b = post("/v1/predict", orjson.dumps(text), {"Content-Type": "application/json"})
                if i >= 20:  # warm-up
                    samples.setdefault(("mnist-scenes", tier), []).append(a)
                    samples.setdefault(("text-tasks", tier), []).append(b)
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    rows, goals = [], []
    for name in FAMILIES:
        p50 = {t: statistics.median(ms for ms, _ in samples[(name, t)]) for t in ("low", "max")}
        for tier in ("low", "max"):
            timing = samples[(name, tier)]
            stages = {k: round(statistics.median(s.get(k, 0.0) for _, s in timing), 3) for k in timing[-1][1]}
            send = statistics.median(ms - s.get("total", 0.0) for ms, s in timing)
            rows.append(
                {
                    "model": name,
                    "form": "v2 binary" if name == "mnist-scenes" else "v1 JSON",
                    "tier": tier,
                    "e2e p50 ms": round(p50[tier], 2),
                }
                | stages
                | {"send": round(send, 3)}
            )
        goals.append(
            goal(
                f"{name}: end-to-end batch-1 p50 low/max over HTTP", p50["low"] / p50["max"], E2E_LIMITS[name]
            )
        )
    return rows, goals


def fast_routes(scale: Scale, threads: int, port: int) -> dict:
    onnx_dir = Path.home() / ".cache" / "trunkline" / "onnx"
    rows, goals, by_batch = in_process(scale, threads, onnx_dir)
    e2e_rows, e2e_goals = end_to_end(scale, threads, port, onnx_dir)
    gemm_rows, gemm_goals = text_batch32(scale, threads, onnx_dir)
    mixed = mixed_traffic(scale, threads, onnx_dir)
    before, now = mixed[1]["req/s"], mixed[2]["req/s"]
    goals += e2e_goals + gemm_goals
    goals.append(
        goal(
            "onnxruntime mixed one-image traffic: req/s now / torch",
            now / mixed[0]["req/s"],
            1.0,
            at_most=False,
        )
    )
    return {
        "threads": threads,
        "onnxruntime": ort.__version__,
        "default backend": Settings().backend,
        "rows": rows,
        "by_batch": by_batch,
        "end_to_end": e2e_rows,
        "batch32": gemm_rows,
        "mixed": mixed,
        "mixed before/now": round(before / now, 3),
        "goals": goals,
    }
