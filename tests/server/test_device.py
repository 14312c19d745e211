"""The GPU path on a machine without one: `TRUNKLINE_DEVICE=cuda` is a clear error at start,
naming what is missing, never a crash or a server that comes up and fails requests."""

from __future__ import annotations

import os
import subprocess
import sys

import onnxruntime as ort
import pytest
import torch

from server.backends import DeviceUnavailable, check_device

NO_ORT_CUDA = "CUDAExecutionProvider" not in ort.get_available_providers()


@pytest.mark.skipif(not NO_ORT_CUDA, reason="this onnxruntime has CUDA")
def test_onnxruntime_without_its_cuda_provider_says_so():
    with pytest.raises(DeviceUnavailable, match="CUDAExecutionProvider.*onnxruntime-gpu"):
        check_device("onnxruntime", "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a GPU")
def test_torch_without_cuda_says_so():
    with pytest.raises(DeviceUnavailable, match="CUDA build of torch"):
        check_device("torch", "cuda")


def test_the_cpu_needs_nothing():
    for backend in ("torch", "onnxruntime"):
        check_device(backend, "cpu")


@pytest.mark.skipif(not NO_ORT_CUDA, reason="this onnxruntime has CUDA")
def test_serve_on_cuda_without_a_gpu_exits_at_start_with_the_reason():
    env = {**os.environ, "TRUNKLINE_DEVICE": "cuda", "TRUNKLINE_PORT": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "trunkline: device 'cuda'" in done.stderr and "onnxruntime-gpu" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
