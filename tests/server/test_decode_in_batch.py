"""Inputs are decoded and outputs encoded in the batch, on the compute thread. Every input
form of both APIs gives the answers of the in-process reference: the adapter decoding on
the caller's thread, the extracted modules run on that batch, the task kinds encoding."""

import base64

import httpx
import numpy as np
import orjson
import pytest

from models.adapter import load_adapter
from models.kinds import kind
from routing import Budget, RouteTables
from server.backends import build_backend
from server.batcher import WorkItem, run_batch
from server.settings import Settings

from .helpers import png

TASKS = ["count", "presence", "sum", "segment"]


@pytest.fixture(scope="module")
def reference(scenes):
    """task -> the /v1 outputs of the first 3 scenes at `max`, computed in-process."""
    adapter = load_adapter("mnist-scenes")
    tables = RouteTables(adapter, adapter.route_rows)
    plan = tables.resolve(TASKS, Budget.parse("max"))
    backend = build_backend("torch", adapter, Settings(threads=1), {e.task: [e.route] for e in plan.entries})
    images = scenes.images[:3]
    decoded = np.concatenate([adapter.decode_instance(im.tolist(), "image") for im in images])
    outputs = run_batch(backend, adapter.batches, plan.trunk, [WorkItem(decoded, plan)]).outputs[0]
    per_instance = [
        {t: kind(adapter.tasks[t].kind).to_json(outputs[t][i], adapter.tasks[t].labels, {}) for t in TASKS}
        for i in range(len(images))
    ]
    return per_instance, outputs


def same(a: dict, b: dict) -> None:
    """/v1 outputs equal: labels and indices exactly, scores to float32 rounding."""
    assert a.keys() == b.keys()
    for task in a:
        for field, value in a[task].items():
            if field == "scores":
                np.testing.assert_allclose(b[task][field], value, atol=1e-5)
            else:
                assert b[task][field] == value, (task, field)


def v1(server, values: list) -> list[dict]:
    body = {"tasks": TASKS, "budget": "max", "inputs": [{"image": v} for v in values]}
    r = httpx.post(f"{server.url}/v1/predict", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


@pytest.mark.parametrize("form", ["png", "data-url png", "pixel rows", "pixel rows as floats"])
def test_v1_every_input_form(server, scenes, reference, form):
    images = scenes.images[:3]
    values = {
        "png": lambda: [png(im) for im in images],
        "data-url png": lambda: ["data:image/png;base64," + png(im) for im in images],
        "pixel rows": lambda: [im.astype(int).tolist() for im in images],
        "pixel rows as floats": lambda: [im.astype(float).tolist() for im in images],
    }[form]()
    for got, want in zip(v1(server, values), reference[0]):
        same(want, got)


def v2(server, tensor: dict, raw: bytes | None = None) -> dict[str, np.ndarray]:
    body = {
        "inputs": [tensor],
        "parameters": {"tasks": ",".join(TASKS), "budget": "max", "binary_data_output": True},
    }
    header = orjson.dumps(body)
    headers = {"Inference-Header-Content-Length": str(len(header))} if raw is not None else {}
    r = httpx.post(
        f"{server.url}/v2/models/mnist-scenes/infer",
        content=header + (raw or b""),
        headers=headers,
        timeout=60,
    )
    assert r.status_code == 200, r.text
    n = int(r.headers["Inference-Header-Content-Length"])
    meta, tail, out, offset = orjson.loads(r.content[:n]), r.content[n:], {}, 0
    dtypes = {"FP32": np.float32, "INT64": np.int64, "UINT8": np.uint8}
    for o in meta["outputs"]:
        size = o["parameters"]["binary_data_size"]
        out[o["name"]] = np.frombuffer(tail[offset : offset + size], dtypes[o["datatype"]]).reshape(
            o["shape"]
        )
        offset += size
    return out


@pytest.mark.parametrize("form", ["json UINT8", "json FP32", "binary UINT8", "binary FP32"])
def test_v2_every_input_form(server, scenes, reference, form):
    images = scenes.images[:3].astype(np.uint8)
    shape = [3, 56, 56]
    if form.endswith("FP32"):
        array, datatype = images.astype(np.float32) / 255, "FP32"
    else:
        array, datatype = images, "UINT8"
    tensor = {"name": "image", "datatype": datatype, "shape": shape}
    if form.startswith("binary"):
        raw = array.tobytes()
        out = v2(server, tensor | {"parameters": {"binary_data_size": len(raw)}}, raw)
    else:
        out = v2(server, tensor | {"data": array.reshape(-1).tolist()})
    outputs = reference[1]
    for task in ("count", "sum", "presence"):
        np.testing.assert_allclose(out[f"{task}_scores"], outputs[task], atol=1e-5)
    np.testing.assert_array_equal(out["count_label"], outputs["count"].argmax(1))
    np.testing.assert_array_equal(out["segment_mask"], outputs["segment"].argmax(1))


def test_an_undecodable_request_among_good_ones_fails_alone(server, scenes):
    """A request that passes validation but cannot be decoded, sent with good ones (batched
    together or not): it gets its 4xx naming the field, they get their answers."""
    from concurrent.futures import ThreadPoolExecutor

    good = {"task": "count", "inputs": [{"image": png(scenes.images[0])}]}
    bad = {"task": "count", "inputs": [{"image": base64.b64encode(b"not a png").decode()}]}
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(httpx.post, f"{server.url}/v1/predict", json=bad if i == 3 else good, timeout=60)
            for i in range(8)
        ]
        answers = [f.result() for f in futures]
    assert [r.status_code for r in answers] == [200, 200, 200, 422, 200, 200, 200, 200]
    assert answers[3].json()["error"]["field"] == "inputs.0.image"
    first = answers[0].json()["outputs"][0]
    for i, r in enumerate(answers):
        if i != 3:
            same(first, r.json()["outputs"][0])
