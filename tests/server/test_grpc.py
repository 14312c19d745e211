"""The gRPC front against a real server, through Triton's own gRPC client (and its generated
messages for what the client does not write itself: typed contents, grpc.health.v1): health,
metadata, infer for both models in every input form, budgets and receipts equal to the HTTP
API's answers for the same inputs, and the errors the request itself can cause."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

TIMING = {"queue_ms", "compute_ms", "batch_size", "priority"}  # of the batch it ran in, not the request
TEXTS = ["win a prize now, click here", "what is the capital of France?", "I loved this film"]


@pytest.fixture(scope="module")
def client(server):
    c = tg.InferenceServerClient(server.grpc)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    c = th.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def image_input(module, images: np.ndarray, datatype: str = "UINT8"):
    x = module.InferInput("image", list(images.shape), datatype)
    x.set_data_from_numpy(images if datatype == "UINT8" else (images / 255).astype(np.float32))
    return x


def text_input(module, texts: list[str]):
    x = module.InferInput("text", [len(texts)], "BYTES")
    x.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object))
    return x


def both(client, http, model: str, inputs, **parameters):
    """(gRPC result, HTTP v2 result) of the same request."""
    g = client.infer(model, inputs[0], parameters=parameters)
    h = http.infer(model, inputs[1], parameters=parameters)
    return g, h


def receipt(result) -> dict:
    response = result.get_response()
    if isinstance(response, dict):
        return {k: v for k, v in response["parameters"].items() if k not in TIMING}
    params = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in response.parameters.items()}
    return {k: v for k, v in params.items() if k not in TIMING}


def outputs_equal(g, h, names: list[str]) -> None:
    for name in names:
        a, b = g.as_numpy(name), h.as_numpy(name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, atol=1e-4, err_msg=name)


def test_health_and_server_metadata(client, server):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mnist-scenes") and client.is_model_ready("text-tasks")
    assert not client.is_model_ready("text-tasks", "7")
    meta = client.get_server_metadata()
    assert meta.name == "trunkline" and "model_repository" in meta.extensions
    with grpc.insecure_channel(server.grpc) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")  # bytes in, bytes out
        # HealthCheckRequest{service = 1} and HealthCheckResponse{status = SERVING (1)}, on the wire
        request = lambda service: b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
        for service in ("", "inference.GRPCInferenceService", "liveness"):
            assert check(request(service)) == b"\x08\x01", service
        with pytest.raises(grpc.RpcError) as e:
            check(request("nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        watch = channel.unary_stream("/grpc.health.v1.Health/Watch")(b"")
        assert next(watch) == b"\x08\x01"
        watch.cancel()


@pytest.mark.parametrize("model", ["mnist-scenes", "text-tasks"])
def test_model_metadata_is_the_http_apis(client, http, model):
    g = client.get_model_metadata(model, as_json=True)
    h = http.get_model_metadata(model)
    assert g["name"] == h["name"] and g["versions"] == h["versions"] and g["platform"] == h["platform"]
    for a, b in zip(g["inputs"] + g["outputs"], h["inputs"] + h["outputs"], strict=True):
        assert (a["name"], a["datatype"], [int(d) for d in a["shape"]]) == (
            b["name"],
            b["datatype"],
            b["shape"],
        )


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("budget", ["low", "max"])
def test_images_answer_as_over_http(client, http, scenes, datatype, budget):
    images = scenes.images[:3].astype(np.uint8)
    g, h = both(
        client, http, "mnist-scenes", (
            [image_input(tg, images, datatype)], [image_input(th, images, datatype)]
        ), tasks="count,sum", budget=budget,
    )  # fmt: skip
    assert receipt(g) == receipt(h)
    outputs_equal(g, h, ["count_scores", "count_label", "sum_scores", "sum_label"])


def test_budgets_buy_the_routes_the_table_lists(client, server, scenes):
    import httpx

    table = httpx.get(f"{server.url}/v1/models/mnist-scenes", timeout=10).json()["tasks"]["count"]["routes"]
    flops = {r["id"]: r["flops"] for r in table}
    got = {}
    for budget in ("low", "max"):
        r = client.infer(
            "mnist-scenes",
            [image_input(tg, scenes.images[:1])],
            parameters={"task": "count", "budget": budget},
        )
        p = receipt(r)
        got[budget] = p["flops"]
        assert p["flops"] == flops[p["route.count"]] and p["budget_requested"] == budget
    assert got["low"] < got["max"]


def test_text_answers_as_over_http_with_budget_auto(client, http):
    g, h = both(
        client, http, "text-tasks", ([text_input(tg, TEXTS)], [text_input(th, TEXTS)]),
        tasks="spam,question_type", budget="auto", confidence=0.9,
    )  # fmt: skip
    assert receipt(g) == receipt(h)
    assert receipt(g)["escalations.spam.0"]
    names = ["spam_scores", "spam_label", "spam_confidence", "question_type_scores", "question_type_label"]
    outputs_equal(g, h, names)


def typed_request(model: str, name: str, datatype: str, shape: list[int], field: str, values, **params):
    request = service_pb2.ModelInferRequest(model_name=model)
    for k, v in params.items():
        request.parameters[k].string_param = v
    tensor = request.inputs.add(name=name, datatype=datatype, shape=shape)
    getattr(tensor.contents, field).extend(values)
    return request


def test_typed_contents_answer_as_raw_contents(client, stub, scenes):
    images = scenes.images[:2].astype(np.uint8)
    typed = stub.ModelInfer(
        typed_request(
            "mnist-scenes",
            "image",
            "UINT8",
            list(images.shape),
            "uint_contents",
            images.ravel().tolist(),
            task="sum",
        )
    )
    raw = client.infer("mnist-scenes", [image_input(tg, images)], parameters={"task": "sum"}).get_response()
    assert [o.name for o in typed.outputs] == [o.name for o in raw.outputs]
    for a, b in zip(typed.raw_output_contents, raw.raw_output_contents):
        np.testing.assert_allclose(np.frombuffer(a, np.float32), np.frombuffer(b, np.float32), atol=1e-5)

    texts = stub.ModelInfer(
        typed_request(
            "text-tasks",
            "text",
            "BYTES",
            [len(TEXTS)],
            "bytes_contents",
            [t.encode() for t in TEXTS],
            task="spam",
        )
    )
    raw = client.infer("text-tasks", [text_input(tg, TEXTS)], parameters={"task": "spam"}).get_response()
    names = [o.name for o in texts.outputs]
    assert names == ["spam_scores", "spam_label"] and names == [o.name for o in raw.outputs]
    assert texts.raw_output_contents[1] == raw.raw_output_contents[1]  # the labels


def test_requested_outputs_only(client, scenes):
    out = tg.InferRequestedOutput("count_label")
    r = client.infer(
        "mnist-scenes", [image_input(tg, scenes.images[:2])], outputs=[out], parameters={"task": "count"}
    )
    assert [o.name for o in r.get_response().outputs] == ["count_label"]


def code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(InferenceServerException) as e:
        fn()
    return e.value.status(), e.value.message()


INVALID = "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "model, inputs, params, status, says",
    [
        ("nope", "image", {"task": "count"}, "StatusCode.NOT_FOUND", "unknown model 'nope'"),
        ("mnist-scenes", "image", {}, INVALID, "parameters.task"),
        ("mnist-scenes", "image", {"task": "spam"}, INVALID, "unknown task 'spam'"),
        ("mnist-scenes", "image", {"task": "count", "budget": "lots"}, INVALID, "budget"),
        ("mnist-scenes", "image", {"task": "count", "budget": "auto", "confidence": 1.0}, INVALID,
         "parameters.confidence"),
        ("mnist-scenes", "text", {"task": "count"}, INVALID, "expected exactly one input"),
        ("text-tasks", "image", {"task": "spam"}, INVALID, "expected exactly one input"),
    ],
)  # fmt: skip
def test_errors_name_what_is_wrong(client, scenes, model, inputs, params, status, says):
    x = image_input(tg, scenes.images[:1]) if inputs == "image" else text_input(tg, ["hello"])
    got, message = code(lambda: client.infer(model, [x], parameters=params))
    assert got == status and says in message, message


@pytest.mark.parametrize(
    "shape, field, values, says",
    [
        ([1, 56, 55], "uint_contents", [0] * 3080, "image shape must be [N, 56, 56]"),
        ([1, 56, 56], "uint_contents", [0] * 10, "needs 3136"),
        ([1, 56, 56], "fp32_contents", [0.0] * 3136, "UINT8 data goes in contents.uint_contents"),
        ([1, 56, 56], "uint_contents", [300] * 3136, "[0, 255]"),
        ([2**40, 56, 56], "uint_contents", [0] * 3136, "exceeds the limit"),
    ],
)
def test_bad_typed_contents_are_invalid_arguments(stub, shape, field, values, says):
    request = typed_request("mnist-scenes", "image", "UINT8", shape, field, values, task="count")
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and says in e.value.details(), e.value.details()


def test_a_malformed_message_is_an_invalid_argument_not_a_server_error(server, client):
    with grpc.insecure_channel(server.grpc) as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as e:
            infer(b"\x0a\xff\xff\xff\x0f")  # field 1, a length far past the end
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert client.is_server_live()


def test_a_method_trunkline_does_not_serve_is_unimplemented(client):
    status, _ = code(lambda: client.get_model_config("mnist-scenes"))
    assert status == "StatusCode.UNIMPLEMENTED"


def test_a_timeout_no_route_can_meet_is_refused_before_it_runs(client, scenes):
    """A deadline too short for any route is refused at admission, before it runs, as the same
    `timeout` parameter would be (UNAVAILABLE, with when to retry)."""
    r = client.infer(
        "mnist-scenes", [image_input(tg, scenes.images[:1])], parameters={"task": "count"}, client_timeout=30
    )
    assert receipt(r)["route.count"]
    with pytest.raises(InferenceServerException) as e:
        client.infer(
            "mnist-scenes", [image_input(tg, scenes.images[:1])], parameters={"task": "count"}, timeout=1
        )
    assert e.value.status() == "StatusCode.UNAVAILABLE" and "timeout_ms" in e.value.message()


def test_refusals_say_when_to_retry_and_reserved_parameters_are_checked(stub, scenes):
    images = scenes.images[:1].astype(np.uint8)
    request = typed_request(
        "mnist-scenes", "image", "UINT8", [1, 56, 56], "uint_contents", images.ravel().tolist(), task="count"
    )
    request.parameters["timeout"].int64_param = 1  # µs: no route is that fast
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(request)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    trailing = dict(e.value.trailing_metadata())
    assert int(trailing["retry-after"]) >= 1
    assert int(trailing["grpc-retry-pushback-ms"]) == 1000 * int(trailing["retry-after"])
    for key, value in (("timeout", -5), ("priority", -1)):
        request = typed_request(
            "mnist-scenes",
            "image",
            "UINT8",
            [1, 56, 56],
            "uint_contents",
            images.ravel().tolist(),
            task="count",
        )
        request.parameters[key].int64_param = value
        for deadline in (None, 30):  # a call deadline does not stand in for a bad timeout
            with pytest.raises(grpc.RpcError) as e:
                stub.ModelInfer(request, timeout=deadline)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"parameters.{key}" in e.value.details()
