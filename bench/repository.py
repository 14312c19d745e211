"""Two models in one server (the model repository): each model's share of the throughput it
reaches alone when both are saturated at once, and model A's p99 while model B loads.

Both models are the bundled mnist-scenes checkpoint under two names (`mnist-scenes`,
`scenes-b`) in a repository served in explicit model-control mode, so their costs are equal
and a fair share is 0.5 of solo; the goal is at least 0.35 each.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from bench.common import percentile
from bench.http_load import load, start_server, summarise
from bench.model_level import goal
from bench.scale import Scale
from bench.serving import mixed
from models.checkpoint import BUNDLED

MODELS = ("mnist-scenes", "scenes-b")


def two_models(images: np.ndarray, scale: Scale, threads: int, port: int) -> dict:
    extra = {"batch_buckets": "[1,8]", "calibration_rounds": "1"} if scale.name == "tiny" else {}
    concurrency = max(2, scale.concurrency // 2)  # per model
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp)
        for name in MODELS:
            shutil.copytree(BUNDLED / "mnist-scenes", repo / name)
        proc = start_server(
            "torch", port, threads, model_repository=str(repo), model_control_mode="explicit", **extra
        )
        url = f"http://127.0.0.1:{port}"
        traffic = {m: mixed(images, 64, ["max"], model=m) for m in MODELS}
        try:
            rows = _shares(url, traffic, concurrency, scale)
            during = _load_under_traffic(url, traffic["mnist-scenes"], concurrency, scale)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    shares = [r["share_of_solo"] for r in rows if "share_of_solo" in r]
    return {
        "rows": rows + [during["row"]],
        "goals": [
            goal(
                "two saturated models: the smaller share of solo throughput", min(shares), 0.35, at_most=False
            ),
            goal("model A's p99 while B loads / before", during["p99_ratio"], 1.5),
            goal("model A requests failed while B loads", during["failed"], 0),
        ],
        "concurrency_per_model": concurrency,
    }


def _shares(url: str, traffic: dict, concurrency: int, scale: Scale) -> list[dict]:
    """Solo runs of each model and runs of both at once, interleaved over `load_rounds`."""
    solo = {m: [] for m in MODELS}
    both = {m: [] for m in MODELS}
    for _ in range(scale.load_rounds):
        for m in MODELS:
            solo[m].append(summarise(load(url, traffic[m], concurrency, scale.duration_s)))
        with ThreadPoolExecutor(2) as pool:
            runs = {m: pool.submit(load, url, traffic[m], concurrency, scale.duration_s) for m in MODELS}
            for m, run in runs.items():
                both[m].append(summarise(run.result()))
    rows = []
    for m in MODELS:
        alone = float(np.median([s["throughput_rps"] for s in solo[m]]))
        shared = float(np.median([s["throughput_rps"] for s in both[m]]))
        rows.append(
            {
                "model": m,
                "solo_rps": round(alone, 1),
                "both_saturated_rps": round(shared, 1),
                "share_of_solo": round(shared / alone, 3),
                "solo_p99_ms": round(float(np.median([s["p99_ms"] for s in solo[m]])), 1),
                "both_p99_ms": round(float(np.median([s["p99_ms"] for s in both[m]])), 1),
                "errors": sum(s["errors"] for s in solo[m] + both[m]),
            }
        )
    return rows


def _load_under_traffic(url: str, traffic: list, concurrency: int, scale: Scale) -> dict:
    """A saturated alone (B unloaded), then A saturated while B is loaded: A's p99 over the
    requests answered during the load, against A's p99 before."""
    httpx.post(f"{url}/v2/repository/models/scenes-b/unload", timeout=120).raise_for_status()
    before = summarise(load(url, traffic, concurrency, scale.duration_s))
    window: dict[str, float] = {}

    def load_b() -> None:
        time.sleep(1.5)  # the load generator is up and A is saturated
        window["start"] = time.monotonic()
        httpx.post(f"{url}/v2/repository/models/scenes-b/load", timeout=600).raise_for_status()
        window["end"] = time.monotonic()

    loader = threading.Thread(target=load_b)
    loader.start()
    # long enough to cover the load (about 4x its idle time: loading takes a quarter of the compute)
    results = load(url, traffic, concurrency, max(3 * scale.duration_s, 12.0), limit=10**7)
    loader.join()
    inside = [r for r in results if window["start"] <= r[6] <= window["end"]]
    p99 = percentile([r[0] for r in inside if r[1] == 200], 99)
    return {
        "p99_ratio": p99 / before["p99_ms"],
        "failed": sum(r[1] != 200 for r in inside),
        "row": {
            "model": "mnist-scenes while scenes-b loads",
            "load_s": round(window["end"] - window["start"], 1),
            "requests_during_load": len(inside),
            "p99_before_ms": round(before["p99_ms"], 1),
            "p99_during_load_ms": round(p99, 1),
            "p99_ratio": round(p99 / before["p99_ms"], 3),
            "errors": sum(r[1] != 200 for r in inside),
        },
    }


def startup(scale: Scale, threads: int, port: int) -> dict:
    """Seconds from `trunkline serve` to ready, with empty caches (cold) and again with the
    calibration and ONNX caches the first start wrote (warm), per backend."""
    backends = ["torch"] if scale.name == "tiny" else ["torch", "onnxruntime"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            settings = {"cache_dir": f"{tmp}/{backend}", "onnx_dir": f"{tmp}/{backend}/onnx"}
            for cache in ("cold", "warm"):
                started = time.monotonic()
                proc = start_server(backend, port, threads, **settings)
                ready_s = time.monotonic() - started
                if cache == "cold":  # the rest of calibration runs after readiness, then is saved
                    _wait_for_file(Path(settings["cache_dir"]) / "calibration", timeout=600)
                proc.terminate()
                proc.wait(timeout=60)
                rows.append(
                    {
                        "model": "mnist-scenes",
                        "backend": backend,
                        "cache": cache,
                        "ready_s": round(ready_s, 1),
                    }
                )
    return {
        "rows": rows,
        "goals": [
            goal("seconds to ready, slowest start (cold and warm)", max(r["ready_s"] for r in rows), 30)
        ],
    }


def _wait_for_file(folder: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if folder.is_dir() and any(folder.glob("*.json")):
            return
        time.sleep(0.5)
    raise TimeoutError(f"no calibration cache in {folder} after {timeout} s")
