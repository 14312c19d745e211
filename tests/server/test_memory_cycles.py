"""Loading and unloading both bundled models 20 times under traffic leaks nothing: the server's
RSS after the last cycle is within 10% of its RSS after the first (the onnxruntime backend, the
default: every load opens each route's sessions again from the graph cache)."""

from __future__ import annotations

import shutil
import threading

import httpx
import psutil

from models.checkpoint import BUNDLED
from tests.conftest import RunningServer

from .helpers import payload

MODELS = ["mnist-scenes", "text-tasks"]
CYCLES = 20


def _bodies(scenes) -> dict[str, dict]:
    return {
        "mnist-scenes": payload(scenes.images[:2], tasks=["count"], budget="low", model="mnist-scenes"),
        "text-tasks": {"model": "text-tasks", "task": "sentiment", "inputs": [{"text": "a fine film"}]},
    }


def test_load_unload_cycles_of_both_models_under_traffic_do_not_grow_rss(tmp_path, scenes):
    repo = tmp_path / "repository"
    for name in MODELS:
        shutil.copytree(BUNDLED / name, repo / name)
    server = RunningServer(
        "onnxruntime",
        TRUNKLINE_MODEL_REPOSITORY=str(repo),
        TRUNKLINE_MODEL_CONTROL_MODE="explicit",
        TRUNKLINE_CACHE_DIR=str(tmp_path / "cache"),
        TRUNKLINE_LOAD_SHARE="1",  # loads as fast as serving
        TRUNKLINE_BATCH_BUCKETS="[1]",  # what is timed here is memory: calibrate the least
    )
    statuses: list[int] = []
    stop = threading.Event()

    def traffic(body: dict) -> None:
        with httpx.Client(timeout=120) as h:
            while not stop.is_set():
                statuses.append(h.post(f"{server.url}/v1/predict", json=body).status_code)

    try:
        server.wait_ready()
        process = psutil.Process(server.proc.pid)
        workers = [threading.Thread(target=traffic, args=(b,)) for b in _bodies(scenes).values()]
        for w in workers:
            w.start()
        rss = []
        with httpx.Client(base_url=server.url, timeout=600) as h:
            for _ in range(CYCLES):
                for name in MODELS:
                    assert h.post(f"/v2/repository/models/{name}/unload").status_code == 200
                for name in MODELS:
                    assert h.post(f"/v2/repository/models/{name}/load").status_code == 200
                rss.append(process.memory_info().rss / 2**20)
        stop.set()
        for w in workers:
            w.join()
    finally:
        stop.set()
        server.stop()
    # answered, or refused while its model was away (never a 500, never a hang)
    assert set(statuses) <= {200, 404, 503} and statuses.count(200) > CYCLES, sorted(set(statuses))
    print("RSS MiB after each cycle:", [round(r) for r in rss])
    assert rss[-1] <= 1.10 * rss[0], [round(r) for r in rss]
