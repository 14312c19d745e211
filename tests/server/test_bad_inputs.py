"""Bad input gets the right 4xx and a message naming the field; the server keeps serving."""

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from .helpers import png

GOOD = png(np.zeros((56, 56), np.uint8))


def png_of(size, mode="L") -> str:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def jpeg() -> str:
    buf = io.BytesIO()
    Image.new("L", (56, 56)).save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def body(**fields):
    base = {"task": "sum", "inputs": [{"image": GOOD}]}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


V1 = [
    # (id, json body or raw bytes, headers, status, field named in the message)
    ("not json", b"{nope", None, 400, "body"),
    ("json array", b"[1, 2]", None, 422, "body"),
    ("wrong content type", json.dumps(body()).encode(), {"content-type": "text/plain"}, 415, "content-type"),
    ("no task", {"inputs": [{"image": GOOD}]}, None, 422, "task"),
    ("task and tasks", body(tasks=["count"]), None, 422, "tasks"),
    ("unknown task", body(task="colour"), None, 422, "task"),
    ("unknown task in tasks", body(task=None, tasks=["count", "colour"]), None, 422, "tasks"),
    ("empty tasks", body(task=None, tasks=[]), None, 422, "tasks"),
    ("repeated task", body(task=None, tasks=["sum", "sum"]), None, 422, "tasks"),
    ("unknown model", body(model="resnet"), None, 404, "model"),
    ("budget zero", body(budget=0), None, 422, "budget"),
    ("budget above one", body(budget=1.5), None, 422, "budget"),
    ("budget negative", body(budget=-0.2), None, 422, "budget"),
    ("budget unknown tier", body(budget="cheap"), None, 422, "budget"),
    ("budget below smallest route", body(budget=0.01), None, 422, "budget"),
    ("min_budget unknown", body(min_budget="tiny"), None, 422, "min_budget"),
    ("min_budget above budget", body(budget="low", min_budget="high"), None, 422, "min_budget"),
    ("timeout negative", body(timeout_ms=-5), None, 422, "timeout_ms"),
    ("latency zero", body(latency_ms=0), None, 422, "latency_ms"),
    ("task_weights for other task", body(task_weights={"count": 2.0}), None, 422, "task_weights"),
    (
        "task_weights negative",
        body(task=None, tasks=["sum", "count"], task_weights={"sum": -1.0}),
        None,
        422,
        "task_weights",
    ),
    ("mask_format unknown", body(mask_format="gif"), None, 422, "mask_format"),
    ("unknown field", body(colour="red"), None, 422, "colour"),
    ("no inputs", body(inputs=[]), None, 422, "inputs"),
    ("inputs not a list", body(inputs={"image": GOOD}), None, 422, "inputs"),
    ("input without image", body(inputs=[{"picture": GOOD}]), None, 422, "inputs.0"),
    ("image not base64", body(inputs=[{"image": "%%%not-base64%%%"}]), None, 422, "inputs.0.image"),
    (
        "image base64 not png",
        body(inputs=[{"image": base64.b64encode(b"hello").decode()}]),
        None,
        422,
        "inputs.0.image",
    ),
    ("image jpeg", body(inputs=[{"image": jpeg()}]), None, 422, "inputs.0.image"),
    ("image png wrong size", body(inputs=[{"image": png_of((28, 28))}]), None, 422, "inputs.0.image"),
    ("image huge png", body(inputs=[{"image": png_of((4000, 4000))}]), None, 422, "inputs.0.image"),
    ("image list wrong rows", body(inputs=[{"image": [[0] * 56] * 55}]), None, 422, "inputs.0.image"),
    ("image list ragged", body(inputs=[{"image": [[0] * 56] * 55 + [[0] * 3]}]), None, 422, "inputs.0.image"),
    ("image list above 255", body(inputs=[{"image": [[300] * 56] * 56}]), None, 422, "inputs.0.image"),
    ("image list negative", body(inputs=[{"image": [[-1] * 56] * 56}]), None, 422, "inputs.0.image"),
    ("image list strings", body(inputs=[{"image": [["a"] * 56] * 56}]), None, 422, "inputs.0.image"),
    ("image a number", body(inputs=[{"image": 7}]), None, 422, "inputs.0.image"),
    ("second image bad", body(inputs=[{"image": GOOD}, {"image": "xx"}]), None, 422, "inputs.1.image"),
    ("too many instances", body(inputs=[{"image": GOOD}] * 300), None, 413, "inputs"),
    # what a newcomer meets: no pydantic internals, the field at fault named, no coercion
    ("image flat list", body(inputs=[{"image": [0] * 3136}]), None, 422, "inputs.0.image"),
    ("image rgb list", body(inputs=[{"image": [[[0, 0, 0]] * 56] * 56}]), None, 422, "inputs.0.image"),
    ("image list booleans", body(inputs=[{"image": [[True] * 56] * 56}]), None, 422, "inputs.0.image"),
    ("data url not png", body(inputs=[{"image": "data:image/jpeg;base64," + jpeg()}]), None, 422, "image"),
    ("budget boolean", body(budget=True), None, 422, "budget"),
    ("budget as a string", body(budget="0.5"), None, 422, "budget"),
    ("timeout string", body(timeout_ms="100"), None, 422, "timeout_ms"),
    ("timeout boolean", body(timeout_ms=True), None, 422, "timeout_ms"),
    ("priority past the levels", body(priority=9), None, 422, "priority"),
    ("priority boolean", body(priority=True), None, 422, "priority"),
]


def test_v1_errors_name_fields_not_pydantic_types(server):
    r = httpx.post(f"{server.url}/v1/predict", json=body(inputs=[{"image": [0] * 3136}]), timeout=30)
    err = r.json()["error"]
    assert err["field"] == "inputs.0.image" and "56 rows of 56" in err["message"]
    assert ".str" not in err["message"] and "Input should be" not in err["message"]
    r = httpx.post(f"{server.url}/v1/predict", json={"inputs": [{"image": GOOD}]}, timeout=30)
    assert r.json()["error"]["field"] == "task"


def test_v1_accepts_what_a_newcomer_sends(server, scenes):
    """A data-URL PNG, and `tasks` as one comma-separated string (as v2 takes it)."""
    image = png(scenes.images[0])
    plain = httpx.post(f"{server.url}/v1/predict", json=body(inputs=[{"image": image}]), timeout=30).json()
    r = httpx.post(
        f"{server.url}/v1/predict",
        json=body(task=None, tasks="sum, count", inputs=[{"image": "data:image/png;base64," + image}]),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["sum"] == plain["outputs"][0]["sum"]
    assert set(r.json()["route"]["tasks"]) == {"sum", "count"}


def test_a_timeout_shorter_than_the_route_names_its_cost(server, scenes):
    r = httpx.post(
        f"{server.url}/v1/predict",
        json=body(inputs=[{"image": GOOD}] * 64, budget="max", min_budget="max", timeout_ms=0.01),
        timeout=30,
    )
    assert r.status_code == 503 and r.headers["retry-after"].isdigit()
    message = r.json()["error"]["message"]
    assert "w100" in message and "ms for 64 instance(s)" in message, message


@pytest.mark.parametrize("case", V1, ids=[c[0] for c in V1])
def test_v1_bad_input(server, case):
    _, data, headers, status, field = case
    if isinstance(data, bytes):
        r = httpx.post(
            f"{server.url}/v1/predict",
            content=data,
            headers=headers or {"content-type": "application/json"},
            timeout=30,
        )
    else:
        r = httpx.post(f"{server.url}/v1/predict", json=data, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert field in err["message"] and err["code"]
    assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200


def test_v1_body_too_large(server):
    r = httpx.post(
        f"{server.url}/v1/predict",
        content=b"x" * (17 * 1024 * 1024),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert r.status_code == 413 and "body" in r.json()["error"]["message"]


def _v2(inputs=None, parameters=None, outputs=None):
    inputs = (
        inputs
        if inputs is not None
        else [{"name": "image", "datatype": "UINT8", "shape": [1, 56, 56], "data": [0] * 3136}]
    )
    req = {"inputs": inputs, "parameters": {"task": "sum"} if parameters is None else parameters}
    if outputs is not None:
        req["outputs"] = outputs
    return req


V2 = [
    ("no task", _v2(parameters={}), None, 400, "parameters.task"),
    ("unknown task", _v2(parameters={"task": "colour"}), None, 400, "parameters.task"),
    ("task not string", _v2(parameters={"task": 3}), None, 400, "parameters.task"),
    ("bad budget", _v2(parameters={"task": "sum", "budget": 2}), None, 400, "budget"),
    ("bad timeout", _v2(parameters={"task": "sum", "timeout": -1}), None, 400, "parameters.timeout"),
    ("bad priority", _v2(parameters={"task": "sum", "priority": "high"}), None, 400, "parameters.priority"),
    (
        "wrong input name",
        _v2(inputs=[{"name": "pixels", "datatype": "UINT8", "shape": [1, 56, 56], "data": [0] * 3136}]),
        None,
        400,
        "inputs",
    ),
    (
        "wrong dtype",
        _v2(inputs=[{"name": "image", "datatype": "FP64", "shape": [1, 56, 56], "data": [0] * 3136}]),
        None,
        400,
        "datatype",
    ),
    (
        "wrong shape",
        _v2(inputs=[{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": [0] * 784}]),
        None,
        400,
        "shape",
    ),
    (
        "data size mismatch",
        _v2(inputs=[{"name": "image", "datatype": "UINT8", "shape": [2, 56, 56], "data": [0] * 3136}]),
        None,
        400,
        "inputs.image.data",
    ),
    (
        "fp32 out of range",
        _v2(inputs=[{"name": "image", "datatype": "FP32", "shape": [1, 56, 56], "data": [200.0] * 3136}]),
        None,
        400,
        "inputs.image.data",
    ),
    (
        "uint8 out of range",
        _v2(inputs=[{"name": "image", "datatype": "UINT8", "shape": [1, 56, 56], "data": [999] * 3136}]),
        None,
        400,
        "inputs.image.data",
    ),
    ("unknown output", _v2(outputs=[{"name": "colour_scores"}]), None, 400, "outputs"),
    (
        "binary size mismatch",
        _v2(
            inputs=[
                {
                    "name": "image",
                    "datatype": "UINT8",
                    "shape": [1, 56, 56],
                    "parameters": {"binary_data_size": 3136},
                }
            ]
        ),
        "short",
        400,
        "binary_data_size",
    ),
]


@pytest.mark.parametrize("case", V2, ids=[c[0] for c in V2])
def test_v2_bad_input(server, case):
    _, req, binary, status, field = case
    if binary:
        header = json.dumps(req).encode()
        r = httpx.post(
            f"{server.url}/v2/models/mnist-scenes/infer",
            content=header + b"\0" * 100,
            headers={"Inference-Header-Content-Length": str(len(header))},
            timeout=30,
        )
    else:
        r = httpx.post(f"{server.url}/v2/models/mnist-scenes/infer", json=req, timeout=30)
    assert r.status_code == status, r.text
    assert field in r.json()["error"]


def test_v2_unknown_model_and_bad_header(server):
    r = httpx.post(f"{server.url}/v2/models/resnet/infer", json=_v2())
    assert r.status_code == 404 and "resnet" in r.json()["error"]
    for body in (b"{}", b"not json", b""):  # the model is looked up first, whatever the body
        r = httpx.post(f"{server.url}/v2/models/mnist/infer", content=body)
        assert r.status_code == 404 and "unknown model 'mnist'" in r.json()["error"], r.text
    r = httpx.post(
        f"{server.url}/v2/models/mnist-scenes/infer",
        content=b"{}",
        headers={"Inference-Header-Content-Length": "999"},
    )
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


def test_unknown_path_and_method(server):
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and "path" == r.json()["error"]["field"]
    r = httpx.get(f"{server.url}/v1/predict")
    assert r.status_code == 405


def test_server_still_answers_correctly_after_bad_inputs(server, scenes):
    r = httpx.post(
        f"{server.url}/v1/predict", json={"task": "count", "inputs": [{"image": png(scenes.images[0])}]}
    )
    assert r.status_code == 200
    assert r.json()["outputs"][0]["count"]["index"] == scenes.count[0]
