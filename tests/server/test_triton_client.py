"""Triton's own HTTP client (binary tensor data on, its default) against the real server."""

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from .helpers import payload

TASKS = ["count", "presence", "sum", "segment"]


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


def image_input(images: np.ndarray, datatype="UINT8", binary=True):
    tensor = triton.InferInput("image", list(images.shape), datatype)
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist-scenes")
    meta = client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("mnist-scenes")
    assert model["inputs"][0] == {"name": "image", "datatype": "UINT8", "shape": [-1, 56, 56]}
    names = {o["name"] for o in model["outputs"]}
    assert {"count_scores", "count_label", "presence_scores", "sum_label", "segment_mask"} <= names


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("budget", ["low", "medium", 0.8, "max"])
def test_infer_every_task_and_budget(client, server, scenes, task, budget):
    images = scenes.images[:4]
    result = client.infer("mnist-scenes", [image_input(images)], parameters={"task": task, "budget": budget})
    receipt = result.get_response()["parameters"]
    assert receipt["degraded"] is False and receipt[f"route.{task}"]
    if budget != "max":
        limit = {"low": 0.25, "medium": 0.5}.get(budget, budget)
        assert receipt["flops_fraction"] <= limit
    v1 = httpx.post(f"{server.url}/v1/predict", json=payload(images, task, budget=budget), timeout=60).json()
    assert v1["route"]["tasks"][task]["route"] == receipt[f"route.{task}"]
    if task == "segment":
        mask = result.as_numpy("segment_mask")
        assert mask.shape == (4, 56, 56) and mask.dtype == np.uint8
        v1_mask = np.array([o["segment"]["mask"] for o in v1["outputs"]])
        assert (mask != v1_mask).mean() < 1e-3
        return
    scores = result.as_numpy(f"{task}_scores")
    np.testing.assert_allclose(scores, [o[task]["scores"] for o in v1["outputs"]], atol=1e-5)
    if task != "presence":
        assert list(result.as_numpy(f"{task}_label")) == [o[task]["index"] for o in v1["outputs"]]


def test_infer_several_tasks_fp32_and_json_outputs(client, scenes):
    images = (scenes.images[:3] / 255.0).astype(np.float32)
    outputs = [
        triton.InferRequestedOutput("count_label", binary_data=False),
        triton.InferRequestedOutput("sum_scores", binary_data=True),
    ]
    result = client.infer(
        "mnist-scenes", [image_input(images, "FP32")], outputs=outputs, parameters={"tasks": "count,sum"}
    )
    assert list(result.as_numpy("count_label")) == list(scenes.count[:3])
    assert result.as_numpy("sum_scores").shape == (3, 28)
    assert result.as_numpy("segment_mask") is None


def test_infer_json_input_and_timeout(client, scenes):
    result = client.infer(
        "mnist-scenes",
        [image_input(scenes.images[:2], binary=False)],
        parameters={"task": "count", "budget": "low"},
        timeout=5_000_000,
    )
    assert result.as_numpy("count_label").shape == (2,)


def test_errors_carry_the_message(client, scenes):
    with pytest.raises(InferenceServerException, match="unknown task 'colour'"):
        client.infer("mnist-scenes", [image_input(scenes.images[:1])], parameters={"task": "colour"})
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("resnet", [image_input(scenes.images[:1])], parameters={"task": "count"})
