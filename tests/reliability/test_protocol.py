"""The wire: binary-extension lies, parser limits at limit-1/limit/limit+1 (raw and gzip),
JSON depth, a million one-byte chunks, slowloris connections, strict types, and the auth
matrix over every route. One server with a small body limit and a token."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import time

import httpx
import numpy as np
import pytest

from tests.server.helpers import payload

from .conftest import Watched

LIMIT = 2 * 1024 * 1024  # above the million one-byte chunks
TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
INFER = "/v2/models/mnist-scenes/infer"


@pytest.fixture(scope="module")
def wire(tmp_path_factory, scenes):
    s = Watched(
        tmp_path_factory.mktemp("wire"),
        TRUNKLINE_MAX_BODY_BYTES=str(LIMIT),
        TRUNKLINE_AUTH_TOKEN=TOKEN,
        TRUNKLINE_ACCESS_LOG="true",
        TRUNKLINE_LOG_LEVEL="debug",
    )
    s.wait_ready()
    s.predict = lambda body: _predict(s, body)
    s.known = ((body := payload(scenes.images[:2], tasks=["count", "sum"])), _predict(s, body))
    yield s
    s.stop()


def _predict(s: Watched, body: dict) -> dict:
    r = httpx.post(f"{s.url}/v1/predict", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


@pytest.fixture
def server(wire, healthy):
    return healthy(wire)


# -- binary tensor extension ----------------------------------------------------------
def _binary(header: dict, tail: bytes, length: str | None) -> tuple[bytes, dict]:
    raw = json.dumps(header).encode()
    headers = dict(AUTH)
    if length is not None:
        headers["Inference-Header-Content-Length"] = str(len(raw)) if length == "right" else length
    return raw + tail, headers


def _tensor(size: int, shape=(1, 56, 56), datatype="UINT8") -> dict:
    return {
        "inputs": [
            {
                "name": "image",
                "datatype": datatype,
                "shape": list(shape),
                "parameters": {"binary_data_size": size},
            }
        ],
        "parameters": {"task": "count"},
    }


PIXELS = bytes(3136)
LIES = {
    "header length missing": (_tensor(3136), PIXELS, None),
    "header length not a number": (_tensor(3136), PIXELS, "12a"),
    "header length negative": (_tensor(3136), PIXELS, "-5"),
    "header length beyond the body": (_tensor(3136), PIXELS, "99999"),
    "header length empty": (_tensor(3136), PIXELS, ""),
    "sizes add up to less than the body": (_tensor(3000), PIXELS, "right"),
    "sizes add up to more than the body": (_tensor(4000), PIXELS, "right"),
    "size negative": (_tensor(-1), PIXELS, "right"),
    "size a string": (_tensor("3136"), PIXELS, "right"),
    "size a boolean": (_tensor(True), PIXELS, "right"),
    "size disagrees with shape x dtype": (_tensor(3000), PIXELS[:3000], "right"),
    "FP32 short of shape x 4 bytes": (_tensor(3136, datatype="FP32"), PIXELS, "right"),
    "shape too large for the bytes": (_tensor(3136, shape=(2, 56, 56)), PIXELS, "right"),
    "shape with a negative dimension": (_tensor(3136, shape=(-1, 56, 56)), PIXELS, "right"),
}


def test_binary_extension_lies_are_400_and_leak_nothing(server, figure):
    bodies = [_binary(*case) for case in LIES.values()]
    for name, (content, headers) in zip(LIES, bodies):
        r = httpx.post(f"{server.url}{INFER}", content=content, headers=headers, timeout=30)
        assert r.status_code == 400, (name, r.status_code, r.text)
        assert r.json()["error"], name
    before = server.rss_mib()
    with httpx.Client(timeout=30) as client:
        for _ in range(100):
            for content, headers in bodies:
                assert (
                    client.post(f"{server.url}{INFER}", content=content, headers=headers).status_code == 400
                )
    assert server.rss_mib() - before < 8
    figure("cases x repeats, all 400", f"{len(LIES)} x 101")
    figure("RSS before / after 100 repeats (MiB)", [round(before, 1), round(server.rss_mib(), 1)])


def test_a_truthful_binary_request_is_answered(server, scenes):
    content, headers = _binary(_tensor(3136), scenes.images[0].astype(np.uint8).tobytes(), "right")
    r = httpx.post(f"{server.url}{INFER}", content=content, headers=headers, timeout=30)
    assert r.status_code == 200, r.text


# -- parser limits --------------------------------------------------------------------
def _padded(scenes, size: int) -> bytes:
    """A valid /v1 request of exactly `size` bytes (JSON whitespace pads it)."""
    raw = json.dumps(payload(scenes.images[:1], task="count")).encode()
    assert len(raw) < size
    return raw[:-1] + b" " * (size - len(raw)) + b"}"


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_body_limit_at_limit_minus_one_limit_and_limit_plus_one(server, scenes, encoding, figure):
    statuses = []
    for size in (LIMIT - 1, LIMIT, LIMIT + 1):
        body = _padded(scenes, size)
        headers = dict(AUTH)
        if encoding == "gzip":
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        r = httpx.post(f"{server.url}/v1/predict", content=body, headers=headers, timeout=30)
        statuses.append(r.status_code)
        if r.status_code == 413:
            assert str(LIMIT) in r.json()["error"]["message"]
    assert statuses == [200, 200, 413]
    figure(f"statuses at limit-1, limit, limit+1 ({encoding})", statuses)


def test_deep_json_is_a_clear_400(server):
    for depth in (1_000, 100_000):
        body = b'{"task": "count", "inputs": [{"image": ' + b"[" * depth + b"]" * depth + b"}]}"
        r = httpx.post(f"{server.url}/v1/predict", content=body, headers=AUTH, timeout=30)
        assert r.status_code in (400, 413, 422), r.text
        assert r.json()["error"]["field"]


def _raw_request(server: Watched, head: bytes, chunks: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head + chunks)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer


def test_a_million_one_byte_chunks(server, scenes):
    """A chunked body of 1,000,000 chunks of one byte (a valid request padded with spaces)
    is read and answered."""
    raw = json.dumps(payload(scenes.images[:1], task="count")).encode()
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    n = 1_000_000

    def chunked(body: bytes) -> bytes:
        return b"".join(b"1\r\n" + body[i : i + 1] + b"\r\n" for i in range(len(body))) + b"0\r\n\r\n"

    body = raw[:-1] + b" " * (n - len(raw)) + b"}"
    assert _raw_request(server, head, chunked(body)).startswith(b"HTTP/1.1 200")


def test_slowloris_connections_do_not_slow_the_health_probe(server, figure):
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n")  # never finished
            socks.append(s)
        times = []
        with httpx.Client(timeout=10) as client:
            for i in range(100):
                for s in socks[i % 10 :: 10]:
                    s.sendall(b"X-Slow: 1\r\n")  # a header line now and then keeps each one open
                t = time.monotonic()
                assert client.get(f"{server.url}/v2/health/live").status_code == 200
                times.append(time.monotonic() - t)
        # a probe stuck behind them would wait out its 10 s timeout; 1 s leaves room for a stall
        assert np.percentile(times, 99) < 1.0, np.percentile(times, 99)
        figure("health p99 with 200 slowloris connections (ms)", round(1000 * np.percentile(times, 99), 2))
    finally:
        for s in socks:
            s.close()


# -- strict types ---------------------------------------------------------------------
V1_TYPES = [
    ("budget", True),
    ("budget", None),
    ("budget", "0.5"),
    ("budget", [0.5]),
    ("min_budget", False),
    ("timeout_ms", True),
    ("timeout_ms", "100"),
    ("latency_ms", None),
    ("priority", True),
    ("priority", 1.0),
    ("priority", "1"),
    ("task_weights", {"count": True}),
    ("task_weights", {"count": "2"}),
]


@pytest.mark.parametrize("field,value", V1_TYPES, ids=[f"{f}={v!r}" for f, v in V1_TYPES])
def test_v1_never_coerces_booleans_strings_or_nulls_into_numbers(server, scenes, field, value):
    body = payload(scenes.images[:1], tasks=["count"]) | {field: value}
    if value is None:
        body = json.loads(json.dumps(body))  # an explicit null
    r = httpx.post(f"{server.url}/v1/predict", json=body, headers=AUTH, timeout=30)
    if value is None and field in ("budget", "latency_ms"):
        assert r.status_code in (200, 422)  # an explicit null is "not given", as in every JSON API
        return
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"].startswith(field)


V2_TYPES = [
    ("budget", True),
    ("budget", "0.5"),
    ("timeout", "100"),
    ("timeout", True),
    ("priority", True),
    ("min_budget", False),
]


@pytest.mark.parametrize("field,value", V2_TYPES, ids=[f"{f}={v!r}" for f, v in V2_TYPES])
def test_v2_never_coerces_booleans_or_strings_into_numbers(server, scenes, field, value):
    req = {
        "inputs": [
            {
                "name": "image",
                "datatype": "UINT8",
                "shape": [1, 56, 56],
                "data": scenes.images[0].reshape(-1).tolist(),
            }
        ],
        "parameters": {"task": "count", field: value},
    }
    r = httpx.post(f"{server.url}{INFER}", json=req, headers=AUTH, timeout=30)
    assert r.status_code in (400, 422), r.text
    assert field in r.json()["error"]


# -- auth matrix ----------------------------------------------------------------------
OPEN = {"/v2", "/v2/health/live", "/v2/health/ready", "/metrics", "/docs", "/openapi.json", "/"}
VARIANTS = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer wrong"},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    # (not a trailing space: HTTP's parsers strip a field value's surrounding whitespace, as
    # RFC 9110 5.5 says, and uvicorn >= 0.5x does)
    "two spaces": {"Authorization": f"Bearer  {TOKEN}"},
    "token and one more character": {"Authorization": f"Bearer {TOKEN}x"},
    "token less its last character": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "lowercase scheme, token only": {"Authorization": TOKEN},
}


def _routes(url: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{url}/openapi.json", timeout=10).json()
    routes = [
        (method.upper(), path.replace("{model}", "mnist-scenes").replace("{version}", "1"))
        for path, ops in spec["paths"].items()
        for method in ops
    ]
    return routes + [("GET", p) for p in ("/metrics", "/docs")]


def _call(port: int, method: str, path: str, headers: dict, body: bytes | None) -> tuple[int, dict]:
    """One request through the standard library's client, which sends a header value as given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={**headers, "Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_auth_matrix_every_route(server, scenes, figure):
    body = json.dumps(payload(scenes.images[:1], task="count")).encode()
    routes = _routes(server.url)
    assert len(routes) >= 12
    for method, path in routes:
        data = body if path.endswith(("predict", "infer")) else None
        for name, headers in VARIANTS.items():
            status, got = _call(server.port, method, path, headers, data)
            if path in OPEN:
                assert status != 401, (method, path, name)
                continue
            assert status == 401, (method, path, name, status)
            assert got["www-authenticate"] == "Bearer", (method, path)
        status, _ = _call(server.port, method, path, {"Authorization": f"Bearer {TOKEN}"}, data)
        assert status != 401, (method, path)
        if "/repository/models/" in path:  # load / unload: off unless model_control_mode explicit
            assert status == 403, (method, path)
    assert TOKEN not in server.log.read_text()  # not in the access log, nor in any error
    figure("routes x header variants", f"{len(routes)} x {len(VARIANTS) + 1}")
