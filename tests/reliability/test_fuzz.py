"""Protocol fuzz: schemathesis over /openapi.json with every check, and mutated request lines
and headers (Content-Length, Transfer-Encoding, Inference-Header-Content-Length) sent raw.
One server throughout: the same process must answer every case, then the known answer."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import Watched

INFER = "/v2/models/mnist-scenes/infer"
# schemathesis' examples per operation and phase: 50 makes ~1,300 cases (30 s), CI's share; 700
# makes ~12,000 (10 minutes), the run docs/reliability.md reports (TRUNKLINE_FUZZ_EXAMPLES=700)
EXAMPLES = int(os.environ.get("TRUNKLINE_FUZZ_EXAMPLES", "50"))
DEFAULT_STATUSES = '"2xx", "3xx", "401", "403", "404", "409", "429", "5xx"'  # schemathesis' own


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, known_input):
    s = Watched(tmp_path_factory.mktemp("fuzz")).start(known_input)
    s.pid = s.proc.pid
    yield s
    s.stop()


@pytest.fixture
def server(fuzzed, healthy):
    return healthy(fuzzed)


def test_schemathesis_every_check_over_the_openapi_document(server, tmp_path, figure):
    """Every operation of /openapi.json, positive and negative data, every check schemathesis has
    (status codes and response schemas as declared, 405 + Allow for undeclared methods, schema-
    valid data accepted, schema-invalid data rejected, ...). The repository's load and unload
    operations are off in this server (403, as declared), so nothing is reloaded under it."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        # schemathesis' defaults, the served model's name for {model} (else every call is a 404)
        # and what no schema can say: a schema-valid /v1 request may name a task or a budget the
        # model lacks (422, as the API answers a well-formed request it cannot serve), and a
        # schema-valid v2 request tensors of another name or shape (400, the protocol's answer)
        '[parameters]\nmodel = "mnist-scenes"\nversion = "1"\n\n'
        "[[operations]]\n"
        'include-path = "/v1/predict"\n'
        f"checks.positive_data_acceptance.expected-statuses = [{DEFAULT_STATUSES}, \"422\"]\n\n"
        "[[operations]]\n"
        'include-path-regex = "/infer$"\n'
        f"checks.positive_data_acceptance.expected-statuses = [{DEFAULT_STATUSES}, \"400\"]\n"
    )
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st), "--config-file", str(config), "--no-color", "run", f"{server.url}/openapi.json",
            "--checks", "all", "--max-examples", str(EXAMPLES), "--suppress-health-check", "all",
            "--seed", "1", "--request-timeout", "30",
        ],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    cases = int(re.search(r"(\d+) generated, \1 passed", out).group(1))
    assert cases >= 15 * EXAMPLES, out[-3000:]  # 15 operations, EXAMPLES cases each and more
    assert server.proc.poll() is None and server.proc.pid == server.pid
    # every label value is the server's own, never a fuzzed string (each would be a series for good)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    tasks = set(re.findall(r'^trunkline_requests_total\{.*task="([^"]*)"', metrics, re.M))
    assert tasks <= {"", "count", "presence", "sum", "segment"}, sorted(tasks)[:10]
    figure("schemathesis cases, failures", [cases, 0])


# -- raw request lines and headers ------------------------------------------------------
def _infer_body() -> tuple[bytes, bytes]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 56, 56],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": 3136},
                }
            ],
            "parameters": {"task": "count"},
        }
    ).encode()
    return header, bytes(3136)


HEADER, PIXELS = _infer_body()
JSON = b'{"task": "count", "inputs": [{"image": [[0]]}]}'


def _post(path: str, headers: list[str], body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + "".join(h + "\r\n" for h in headers)
    return head.encode() + b"\r\n" + body


def _ihcl(value: str) -> bytes:
    body = HEADER + PIXELS
    return _post(
        INFER,
        [
            "Content-Type: application/octet-stream",
            f"Content-Length: {len(body)}",
            f"Inference-Header-Content-Length: {value}",
        ],
        body,
    )


MUTATIONS: dict[str, bytes] = {
    # request lines
    "unknown method": b"BREW /v1/predict HTTP/1.1\r\nHost: x\r\n\r\n",
    "HTTP/9.9": b"GET /v2/health/live HTTP/9.9\r\nHost: x\r\n\r\n",
    "HTTP/0.9 line": b"GET /v2/health/live\r\n\r\n",
    "no path": b"GET HTTP/1.1\r\nHost: x\r\n\r\n",
    "asterisk form": b"POST * HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    "absolute form": _post("http://x/v1/predict", ["Content-Length: 2"], b"{}"),
    "100 KB path": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in path": b"GET /v2/he\x00alth/live HTTP/1.1\r\nHost: x\r\n\r\n",
    "raw UTF-8 in path": "GET /v2/models/ü/ready HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "binary garbage": bytes(range(256)) * 4,
    "lowercase method": b"post /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    "LF line ends": b"GET /v2/health/live HTTP/1.1\nHost: x\n\n",
    # Content-Length
    "CL negative": _post("/v1/predict", ["Content-Length: -1"], JSON),
    "CL not a number": _post("/v1/predict", ["Content-Length: abc"], JSON),
    "CL float": _post("/v1/predict", ["Content-Length: 4.0e1"], JSON),
    "CL plus sign": _post("/v1/predict", [f"Content-Length: +{len(JSON)}"], JSON),
    "CL list": _post("/v1/predict", [f"Content-Length: {len(JSON)}, {len(JSON)}"], JSON),
    "CL twice, differing": _post("/v1/predict", [f"Content-Length: {len(JSON)}", "Content-Length: 3"], JSON),
    "CL 20 digits": _post("/v1/predict", ["Content-Length: 99999999999999999999"], JSON),
    "CL short of the body": _post("/v1/predict", ["Content-Length: 10"], JSON),
    "CL beyond the body": _post("/v1/predict", [f"Content-Length: {len(JSON) + 100}"], JSON),
    # Transfer-Encoding
    "TE and CL": _post(
        "/v1/predict",
        [f"Content-Length: {len(JSON)}", "Transfer-Encoding: chunked"],
        b"%x\r\n%b\r\n0\r\n\r\n" % (len(JSON), JSON),
    ),  # fmt: skip
    "TE gzip": _post("/v1/predict", ["Transfer-Encoding: gzip"], JSON),
    "TE chunked twice": _post(
        "/v1/predict", ["Transfer-Encoding: chunked, chunked"], b"2\r\n{}\r\n0\r\n\r\n"
    ),
    "TE xchunked": _post("/v1/predict", ["Transfer-Encoding: xchunked"], b"2\r\n{}\r\n0\r\n\r\n"),
    "chunk size not hex": _post("/v1/predict", ["Transfer-Encoding: chunked"], b"zz\r\n{}\r\n0\r\n\r\n"),
    "chunk size overflow": _post(
        "/v1/predict", ["Transfer-Encoding: chunked"], b"f" * 40 + b"\r\n{}\r\n0\r\n\r\n"
    ),
    "chunk longer than its size": _post(
        "/v1/predict", ["Transfer-Encoding: chunked"], b"1\r\n{}\r\n0\r\n\r\n"
    ),
    "no last chunk": _post("/v1/predict", ["Transfer-Encoding: chunked"], b"2\r\n{}\r\n"),
    # header syntax
    "header without colon": _post("/v1/predict", ["Content-Length 2"], b"{}"),
    "space before colon": _post("/v1/predict", ["Content-Length : 2"], b"{}"),
    "obsolete line folding": _post("/v1/predict", ["Content-Type: application/json", " folded"], b"{}"),
    "100 KB header": _post("/v1/predict", ["X-Big: " + "a" * 100_000, "Content-Length: 2"], b"{}"),
    "2,000 headers": _post("/v1/predict", [f"X-H{i}: v" for i in range(2000)] + ["Content-Length: 2"], b"{}"),
    # Inference-Header-Content-Length (the binary tensor extension)
    "IHCL missing": _post(INFER, [f"Content-Length: {len(HEADER + PIXELS)}"], HEADER + PIXELS),
    "IHCL negative": _ihcl("-1"),
    "IHCL not a number": _ihcl("abc"),
    "IHCL float": _ihcl(f"{len(HEADER)}.0"),
    "IHCL zero": _ihcl("0"),
    "IHCL beyond the body": _ihcl(str(len(HEADER + PIXELS) + 1)),
    "IHCL inside the header": _ihcl(str(len(HEADER) - 5)),
    "IHCL inside the tail": _ihcl(str(len(HEADER) + 5)),
    "IHCL 30 digits": _ihcl("9" * 30),
    "IHCL with spaces": _ihcl(f" {len(HEADER)} "),
}


REFUSED = ["CL negative", "CL not a number", "CL float", "CL twice, differing", "TE and CL", "TE xchunked",
           "chunk size not hex", "chunk size overflow", "chunk longer than its size", "header without colon",
           "space before colon", "binary garbage", "HTTP/0.9 line", "no path"]  # fmt: skip


def _exchange(port: int, raw: bytes) -> bytes:
    """Send `raw`, half-close, and read until the server closes (never more than 30 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before it read everything
        answer = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    return answer


def test_mutated_request_lines_and_headers_get_4xx_and_never_a_5xx(server, figure):
    statuses = {}
    rss = server.rss_mib()
    for name, raw in MUTATIONS.items():
        answer = _exchange(server.port, raw)
        codes = [int(c) for c in re.findall(rb"^HTTP/1\.[01] (\d{3})", answer, re.M)]
        statuses[name] = codes or "closed"
        assert all(c < 500 for c in codes), (name, answer[:300])
        assert server.proc.poll() is None
    # refused where they must be: a lie about the body's framing (4xx or the connection closed),
    # a wrong binary header length (the server's own 400)
    for name in REFUSED:
        assert statuses[name] == "closed" or all(400 <= c < 500 for c in statuses[name]), (
            name,
            statuses[name],
        )
    for name in MUTATIONS:
        if name.startswith("IHCL") and name != "IHCL with spaces":  # HTTP strips a header's spaces
            assert statuses[name] == [400], (name, statuses[name])
    figure("raw mutations: statuses", statuses)
    figure("RSS before/after (MiB)", [round(rss, 1), round(server.rss_mib(), 1)])
