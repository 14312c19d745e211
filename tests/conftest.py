"""Shared fixtures; `server` is a real `trunkline serve` subprocess on 127.0.0.1 and a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch

# in-process apps and servers started other than by RunningServer serve no gRPC (8001 is one port
# for many servers); a RunningServer serves gRPC on a free port of its own (`.grpc`)
os.environ.setdefault("TRUNKLINE_GRPC_PORT", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    def __init__(self, backend: str, log: str | None = None, **env: str) -> None:
        """`log`: a file for the server's output (default: the test's output)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_port = int(env.get("TRUNKLINE_GRPC_PORT") or free_port())
        self.grpc = f"127.0.0.1:{self.grpc_port}"  # the gRPC front's address (0: none)
        environ = {
            **os.environ,
            "TRUNKLINE_BACKEND": backend,
            "TRUNKLINE_PORT": str(self.port),
            "TRUNKLINE_GRPC_PORT": str(self.grpc_port),
            "TRUNKLINE_BATCH_BUCKETS": "[1,8,64]",
            "TRUNKLINE_CALIBRATION_ROUNDS": "1",
            "TRUNKLINE_THREADS": "1",
            "TRUNKLINE_LOG_LEVEL": "warning",
            **env,
        }
        out = open(log, "ab") if log else None  # noqa: SIM115 - the child holds it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )

    def wait_ready(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError("server did not become ready")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="session")
def server():
    s = RunningServer("torch")
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def onnx_server(tmp_path_factory):
    # mnist-scenes only: the text model's ONNX parity is tested per route in
    # tests/models/text/test_text.py (a cold onnxruntime start of it adds ~2 minutes)
    onnx_dir = tmp_path_factory.mktemp("onnx")
    s = RunningServer("onnxruntime", TRUNKLINE_ONNX_DIR=str(onnx_dir), TRUNKLINE_MODEL="mnist-scenes")
    s.onnx_dir = onnx_dir  # its exported graphs, for servers that reuse them
    s.wait_ready()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def scenes():
    from models.image.data import make_scenes

    return make_scenes(16, "test", seed=123)


@pytest.fixture(autouse=True, scope="session")
def _threads():
    torch.set_num_threads(2)
