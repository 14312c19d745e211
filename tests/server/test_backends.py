"""The torch and onnxruntime backends give the same answers (1e-4) on every served route."""

import httpx
import numpy as np
import pytest

from .helpers import payload

TASKS = ["count", "presence", "sum", "segment"]


def v2_scores(url, images, task, budget):
    req = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": list(images.shape),
                "data": images.reshape(-1).tolist(),
            }
        ],
        "parameters": {"task": task, "budget": budget},
    }
    body = httpx.post(f"{url}/v2/models/mnist-scenes/infer", json=req, timeout=60).json()
    return body["parameters"], {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["outputs"]}


@pytest.mark.parametrize("task", TASKS)
def test_backends_agree_on_every_route(server, onnx_server, scenes, task):
    model = httpx.get(f"{server.url}/v1/models/mnist-scenes").json()
    images = scenes.images[:6]
    rows = {r["id"]: r for r in model["tasks"][task]["routes"]}
    for route in rows.values():
        budget = route["flops_fraction"]
        a_receipt, a = v2_scores(server.url, images, task, budget)
        b_receipt, b = v2_scores(onnx_server.url, images, task, budget)
        chosen = a_receipt[f"route.{task}"]
        assert chosen == b_receipt[f"route.{task}"]
        # that route, or a better one listed at the same (4-decimal) fraction
        assert rows[chosen]["flops_fraction"] == budget and rows[chosen]["score"] >= route["score"]
        assert a_receipt["backend"] == "torch" and b_receipt["backend"] == "onnxruntime"
        if task == "segment":
            assert (a["segment_mask"] != b["segment_mask"]).mean() < 1e-3
        else:
            assert np.abs(a[f"{task}_scores"] - b[f"{task}_scores"]).max() <= 1e-4


def test_v1_answers_of_both_backends_match_on_every_task(server, onnx_server, scenes):
    """Same routes; scores within 1e-4; dense masks (argmaxes of probabilities) equal on all
    but ties."""
    body = payload(scenes.images[:2], tasks=TASKS, budget="medium")
    a = httpx.post(f"{server.url}/v1/predict", json=body, timeout=60).json()
    b = httpx.post(f"{onnx_server.url}/v1/predict", json=body, timeout=60).json()
    assert a["route"]["tasks"] == b["route"]["tasks"]
    for oa, ob in zip(a["outputs"], b["outputs"]):
        for task in ("count", "presence", "sum"):
            np.testing.assert_allclose(oa[task]["scores"], ob[task]["scores"], atol=1e-4)
        assert oa["count"]["label"] == ob["count"]["label"] and oa["sum"]["label"] == ob["sum"]["label"]
        masks = np.array(oa["segment"]["mask"]), np.array(ob["segment"]["mask"])
        assert masks[0].shape == (56, 56) and (masks[0] != masks[1]).mean() < 1e-3
