"""Check a running Trunkline server from outside: /v1/predict and the OIP infer endpoint
answer test scenes correctly, with a receipt of what ran.  Used by container_smoke.sh.

    python deploy/smoke_check.py http://127.0.0.1:8000 [127.0.0.1:8001]

With a second argument, the gRPC front at that address too (tritonclient.grpc).
"""

from __future__ import annotations

import sys

import httpx
import numpy as np

from clients import Client
from models.image.data import make_scenes

MODEL = "mnist-scenes"


def main(url: str) -> None:
    scenes = make_scenes(8, "test", seed=7)
    with Client(url, timeout=60) as client:
        result = client.predict(list(scenes.images), tasks=["count", "sum"], budget="max")
        counts = [int(label) for label in result.labels("count")]
        assert counts == [int(c) + 1 for c in scenes.count], (counts, scenes.count)
        sums = [int(label) for label in result.labels("sum")]
        assert np.mean(np.array(sums) == scenes.sum) >= 0.5, (sums, scenes.sum)
        receipt = result.receipt
        assert set(receipt.tasks) == {"count", "sum"} and receipt.flops > 0, receipt
        assert receipt.flops_fraction <= 1.0 and receipt.backend == "onnxruntime", receipt
        low = client.predict(list(scenes.images[:1]), task="count", budget="low").receipt
        assert low.flops_fraction <= 0.25, low
        print(f"/v1/predict ok: counts {counts}, receipt {receipt.tasks}, low tier {low.flops_fraction:.3f}")

    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [len(scenes.images), 56, 56],
                "datatype": "UINT8",
                "data": scenes.images.reshape(-1).tolist(),
            }
        ],
        "outputs": [{"name": "count_label"}],
        "parameters": {"task": "count", "budget": "medium"},
    }
    r = httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    out = {o["name"]: o for o in answer["outputs"]}
    labels = np.array(out["count_label"]["data"])
    assert (labels == scenes.count).all(), (labels, scenes.count)
    receipt = answer["parameters"]
    assert receipt["flops_fraction"] <= 0.5, receipt
    print(f"/v2/models/{MODEL}/infer ok: receipt flops_fraction {receipt['flops_fraction']:.3f}")
    check_text(url)


def check_text(url: str) -> None:
    """The bundled text model beside mnist-scenes: v1 text and v2 BYTES."""
    texts = ["Where is the Eiffel Tower ?", "URGENT! You have won a 1 week FREE membership, call now"]
    r = httpx.post(
        f"{url}/v1/predict",
        json={
            "model": "text-tasks",
            "tasks": ["question_type", "spam"],
            "inputs": [{"text": t} for t in texts],
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["outputs"][0]["question_type"]["label"] == "LOC", out["outputs"]
    assert out["outputs"][1]["spam"]["label"] == "spam", out["outputs"]
    assert len(out["route"]["tokens"]) == 2, out["route"]
    body = {
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": texts}],
        "parameters": {"task": "sentiment_score", "budget": "low"},
    }
    r = httpx.post(f"{url}/v2/models/text-tasks/infer", json=body, timeout=60)
    assert r.status_code == 200, r.text
    values = {o["name"]: o for o in r.json()["outputs"]}["sentiment_score_value"]["data"]
    assert len(values) == 2 and r.json()["parameters"]["flops_fraction"] <= 0.25
    print(f"text-tasks ok: v1 question_type + spam, v2 sentiment_score {values}")


def check_grpc(address: str) -> None:
    """The same answers over gRPC: health, an image request and a text request with receipts."""
    import grpc
    import tritonclient.grpc as tg

    with grpc.insecure_channel(address) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=10) == b"\x08\x01", "grpc.health.v1: not SERVING"
    client = tg.InferenceServerClient(address)
    assert client.is_server_ready() and client.is_model_ready(MODEL)
    scenes = make_scenes(8, "test", seed=7)
    x = tg.InferInput("image", list(scenes.images.shape), "UINT8")
    x.set_data_from_numpy(scenes.images)
    result = client.infer(MODEL, [x], parameters={"task": "count", "budget": "medium"})
    assert (result.as_numpy("count_label") == scenes.count).all()
    fraction = result.get_response().parameters["flops_fraction"].double_param
    assert 0 < fraction <= 0.5, fraction
    t = tg.InferInput("text", [1], "BYTES")
    spam_text = b"URGENT! You have won a 1 week FREE membership, call now"
    t.set_data_from_numpy(np.array([spam_text], dtype=object))
    spam = client.infer("text-tasks", [t], parameters={"task": "spam"}).as_numpy("spam_label")
    assert list(spam) == [1], spam
    client.close()
    print(f"gRPC {address} ok: health SERVING, counts, receipt flops_fraction {fraction:.3f}, spam")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000")
    if len(sys.argv) > 2:
        check_grpc(sys.argv[2])
