"""Budget auto on the default test server (torch, both bundled models): who escalates, what an
escalated row answers, what its FLOPs are, the receipt, and every bad value."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.adapter import load_adapter
from models.routes import Route
from tests.server.helpers import payload

TEXT = "text-tasks"


@pytest.fixture(scope="module")
def texts():
    from models.text.data import load_task

    return load_task("sentiment").split("test").texts[:24]


@pytest.fixture(scope="module")
def text_adapter():
    return load_adapter(TEXT)


@pytest.fixture(scope="module")
def image_adapter():
    return load_adapter("mnist-scenes")


def v1(server, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/predict", json=body, timeout=120)


def auto_text(server, texts, task="sentiment", confidence=0.9, **extra) -> dict:
    body = {"model": TEXT, "budget": "auto", "confidence": confidence, **extra}
    if task is not None:
        body["task"] = task
    r = v1(server, {**body, "inputs": [{"text": t} for t in texts]})
    assert r.status_code == 200, r.text
    return r.json()


def ladders(server, model: str) -> dict[str, list[str]]:
    return httpx.get(f"{server.url}/v1/models/{model}", timeout=30).json()["ladders"]


def test_models_list_their_ladders(server):
    text = ladders(server, TEXT)
    assert set(text) == {"sentiment", "question_type", "spam"}  # not the regression task
    images = ladders(server, "mnist-scenes")
    assert set(images) == {"count", "presence", "sum", "segment"}
    for ladder in [*text.values(), *images.values()]:
        assert len(ladder) >= 1 and len(set(ladder)) == len(ladder)
    assert len(text["sentiment"]) == 2 and len(images["sum"]) == 3 and images["count"] == ["w25-k1-d25"]


def test_a_confident_row_is_never_escalated_and_an_unsure_one_climbs(server, texts):
    c = 0.9
    ladder = ladders(server, TEXT)["sentiment"]
    body = auto_text(server, texts, confidence=c)
    rows = body["route"]["rows"]
    assert len(rows) == len(texts) == len(body["outputs"])
    climbed = 0
    for row, out in zip(rows, body["outputs"]):
        r = row["tasks"]["sentiment"]
        assert r["escalations"] == ladder[: len(r["escalations"])]  # up the ladder, in order
        assert r["route"] == r["escalations"][-1]
        assert all(x < c for x in r["confidences"][:-1])  # each rung below c sent it on
        if r["confidences"][0] >= c:
            assert len(r["escalations"]) == 1
        elif len(r["escalations"]) < len(ladder):
            assert r["confidences"][-1] >= c  # it stopped because it was sure
        assert out["sentiment"]["confidence"] == pytest.approx(r["confidences"][-1], abs=1e-4)
        climbed += len(r["escalations"]) > 1
    assert 0 < climbed < len(texts), "a mixed set of texts: some easy, some hard"
    receipt = body["route"]
    assert receipt["budget_requested"] == "auto" and receipt["confidence"] == c
    assert receipt["flops_total"] == pytest.approx(sum(r["flops"] for r in rows), abs=len(rows))


def _text_probs(adapter, task: str, route_id: str, text: str) -> list[float]:
    route = Route.parse(route_id)
    trunk, path = adapter.trunk_module(route), adapter.path_module(task, route)
    ((_, batch),) = adapter.batches([adapter.tokenize([text])])
    x = torch.from_numpy(batch)
    with torch.inference_mode():
        return path(trunk(x), x)[0].tolist()


def test_an_escalated_row_answers_as_the_static_route_of_its_rung(server, texts, text_adapter):
    """One text per request (batch 1, as the reference runs): the scores are those of the
    route that answered, bit for bit (torch backend; the server computes with one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        checked = 0
        for text in texts[:12]:
            body = auto_text(server, [text], confidence=0.95)
            route = body["route"]["rows"][0]["tasks"]["sentiment"]["route"]
            assert body["outputs"][0]["sentiment"]["scores"] == _text_probs(
                text_adapter, "sentiment", route, text
            )
            checked += len(body["route"]["rows"][0]["tasks"]["sentiment"]["escalations"]) > 1
        assert checked > 0, "some of these texts must have escalated"
    finally:
        torch.set_num_threads(threads)


def _counted(module, x) -> int:
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


def test_flops_count_every_rung_run_as_torch_counts_them(server, scenes, image_adapter, texts, text_adapter):
    body = v1(server, payload(scenes.images[:6], task="sum", budget="auto", confidence=0.99)).json()
    model = image_adapter.model
    for i, row in enumerate(body["route"]["rows"]):
        x = torch.from_numpy(scenes.images[i : i + 1].astype(np.float32) / 255.0)[:, None]
        rungs = row["tasks"]["sum"]["escalations"]
        expected = sum(_counted(model.extract({"sum": Route.parse(r)}), x) for r in rungs)
        assert row["flops"] == expected, rungs
    assert any(len(r["tasks"]["sum"]["escalations"]) > 1 for r in body["route"]["rows"])

    text = auto_text(server, texts[:4], confidence=0.99)
    for t, row, tokens in zip(texts, text["route"]["rows"], text["route"]["tokens"]):
        ((_, batch),) = text_adapter.batches([text_adapter.tokenize([t])])
        assert batch.shape[-1] == tokens
        rungs = row["tasks"]["sentiment"]["escalations"]
        model = text_adapter.model
        expected = sum(
            _counted(model.extract({"sentiment": Route.parse(r)}), torch.from_numpy(batch)) for r in rungs
        )
        assert row["flops"] == expected, rungs


def test_a_heavy_request_of_easy_and_hard_rows_answers_every_row(server, scenes):
    images = np.concatenate([scenes.images] * 4)  # 64
    body = v1(server, payload(images, task="presence", budget="auto", confidence=0.95)).json()
    assert len(body["outputs"]) == len(body["route"]["rows"]) == 64
    lengths = [len(r["tasks"]["presence"]["escalations"]) for r in body["route"]["rows"]]
    assert all("labels" in o["presence"] and "confidence" in o["presence"] for o in body["outputs"])
    assert min(lengths) >= 1
    # the same image always climbs as far: rows of one request never mix up
    assert lengths[:16] == lengths[16:32] == lengths[32:48] == lengths[48:]


def test_each_task_of_a_multi_task_request_climbs_on_its_own(server, scenes):
    """A task climbs its own ladder when its own confidence is below c, whatever the other's."""
    c = 0.99
    body = v1(server, payload(scenes.images[:8], tasks=["count", "sum"], budget="auto", confidence=c)).json()
    single = v1(server, payload(scenes.images[:8], task="sum", budget="auto", confidence=c)).json()
    climbed = set()
    for row, alone in zip(body["route"]["rows"], single["route"]["rows"]):
        assert set(row["tasks"]) == {"count", "sum"}
        assert row["tasks"]["sum"]["escalations"] == alone["tasks"]["sum"]["escalations"]
        climbed |= {t for t, r in row["tasks"].items() if len(r["escalations"]) > 1}
    assert climbed == {"sum"}, "count is sure of these scenes at the first rung, sum is not"
    for o in body["outputs"]:
        assert {"count", "sum"} <= set(o)


def test_tasks_whose_ladders_use_other_trunks_climb_each_their_own(server, texts):
    """question_type's ladder has a middle rung sentiment's has not: the request runs it for
    question_type alone, and each task answers as it would alone."""
    ladder = ladders(server, TEXT)
    assert len(ladder["question_type"]) > len(ladder["sentiment"])  # the bundled fits differ
    both = auto_text(server, texts[:12], task=None, tasks=["sentiment", "question_type"], confidence=0.95)
    for t in ("sentiment", "question_type"):
        alone = auto_text(server, texts[:12], task=t, confidence=0.95)
        for row, single, out, single_out in zip(
            both["route"]["rows"], alone["route"]["rows"], both["outputs"], alone["outputs"]
        ):
            assert row["tasks"][t]["escalations"] == single["tasks"][t]["escalations"]
            assert row["tasks"][t]["escalations"] == ladder[t][: len(row["tasks"][t]["escalations"])]
            np.testing.assert_allclose(out[t]["scores"], single_out[t]["scores"], atol=1e-5)


@pytest.mark.parametrize("bad", [0, 1, -1, "0.9", True, 1.5])
def test_a_bad_confidence_is_422_naming_it(server, scenes, bad):
    r = v1(server, payload(scenes.images[:1], task="sum", budget="auto", confidence=bad))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "confidence"


def test_nan_confidence_is_a_4xx_naming_it(server, scenes):
    body = payload(scenes.images[:1], task="sum", budget="auto")
    raw = httpx.Request("POST", "/", json=body).content.decode()[:-1] + ',"confidence":NaN}'
    r = httpx.post(
        f"{server.url}/v1/predict", content=raw, headers={"content-type": "application/json"}, timeout=30
    )
    assert 400 <= r.status_code < 500 and "confidence" in r.text, r.text


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"budget": "low", "confidence": 0.9}, "confidence"),
        ({"budget": "low", "max_budget": "max"}, "max_budget"),
        ({"budget": "auto", "max_budget": "huge"}, "max_budget"),
        ({"budget": "auto", "max_budget": "low", "min_budget": "max"}, "max_budget"),
        ({"budget": "auto", "latency_ms": 5}, "latency_ms"),
    ],
)
def test_auto_fields_in_the_wrong_place_are_422(server, scenes, extra, field):
    r = v1(server, payload(scenes.images[:1], task="sum", **extra))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_a_regression_task_has_no_auto_and_says_why(server):
    r = v1(server, {"model": TEXT, "task": "sentiment_score", "budget": "auto", "inputs": [{"text": "fine"}]})
    assert r.status_code == 422 and "regression" in r.json()["error"]["message"], r.text


def test_max_and_min_budget_bound_the_ladder(server, scenes):
    """The first rung is the route min_budget gives a static request (auto never answers
    below it); no rung costs more than max_budget."""
    images = scenes.images[:8]
    floor = v1(server, payload(images, task="sum", budget=0.4)).json()["route"]["tasks"]["sum"]["route"]
    body = v1(
        server, payload(images, task="sum", budget="auto", confidence=0.999, min_budget=0.4, max_budget=0.7)
    ).json()
    routes = {
        r["id"]: r for r in httpx.get(f"{server.url}/v1/models/mnist-scenes").json()["tasks"]["sum"]["routes"]
    }
    for row in body["route"]["rows"]:
        rungs = row["tasks"]["sum"]["escalations"]
        assert rungs[0] == floor
        assert all(routes[r]["flops_fraction"] <= 0.7 for r in rungs), rungs


def test_v2_and_tritonclient_speak_auto(server, scenes):
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    try:
        tensor = triton.InferInput("image", [4, 56, 56], "UINT8")
        tensor.set_data_from_numpy(scenes.images[:4])
        result = client.infer(
            "mnist-scenes", [tensor], parameters={"task": "sum", "budget": "auto", "confidence": 0.95}
        )
        confidence = result.as_numpy("sum_confidence")
        assert confidence.shape == (4,) and confidence.dtype == np.float32
        params = result.get_response()["parameters"]
        assert params["budget_requested"] == "auto"
        for i in range(4):
            rungs = params[f"escalations.sum.{i}"].split(",")
            confidences = [float(x) for x in params[f"confidences.sum.{i}"].split(",")]
            assert len(rungs) == len(confidences)
            assert math.isclose(confidences[-1], float(confidence[i]), abs_tol=1e-4)
        with pytest.raises(triton.InferenceServerException, match="confidence") as err:
            client.infer(
                "mnist-scenes", [tensor], parameters={"task": "sum", "budget": "auto", "confidence": 2}
            )
        assert "400" in str(err.value.status())
    finally:
        client.close()
