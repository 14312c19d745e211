"""The gRPC front under the reliability suite's conditions: a full queue, a deadline passing in
the queue, SIGTERM with calls in flight (batches held at the gate, so counts are exact, not
timed), and a fuzz of random and mutated ModelInfer messages while another client's answers
are checked throughout."""

from __future__ import annotations

import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from .conftest import Watched

QUEUE = 4
SERVER_ERRORS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}


def image_request(images: np.ndarray, **params) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="mnist-scenes")
    request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    request.raw_input_contents.append(images.astype(np.uint8).tobytes())
    for k, v in {"task": "count", **params}.items():
        if isinstance(v, int):
            request.parameters[k].int64_param = v
        else:
            request.parameters[k].string_param = v
    return request


def text_request(texts: list[bytes], **params) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="text-tasks")
    request.inputs.add(name="text", datatype="BYTES", shape=[len(texts)])
    request.raw_input_contents.append(b"".join(len(t).to_bytes(4, "little") + t for t in texts))
    for k, v in {"task": "spam", **params}.items():
        request.parameters[k].string_param = v
    return request


def call(stub, request, timeout: float = 60):
    """(status code, response or None, trailing metadata)."""
    try:
        response, c = stub.ModelInfer.with_call(request, timeout=timeout)
        return grpc.StatusCode.OK, response, dict(c.trailing_metadata())
    except grpc.RpcError as e:
        return e.code(), None, dict(e.trailing_metadata() or ())


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def gated(tmp_path_factory, known_input):
    s = Watched(tmp_path_factory.mktemp("grpc"), TRUNKLINE_MAX_QUEUE=str(QUEUE)).start(known_input)
    yield s
    s.release()
    s.stop()


@pytest.fixture
def server(gated, healthy):
    return healthy(gated)


@pytest.fixture(scope="module")
def stub(gated):
    with grpc.insecure_channel(gated.grpc) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(32) as p:
        yield p


def occupy(server: Watched, stub, pool, request):
    server.hold()
    running = pool.submit(call, stub, request)
    wait_for(lambda: server.metric("trunkline_in_flight_requests") == 1)
    wait_for(lambda: server.metric("trunkline_queue_depth") == 0)
    return running


def test_a_full_queue_is_resource_exhausted_with_when_to_retry(server, stub, pool, scenes):
    one = image_request(scenes.images[:1])
    running = occupy(server, stub, pool, one)
    queued = [pool.submit(call, stub, one) for _ in range(QUEUE)]
    wait_for(lambda: server.metric("trunkline_queue_depth") == QUEUE)
    extra = [call(stub, one) for _ in range(5)]
    assert [c for c, _, _ in extra] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
    assert all(m["retry-after"] == "1" and m["grpc-retry-pushback-ms"] == "1000" for _, _, m in extra)
    server.release()
    assert [f.result()[0] for f in [running, *queued]] == [grpc.StatusCode.OK] * (QUEUE + 1)


@pytest.mark.parametrize("by", ["timeout parameter", "call deadline"])
def test_a_deadline_passing_in_the_queue_is_deadline_exceeded_and_never_runs(server, stub, pool, scenes, by):
    running = occupy(server, stub, pool, image_request(scenes.images[:1]))
    executed = server.executed()
    if by == "timeout parameter":
        code, _, _ = call(stub, image_request(scenes.images[1:2], timeout=800_000))  # µs
    else:
        code, _, _ = call(stub, image_request(scenes.images[1:2]), timeout=0.8)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for(lambda: server.metric("trunkline_queue_depth") == 0, timeout=2)
    server.release()
    assert running.result()[0] == grpc.StatusCode.OK
    assert server.executed() - executed == 1  # the running call only


def test_sigterm_answers_the_calls_in_flight_refuses_new_ones_and_exits_0(tmp_path, known_input, scenes):
    server = Watched(tmp_path, TRUNKLINE_DRAIN_TIMEOUT_S="20").start(known_input)
    try:
        with grpc.insecure_channel(server.grpc) as channel, ThreadPoolExecutor(4) as pool:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            server.hold()
            in_flight = [pool.submit(call, stub, image_request(scenes.images[i : i + 1])) for i in range(4)]
            wait_for(lambda: server.metric("trunkline_in_flight_requests") == 4)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            code, _, metadata = call(stub, image_request(scenes.images[:1]), timeout=10)
            assert code == grpc.StatusCode.UNAVAILABLE, code
            server.release()
            assert [f.result()[0] for f in in_flight] == [grpc.StatusCode.OK] * 4
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.release()
        if server.proc.poll() is None:
            server.proc.kill()


# -- fuzz ---------------------------------------------------------------------------------
SHAPES = [[], [0], [1], [-1], [3], [1, 56, 56], [2, 56, 56], [1, 1, 56, 56], [1, 56, 55], [2**62, 56, 56],
          [-(2**62)], [1, 2**31, 2**31], [5, 1]]  # fmt: skip
DATATYPES = ["UINT8", "FP32", "BYTES", "INT64", "FP16", "BOOL", "", "uint8", "FOO", "FP64"]
CONTENTS = ["uint_contents", "fp32_contents", "bytes_contents", "int64_contents", "bool_contents"]
PARAMS = {
    "task": ["count", "spam", "", "count,sum", "nope", 7, True],
    "tasks": ["count,sum", ",", "x" * 300],
    "budget": ["low", "max", "auto", "0.5", "-1", "nan", 0.3, 2, False],
    "min_budget": ["low", "banana", 0.1],
    "confidence": [0.5, 0, 1, -1, float("nan"), "0.9", True],
    "timeout": [1, -5, 10**12, 0.5, "soon"],
    "priority": [0, 1, -1, 2**40, "high"],
}


def _set(param, value) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def random_request(rng: random.Random, scenes) -> service_pb2.ModelInferRequest:
    """A request with each part drawn from valid and invalid values."""
    request = service_pb2.ModelInferRequest(model_name=rng.choice(["mnist-scenes", "text-tasks", "", "nope"]))
    for key in rng.sample(list(PARAMS), rng.randint(0, 4)):
        _set(request.parameters[key], rng.choice(PARAMS[key]))
    raw = rng.random() < 0.6
    for _ in range(rng.choice([0, 1, 1, 1, 2])):
        t = request.inputs.add(
            name=rng.choice(["image", "text", "", "x" * 200]),
            datatype=rng.choice(DATATYPES),
            shape=rng.choice(SHAPES),
        )
        if raw:
            size = rng.choice([0, 1, 3136, 6272, 4 * 3136, rng.randint(0, 20000)])
            if t.datatype == "BYTES" and rng.random() < 0.5:  # length prefixes, some lying
                texts = [b"hello", "é".encode(), b"\xff\xfe"][: rng.randint(1, 3)]
                data = b"".join(rng.choice([len(x), 2**31, 0]).to_bytes(4, "little") + x for x in texts)
            elif rng.random() < 0.5:
                data = scenes.images[: max(1, size // 3136)].tobytes()[:size]
            else:
                data = rng.randbytes(size)
            request.raw_input_contents.append(data)
        else:
            field = rng.choice(CONTENTS)
            n = rng.choice([0, 1, 3136, 3137])
            if field == "bytes_contents":
                values = [rng.randbytes(rng.randint(0, 8)) for _ in range(min(n, 50))]
            elif field == "bool_contents":
                values = [bool(rng.getrandbits(1))] * n
            elif field == "fp32_contents":
                values = [rng.choice([0.0, 0.5, 1.0, 7.0, float("nan"), float("inf")])] * n
            else:
                values = [rng.choice([0, 1, 255, 256, 2**31])] * n
            getattr(t.contents, field).extend(values)
    if rng.random() < 0.2:  # raw contents that do not match the inputs
        request.raw_input_contents.append(b"\x00" * rng.randint(0, 100))
    if rng.random() < 0.2:
        request.outputs.add(name=rng.choice(["count_label", "nope", "spam_scores", ""]))
    return request


def mutated(rng: random.Random, message: bytes) -> bytes:
    """Bytes of a valid message with a few bytes flipped, cut or inserted."""
    data = bytearray(message)
    for _ in range(rng.randint(1, 4)):
        what, at = rng.random(), rng.randrange(len(data) or 1)
        if what < 0.5 and data:
            data[at] = rng.getrandbits(8)
        elif what < 0.75:
            data = data[:at]
        else:
            data[at:at] = rng.randbytes(rng.randint(1, 6))
    return bytes(data)


def test_fuzzed_infer_messages_never_make_a_server_error_nor_disturb_other_clients(
    tmp_path, known_input, scenes
):
    server = Watched(tmp_path, TRUNKLINE_MODEL="mnist-scenes,text-tasks").start(known_input)
    try:
        with grpc.insecure_channel(server.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            raw_infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            known = image_request(scenes.images[:2], task="sum", budget="medium")
            expected = stub.ModelInfer(known).raw_output_contents
            texts = text_request([b"win a prize now", b"see you at lunch"])
            expected_text = stub.ModelInfer(texts).raw_output_contents[1]
            stop, witnessed, wrong = threading.Event(), [0], []

            def witness() -> None:  # another client, whose answers must not change
                while not stop.is_set():
                    for request, want in ((known, expected), (texts, None)):
                        got = stub.ModelInfer(request, timeout=60).raw_output_contents
                        if want is not None:
                            a, b = np.frombuffer(got[0], np.float32), np.frombuffer(want[0], np.float32)
                            if not np.allclose(a, b, atol=1e-4) or got[1] != want[1]:
                                wrong.append(got)
                        elif got[1] != expected_text:
                            wrong.append(got)
                        witnessed[0] += 1

            watcher = threading.Thread(target=witness, daemon=True)
            watcher.start()
            rng, codes = random.Random(20261207), {}
            valid = [known.SerializeToString(), texts.SerializeToString()]
            for i in range(800):
                if i % 2:
                    body = mutated(rng, rng.choice(valid))
                else:
                    body = random_request(rng, scenes).SerializeToString()
                try:
                    raw_infer(body, timeout=60)
                    code = grpc.StatusCode.OK
                except grpc.RpcError as e:
                    code = e.code()
                    assert code not in SERVER_ERRORS, (code, e.details(), body[:200])
                codes[code.name] = codes.get(code.name, 0) + 1
            stop.set()
            watcher.join(timeout=60)
        assert not wrong and witnessed[0] >= 10, (len(wrong), witnessed)
        assert codes.get("INVALID_ARGUMENT", 0) > 400 and codes.get("OK", 0) > 0, codes
        server.check_healthy(server.proc.pid)
    finally:
        server.stop()
