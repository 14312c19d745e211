"""The /v1 API through HTTP against a real server."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from models.image.config import mnist_scenes_config
from routing import TIERS

from .helpers import payload

TASKS = mnist_scenes_config().task_names


def post(server, body, **kw):
    return httpx.post(f"{server.url}/v1/predict", json=body, timeout=60, **kw)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("tier", list(TIERS))
def test_every_task_and_tier(server, scenes, task, tier):
    r = post(server, payload(scenes.images[:3], task, budget=tier))
    assert r.status_code == 200, r.text
    body = r.json()
    receipt = body["route"]
    assert body["model"] == "mnist-scenes" and len(body["outputs"]) == 3
    assert receipt["budget_requested"] == tier and receipt["degraded"] is False
    if TIERS[tier] is not None:
        assert receipt["flops_fraction"] <= TIERS[tier]
    assert set(receipt["tasks"]) == {task} and receipt["backend"] == "torch"
    out = body["outputs"][0][task]
    if task in ("count", "sum"):
        assert out["label"] == str(out["index"] + (1 if task == "count" else 0))
        assert abs(sum(out["scores"]) - 1) < 1e-4
    elif task == "presence":
        assert len(out["scores"]) == 10 and all(label in "0123456789" for label in out["labels"])
    else:
        mask = np.array(out["mask"])
        assert mask.shape == (56, 56) and mask.max() <= 10


def test_answers_are_right_at_max(server, scenes):
    r = post(server, payload(scenes.images, tasks=["count", "sum"]))
    outs = r.json()["outputs"]
    count_ok = np.mean([o["count"]["index"] == c for o, c in zip(outs, scenes.count)])
    sum_ok = np.mean([o["sum"]["index"] == s for o, s in zip(outs, scenes.sum)])
    assert count_ok >= 0.9 and sum_ok >= 0.7


def test_numeric_budget_and_lists_as_input(server, scenes):
    body = {"task": "sum", "budget": 0.5, "inputs": [{"image": scenes.images[0].tolist()}]}
    r = post(server, body)
    assert r.status_code == 200 and r.json()["route"]["flops_fraction"] <= 0.5
    via_png = post(server, payload(scenes.images[:1], "sum", budget=0.5)).json()
    assert r.json()["outputs"] == via_png["outputs"]


def test_multi_task_equals_single_task_answers(server, scenes):
    images = scenes.images[:4]
    both = post(server, payload(images, tasks=TASKS, budget="max")).json()
    assert set(both["route"]["tasks"]) == set(TASKS)
    assert both["route"]["flops_fraction"] <= 1.0
    for task in TASKS:
        single = post(server, payload(images, task, budget="max")).json()
        assert single["route"]["tasks"][task]["route"] == both["route"]["tasks"][task]["route"]
        for a, b in zip(single["outputs"], both["outputs"]):
            if task == "segment":
                assert (np.array(a[task]["mask"]) != np.array(b[task]["mask"])).mean() < 1e-3
            else:
                np.testing.assert_allclose(a[task]["scores"], b[task]["scores"], atol=1e-5)


def test_multi_task_budget_bounds_the_whole_request(server, scenes):
    images, tasks = scenes.images[:2], ["count", "segment"]
    plain = post(server, payload(images, tasks=tasks, budget="medium")).json()["route"]
    weighted = post(server, payload(images, tasks=tasks, budget="medium", task_weights={"segment": 3.0}))
    assert weighted.status_code == 200
    receipt = weighted.json()["route"]
    assert receipt["flops_fraction"] <= 0.5 and plain["flops_fraction"] <= 0.5
    # the preferred task gets a route at least as good as without the weights
    assert receipt["tasks"]["segment"]["score"] >= plain["tasks"]["segment"]["score"]


def test_concurrent_mixed_requests_batch_and_equal_unbatched(server, scenes):
    jobs = [(i % len(scenes.images), TASKS[i % 4], ["low", "max"][i // 4 % 2]) for i in range(32)]
    solo = {}
    for img, task, budget in set(jobs):
        solo[(img, task, budget)] = post(
            server, payload(scenes.images[img : img + 1], task, budget=budget)
        ).json()
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(lambda j: post(server, payload(scenes.images[j[0] : j[0] + 1], j[1], budget=j[2])), jobs)
        )
    batch_sizes = []
    for (img, task, budget), r in zip(jobs, results):
        assert r.status_code == 200
        body, ref = r.json(), solo[(img, task, budget)]
        batch_sizes.append(body["route"]["batch_size"])
        assert body["route"]["tasks"] == ref["route"]["tasks"]
        a, b = body["outputs"][0][task], ref["outputs"][0][task]
        if task == "segment":
            assert (np.array(a["mask"]) != np.array(b["mask"])).mean() < 1e-3
        else:
            np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-5)
    assert max(batch_sizes) > 1  # requests of different tasks shared a batch


def test_degradation_never_goes_below_min_budget(server, scenes):
    floor = post(server, payload(scenes.images[:1], "sum", budget="low")).json()["route"]["flops_fraction"]
    body = payload(scenes.images[:8], "sum", budget="max", min_budget="low", timeout_ms=150)
    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(lambda _: post(server, body), range(48)))
    statuses = [r.status_code for r in results]
    assert set(statuses) <= {200, 503}, statuses
    answered = [r.json()["route"] for r in results if r.status_code == 200]
    assert answered
    for receipt in answered:
        assert floor <= receipt["flops_fraction"] <= 1.0
    for r in results:
        if r.status_code == 503:
            assert r.headers["retry-after"].isdigit() and "timeout_ms" in r.json()["error"]["message"]
    assert any(rc["degraded"] for rc in answered) or 503 in statuses


def test_latency_budget(server, scenes):
    model = httpx.get(f"{server.url}/v1/models/mnist-scenes").json()
    routes = model["tasks"]["count"]["routes"]
    assert all("1" in r["latency_ms"] for r in routes)
    fastest = min(r["latency_ms"]["1"] for r in routes)
    r = post(server, payload(scenes.images[:1], "count", latency_ms=fastest * 1.5 + 0.5))
    assert r.status_code == 200
    r = post(server, payload(scenes.images[:1], "count", latency_ms=fastest / 100))
    assert r.status_code == 422 and r.json()["error"]["field"] == "latency_ms"


def test_mask_as_png(server, scenes):
    r = post(server, payload(scenes.images[:1], "segment", mask_format="png"))
    out = r.json()["outputs"][0]["segment"]
    assert out["mask_format"] == "png" and isinstance(out["mask"], str)


def test_models_endpoints(server):
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert models[0]["name"] == "mnist-scenes" and models[0]["tasks"] == TASKS
    info = httpx.get(f"{server.url}/v1/models/mnist-scenes").json()
    for task in TASKS:
        routes = info["tasks"][task]["routes"]
        assert (
            len(routes) >= 4 and routes[0]["flops_fraction"] <= 0.25 and routes[-1]["flops_fraction"] == 1.0
        )
    assert info["tasks"]["segment"]["kind"] == "dense"


def test_openapi_docs_and_metrics(server, scenes):
    spec = httpx.get(f"{server.url}/openapi.json").json()
    assert "/v1/predict" in spec["paths"] and "/v2/models/{model}/infer" in spec["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    post(server, payload(scenes.images[:1], "count"))
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "trunkline_requests_total",
        "trunkline_request_latency_seconds_bucket",
        "trunkline_queue_time_seconds_bucket",
        "trunkline_batch_size_bucket",
        "trunkline_in_flight_requests",
        "trunkline_queue_depth",
        "trunkline_degraded",
    ):
        assert name in text
    assert 'task="count"' in text and 'status="200"' in text


def test_made_up_task_names_never_become_metric_labels(server, scenes):
    """Each label value is a series kept for good: a client's task names must not make them."""
    for task in ("no-such-task-1", "no-such-task-2", "count,no-such-task-3"):
        assert post(server, payload(scenes.images[:1], tasks=task)).status_code == 422
    text = httpx.get(f"{server.url}/metrics").text
    assert "no-such-task" not in text
