"""The text model beside mnist-scenes on the default server: every task through v1 and v2
(JSON and binary BYTES, Triton's own client), receipts with tokens, bad text inputs."""

from __future__ import annotations

import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

MODEL = "text-tasks"
TASKS = ["sentiment", "question_type", "spam", "sentiment_score"]
TEXTS = [
    "What is the capital of Australia ?",
    "a gorgeous, witty, seductive movie.",
    "call now to claim your prize",
]


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield c
    c.close()


def v1(server, **body) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict", json={"model": MODEL, **body}, timeout=60)


def text_input(texts: list[str], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)
    return tensor


def test_both_bundled_models_are_served(server):
    models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    assert models[MODEL]["family"] == "text" and models[MODEL]["ready"]
    assert models["mnist-scenes"]["family"] == "image"
    meta = httpx.get(f"{server.url}/v2/models/{MODEL}").json()
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    names = {o["name"] for o in meta["outputs"]}
    assert {"sentiment_scores", "sentiment_label", "spam_label", "sentiment_score_value"} <= names


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("binary", [False, True])
def test_every_task_through_v1_and_v2(server, client, task, binary):
    r = v1(server, task=task, budget="low", inputs=[{"text": t} for t in TEXTS])
    assert r.status_code == 200, r.text
    body = r.json()
    receipt = body["route"]
    assert receipt["flops_fraction"] <= 0.25 and receipt["depth"] >= 2
    assert len(receipt["tokens"]) == 3 and receipt["truncated"] is False
    result = client.infer(MODEL, [text_input(TEXTS, binary)], parameters={"task": task, "budget": "low"})
    params = result.get_response()["parameters"]
    assert params[f"route.{task}"] == receipt["tasks"][task]["route"]
    assert params["tokens"] == ",".join(map(str, receipt["tokens"]))
    if task == "sentiment_score":
        values = result.as_numpy("sentiment_score_value")
        assert values.shape == (3,) and values.dtype == np.float32
        np.testing.assert_allclose(values, [o[task]["value"] for o in body["outputs"]], atol=1e-5)
        return
    scores = result.as_numpy(f"{task}_scores")
    np.testing.assert_allclose(scores, [o[task]["scores"] for o in body["outputs"]], atol=1e-5)
    assert list(result.as_numpy(f"{task}_label")) == [o[task]["index"] for o in body["outputs"]]


def test_the_question_tagger_knows_a_location_question(server):
    out = v1(server, task="question_type", inputs=[{"text": "Where is the Eiffel Tower ?"}]).json()
    assert out["outputs"][0]["question_type"]["label"] == "LOC"


def test_a_multi_task_request_runs_the_encoder_once(server):
    r = v1(server, tasks=TASKS, budget="max", inputs=[{"text": TEXTS[1]}])
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out["outputs"][0]) == set(TASKS) and out["route"]["flops_fraction"] <= 1.0
    singles = sum(
        v1(server, task=t, budget="max", inputs=[{"text": TEXTS[1]}]).json()["route"]["flops"] for t in TASKS
    )
    assert out["route"]["flops"] < singles


def test_long_texts_are_truncated_and_the_receipt_says_so(server):
    r = v1(server, task="spam", inputs=[{"text": "free prize " * 400}])
    assert r.status_code == 200 and r.json()["route"]["truncated"] is True
    assert r.json()["route"]["tokens"] == [128]


def test_raw_binary_bytes_as_triton_writes_them(server):
    """Hand-made binary extension: 4-byte little-endian length before each element."""
    raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in TEXTS)
    header = (
        b'{"inputs":[{"name":"text","shape":[3],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],'
        b'"parameters":{"task":"spam"}}' % len(raw)
    )
    r = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=header + raw,
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["spam_scores", "spam_label"]


def v2_json(server, data, shape, datatype="BYTES"):
    body = {
        "inputs": [{"name": "text", "shape": shape, "datatype": datatype, "data": data}],
        "parameters": {"task": "spam"},
    }
    return httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=60)


BAD_V1 = [
    ([{"text": ""}], "inputs.0.text", "non-empty"),
    ([{"text": 12}], "inputs.0.text", "must be a string"),
    ([{"text": None}], "inputs.0.text", "must be a string"),
    ([{"text": ["a"]}], "inputs.0.text", "must be a string"),
    ([{"text": "x" * 10_001}], "inputs.0.text", "the limit is 10000"),
    ([{"image": "abc"}], "inputs.0", "exactly the key 'text'"),
]


@pytest.mark.parametrize(("inputs", "field", "message"), BAD_V1, ids=[b[1] + ":" + b[2] for b in BAD_V1])
def test_bad_text_inputs_v1(server, inputs, field, message):
    r = v1(server, task="spam", inputs=inputs)
    assert r.status_code in (400, 422), r.text
    error = r.json()["error"]
    assert message in error["message"] and field in error["message"] + error.get("field", "")


BAD_V2 = [
    ([""], [1], "BYTES", "non-empty"),
    ([1], [1], "BYTES", "must be a string"),
    (["a"], [2], "BYTES", "must hold 2 strings"),
    (["a"], [1], "FP32", "must be BYTES"),
    (["a", "b"], [1, 2], "BYTES", "[N] or [N, 1]"),
]


@pytest.mark.parametrize(("data", "shape", "datatype", "message"), BAD_V2, ids=[b[3] for b in BAD_V2])
def test_bad_text_inputs_v2(server, data, shape, datatype, message):
    r = v2_json(server, data, shape, datatype)
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]


def test_non_utf8_binary_is_a_400(server):
    raw = struct.pack("<I", 2) + b"\xff\xfe"
    header = (
        b'{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],'
        b'"parameters":{"task":"spam"}}' % len(raw)
    )
    r = httpx.post(
        f"{server.url}/v2/models/{MODEL}/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]
    assert v2_json(server, ["still fine"], [1]).status_code == 200


def test_a_text_task_without_a_model_goes_to_the_text_model(server):
    r = httpx.post(f"{server.url}/v1/predict", json={"task": "spam", "inputs": [{"text": "win a prize now"}]})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "text-tasks"
