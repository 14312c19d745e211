"""`--workers N`: one process with N-core compute against N processes with one core each,
on the same mixed one-image traffic at saturation (32 closed-loop connections)."""

from __future__ import annotations

import statistics

import numpy as np

from bench.http_load import load, start_server, summarise
from bench.scale import Scale
from bench.serving import TIERS, mixed


def workers(images: np.ndarray, scale: Scale, threads: int, port: int) -> dict:
    traffic = mixed(images, 256, TIERS)
    configs = {
        f"1 process x {threads} threads": (1, threads),
        f"{threads} processes x 1 thread": (threads, 1),
    }
    runs: dict[str, list[dict]] = {k: [] for k in configs}
    for r in range(scale.load_rounds):
        for name, (n, t) in list(configs.items())[:: 1 if r % 2 == 0 else -1]:
            proc = start_server("torch", port, t, workers=str(n))
            try:
                url = f"http://127.0.0.1:{port}"
                load(url, traffic, scale.concurrency, 1.0)  # warm every worker
                runs[name].append(summarise(load(url, traffic, scale.concurrency, scale.duration_s), 0.5))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
    rows = [
        {
            "config": name,
            "saturated_rps": round(statistics.median(x["throughput_rps"] for x in rs), 1),
            "p50_ms": round(statistics.median(x["p50_ms"] for x in rs), 1),
            "p99_ms": round(statistics.median(x["p99_ms"] for x in rs), 1),
            "errors": sum(x["errors"] for x in rs),
        }
        for name, rs in runs.items()
    ]
    ratio = rows[1]["saturated_rps"] / rows[0]["saturated_rps"]
    return {"rows": rows, "goals": [], "processes_over_threads": round(ratio, 3)}
