"""The Python client (sync and async) and `trunkline predict` against the real server."""

import asyncio
import socket
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from clients import AsyncClient, Client, ClientError, TrunklineError
from clients.client import Prediction, TransportError


def test_sync_client(server, scenes):
    with Client(server.url) as c:
        assert c.ready()
        assert c.models()[0]["name"] == "mnist-scenes"
        result = c.predict(list(scenes.images[:3]), "sum", budget="low")
        assert result.receipt.flops_fraction <= 0.25 and result.receipt.backend == "torch"
        assert len(result.labels("sum")) == 3
        both = c.predict(scenes.images[0], tasks=["count", "presence"])
        assert set(both.receipt.tasks) == {"count", "presence"}


MODEL = "text-tasks"


def test_text_through_both_clients(server):
    with Client(server.url) as c:
        result = c.predict_text(["Where is Berlin ?", "call now to win"], "question_type", model="text-tasks")
        assert len(result.labels("question_type")) == 2 and len(result.receipt.tokens) == 2
        score = c.predict_text("what a wonderful film", "sentiment_score", model="text-tasks", budget="low")
        assert isinstance(score.labels("sentiment_score")[0], float) and score.receipt.depth >= 2

    async def main():
        async with AsyncClient(server.url) as c:
            return await c.predict_text("free entry, text WIN", tasks=["spam", "sentiment"], model=MODEL)

    assert set(asyncio.run(main()).receipt.tasks) == {"spam", "sentiment"}


def test_errors_are_exceptions_with_the_server_message(server, scenes):
    with Client(server.url) as c:
        with pytest.raises(ClientError) as e:
            c.predict(scenes.images[0], "sum", budget=7)
        assert e.value.status == 422 and e.value.field == "budget" and "budget" in e.value.message


def test_async_client(server, scenes):
    async def main():
        async with AsyncClient(server.url) as c:
            results = await asyncio.gather(*(c.predict(scenes.images[i], "count") for i in range(6)))
            return [r.outputs[0]["count"]["index"] for r in results]

    assert asyncio.run(main()) == list(scenes.count[:6])


def test_predict_command(server, scenes, tmp_path):
    files = []
    for i in range(2):
        path = tmp_path / f"scene{i}.png"
        Image.fromarray(scenes.images[i]).save(path)
        files.append(str(path))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "predict",
            "--url",
            server.url,
            "--task",
            "sum",
            "--budget",
            "low",
            *files,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    # the command prints what the server answers (not the ground truth, which a low budget may miss):
    # the same request through the client gives the labels, one line per file, then the receipt
    with Client(server.url) as c:
        expected = c.predict(files, tasks=["sum"], budget="low").labels("sum")
    lines = out.stdout.splitlines()
    assert lines[:2] == [f"{files[0]}: sum={expected[0]}", f"{files[1]}: sum={expected[1]}"]
    assert len(lines) == 3 and lines[2].startswith("route sum:") and "flops_fraction=" in lines[2]
    bad = subprocess.run(
        [sys.executable, "-m", "server.cli", "predict", "--url", server.url, "--task", "colour", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "unknown task" in bad.stderr


def test_client_imports_no_server_code():
    code = "import sys, clients; assert not {'server', 'models', 'routing', 'torch'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_encode_uint8_array_as_png():
    from clients.client import encode_image

    assert isinstance(encode_image(np.zeros((56, 56), np.uint8)), str)


def closed_port_url() -> str:
    """A port that was free a moment ago: nothing listens there."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


RECEIPT = {
    "tasks": {"sum": {"route": "w0.25-k1-d0.5", "experts": [[0]], "experts_k": 1, "decoder_width": 0.5}},
    "trunk_width": 0.25,
    "flops": 1000,
    "flops_fraction": 0.2,
    "budget_requested": "low",
    "degraded": False,
    "backend": "torch",
    "batch_size": 1,
    "queue_ms": 0.1,
    "compute_ms": 1.5,
}


def _newer_server_body() -> dict:
    """A /v1/predict body from a newer server: fields this client does not know, at both levels."""
    route = {**RECEIPT, "priority": "high", "model_version": "7", "timings": {"decode_ms": 0.2}}
    return {"model": "mnist-scenes", "outputs": [{"sum": {"label": "12"}}], "route": route, "trace_id": "x"}


def test_prediction_ignores_unknown_fields_and_keeps_them_raw():
    body = _newer_server_body()
    p = Prediction.from_dict(body)
    assert p.labels("sum") == ["12"] and p.receipt.flops_fraction == 0.2 and p.receipt.route("sum")
    assert p.raw is body and p.raw["trace_id"] == "x"
    assert p.receipt.raw["priority"] == "high" and p.receipt.raw["timings"] == {"decode_ms": 0.2}
    assert not hasattr(p.receipt, "priority")


def test_client_reads_a_newer_servers_answer():
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/predict"
        return httpx.Response(200, json=_newer_server_body())

    with Client("http://trunkline.test", transport=httpx.MockTransport(answer)) as c:
        result = c.predict(np.zeros((56, 56), np.uint8), "sum")
    assert result.labels("sum") == ["12"] and result.receipt.raw["model_version"] == "7"


def test_unreachable_server_is_a_transport_error():
    url = closed_port_url()
    with Client(url) as c, pytest.raises(TransportError) as e:
        c.predict(np.zeros((56, 56), np.uint8), "sum")
    assert isinstance(e.value, TrunklineError) and isinstance(e.value.__cause__, httpx.ConnectError)
    assert str(e.value).startswith(f"cannot reach {url}: ") and "\n" not in str(e.value)

    async def main():
        async with AsyncClient(url) as ac:
            await ac.ready()

    with pytest.raises(TransportError, match="cannot reach"):
        asyncio.run(main())


def test_predict_command_without_a_server_prints_one_line(tmp_path):
    image = tmp_path / "scene.png"
    Image.fromarray(np.zeros((56, 56), np.uint8)).save(image)  # 56x56, mode L
    url = closed_port_url()
    command = [sys.executable, "-m", "clients.cli", "--url", url, "--task", "sum"]
    down = subprocess.run([*command, str(image)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 1 and down.stdout == ""
    assert len(down.stderr.splitlines()) == 1, down.stderr
    assert down.stderr.startswith(f"error: cannot reach {url}: ")
    missing = subprocess.run(
        [*command, str(tmp_path / "nope.png")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1, missing.stderr
    assert "nope.png" in missing.stderr


def test_predict_command_reaches_the_text_model(server):
    """`--model` and `--text`; without `--model` the one model that has the task answers."""
    for model in (["--model", "text-tasks"], []):
        out = subprocess.run(
            [sys.executable, "-m", "server.cli", "predict", "--url", server.url, *model, "--task", "spam",
             "--text", "win a prize now", "--text", "see you at lunch"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith("win a prize now: spam=") and lines[1].startswith(
            "see you at lunch: spam="
        )
        assert "route spam:L" in lines[2]
    both = subprocess.run(
        [sys.executable, "-m", "server.cli", "predict", "--url", server.url, "--task", "spam", "x.png",
         "--text", "hi"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert both.returncode == 2 and "one of the two" in both.stderr
