"""Step 6 of docs/adapters.md, checked: the unmodified `trunkline serve` with the example's
checkpoint answers /v1, the Open Inference Protocol and Triton's client at two budgets, with
receipts whose FLOPs are the route table's."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "penguins"
BIRD = [39.1, 18.7, 181.0, 3750.0]  # an Adelie


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def server(request, tmp_path_factory):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUNKLINE_")}
    env |= {
        "TRUNKLINE_PORT": str(port),
        "TRUNKLINE_GRPC_PORT": "0",
        "TRUNKLINE_BACKEND": request.param,
        "TRUNKLINE_ONNX_DIR": str(tmp_path_factory.mktemp("onnx")),
        "TRUNKLINE_CACHE_DIR": str(tmp_path_factory.mktemp("cache")),
        "TRUNKLINE_LOG_LEVEL": "warning",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--model", str(CHECKPOINT)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the server exited"
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def table(task: str) -> dict[str, dict]:
    return {row["id"]: row for row in json.loads((CHECKPOINT / "routes.json").read_text())[task]}


@pytest.mark.parametrize("budget", ["min", "max"])
def test_v1_receipts_are_the_route_table(server, budget):
    r = httpx.post(
        f"{server}/v1/predict",
        json={"model": "penguins", "task": "sex", "budget": budget, "inputs": [{"features": BIRD}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    route = body["route"]["tasks"]["sex"]["route"]
    rows = table("sex")
    # min: the cheapest route; max: the best-scoring one (the full route where nothing beats it)
    if budget == "min":
        assert route == next(iter(rows))
    else:
        assert rows[route]["score"] == max(row["score"] for row in rows.values()) and route != next(
            iter(rows)
        )
    assert body["route"]["flops"] == rows[route]["flops"]
    assert body["outputs"][0]["sex"]["label"] in ("female", "male")


def test_v1_bad_features_name_the_field(server):
    r = httpx.post(
        f"{server}/v1/predict",
        json={"model": "penguins", "task": "sex", "inputs": [{"features": [1, True, 2, 3]}]},
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs.0.features"


def test_v2_and_triton_client_at_two_budgets(server):
    c = triton.InferenceServerClient(server.removeprefix("http://"))
    assert c.is_model_ready("penguins")
    x = triton.InferInput("features", [2, 4], "FP32")
    x.set_data_from_numpy(np.array([BIRD, [46.5, 14.4, 217, 4900]], np.float32))  # an Adelie, a Gentoo
    flops = {}
    for budget in ("min", "max"):
        result = c.infer("penguins", [x], parameters={"task": "species", "budget": budget})
        params = result.get_response()["parameters"]
        flops[budget] = params["flops"]
        assert params["flops"] == table("species")[params["route.species"]]["flops"]
        assert result.as_numpy("species_label").tolist() == [0, 2]
    assert flops["min"] < flops["max"]
    json_body = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 4], "data": BIRD}],
        "parameters": {"task": "island", "budget": "max"},
    }
    r = httpx.post(f"{server}/v2/models/penguins/infer", json=json_body)
    assert r.status_code == 200 and r.json()["parameters"]["route.island"] in table("island")
