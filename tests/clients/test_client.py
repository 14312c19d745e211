"""The Python client (sync and async) and `trunkline predict` against the real server."""

import asyncio
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clients import AsyncClient, Client, ClientError


def test_sync_client(server, scenes):
    with Client(server.url) as c:
        assert c.ready()
        assert c.models()[0]["name"] == "mnist-scenes"
        result = c.predict(list(scenes.images[:3]), "sum", budget="low")
        assert result.receipt.flops_fraction <= 0.25 and result.receipt.backend == "torch"
        assert len(result.labels("sum")) == 3
        both = c.predict(scenes.images[0], tasks=["count", "presence"])
        assert set(both.receipt.tasks) == {"count", "presence"}


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
    assert f"sum={scenes.sum[0]}" in out.stdout.splitlines()[0] or "sum=" in out.stdout
    assert "flops_fraction=" in out.stdout
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
