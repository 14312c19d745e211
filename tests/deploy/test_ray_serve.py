"""Trunkline as a Ray Serve deployment with 2 replicas answers exactly as the single process does."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.server.helpers import payload

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

ROOT = Path(__file__).parents[2]
TASKS = ["count", "presence", "sum", "segment"]


@pytest.fixture(scope="module")
def ray_url():
    port = free_port()
    env = {
        "PYTHONPATH": str(ROOT),
        "TRUNKLINE_MODEL": "mnist-scenes",
        "TRUNKLINE_BATCH_BUCKETS": "[1,8]",
        "TRUNKLINE_CALIBRATION_ROUNDS": "1",
        "TRUNKLINE_THREADS": "1",
        "TRUNKLINE_LOG_LEVEL": "warning",
    }
    # a loaded 2-core machine starts Ray's actors slowly: give the proxy more than Ray's 5 s
    for name in ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"):
        os.environ.setdefault(name, "120")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        from deploy.ray_serve import Trunkline

        serve.run(Trunkline.options(num_replicas=2).bind(), name="trunkline", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_answer_like_the_single_process(ray_url, server, scenes):
    status = serve.status().applications["trunkline"]
    replicas = status.deployments["Trunkline"].replica_states
    assert replicas.get("RUNNING") == 2, replicas
    deadline = time.monotonic() + 60
    while httpx.get(f"{ray_url}/v2/health/ready").status_code != 200:  # both replicas calibrated
        assert time.monotonic() < deadline
        time.sleep(0.5)

    jobs = [(i % len(scenes.images), TASKS[i % 4], ["low", "medium", "max"][i % 3]) for i in range(48)]
    jobs.append((0, TASKS, "max"))

    def ask(url, job):
        img, task, budget = job
        key = {"tasks": task} if isinstance(task, list) else {"task": task}
        body = payload(scenes.images[img : img + 1], budget=budget, **key)
        return httpx.post(f"{url}/v1/predict", json=body, timeout=120)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda j: ask(ray_url, j), jobs))
    for job, r in zip(jobs, answers):
        assert r.status_code == 200, r.text
        body, ref = r.json(), ask(server.url, job).json()
        assert body["route"]["tasks"] == ref["route"]["tasks"]  # same routes, same receipts
        assert body["route"]["flops_fraction"] == ref["route"]["flops_fraction"]
        for task, out in body["outputs"][0].items():
            expected = ref["outputs"][0][task]
            if task == "segment":
                assert (np.array(out["mask"]) != np.array(expected["mask"])).mean() < 1e-3
            else:
                np.testing.assert_allclose(out["scores"], expected["scores"], atol=1e-5)
