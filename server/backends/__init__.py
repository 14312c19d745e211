"""Compute backends: run a trunk on a batch, then a task path on a slice of it.

Both take and return numpy arrays so that the batcher is backend- and family-agnostic.
A backend is filled one graph at a time (`add_trunk`, `add_path`), so that building a model
runs in small jobs on the shared compute thread.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from models.adapter import ModelAdapter
from models.routes import Route


class Backend(Protocol):
    name: str

    def add_trunk(self, route: Route) -> None:
        """Build the trunk that `route` runs, kept under `route.trunk`."""

    def add_path(self, task: str, route: Route) -> None: ...

    def run_trunk(self, trunk: str, batch: np.ndarray) -> np.ndarray:
        """The model's input batch -> trunk tokens."""

    def run_path(self, task: str, route: Route, tokens: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """One task's path on trunk tokens -> probabilities."""

    def close(self) -> None:
        """Release threads and device memory: the model is unloaded."""


class DeviceUnavailable(RuntimeError):
    """The configured device cannot be used: said at start, before any model loads."""


def check_device(backend: str, device: str) -> None:
    """Raise DeviceUnavailable when `backend` cannot run on `device` here."""
    if device == "cpu":
        return
    if backend == "onnxruntime":
        import onnxruntime as ort

        available = ort.get_available_providers()
        if "CUDAExecutionProvider" not in available:
            raise DeviceUnavailable(
                f"device {device!r} with backend onnxruntime needs its CUDAExecutionProvider, and "
                f"this onnxruntime ({ort.__version__}, {ort.get_device()}) has only {available}: "
                "install onnxruntime-gpu (the image's GPU variant) or set TRUNKLINE_DEVICE=cpu"
            )
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"device {device!r} with backend torch needs a CUDA build of torch and a GPU; this torch "
            f"is {torch.__version__} (CUDA {torch.version.cuda or 'none'}) and sees no GPU: "
            "set TRUNKLINE_DEVICE=cpu"
        )


def create_backend(name: str, adapter: ModelAdapter, settings) -> Backend:
    check_device(name, settings.device)
    if name == "torch":
        from server.backends.torch import TorchBackend

        return TorchBackend(adapter, threads=settings.threads, device=settings.device)
    if name == "onnxruntime":
        from server.backends.onnx import OnnxBackend

        return OnnxBackend(
            adapter, threads=settings.threads, cache_dir=settings.onnx_dir, device=settings.device
        )
    raise ValueError(f"unknown backend {name!r}; expected 'torch' or 'onnxruntime'")


def build_backend(name: str, adapter: ModelAdapter, settings, routes: dict[str, list[Route]]) -> Backend:
    """A backend holding the graphs of `routes`, built at once (benchmarks, tools; the server
    builds its backends one graph per job on the compute thread)."""
    backend = create_backend(name, adapter, settings)
    for route in {r.trunk: r for rs in routes.values() for r in rs}.values():
        backend.add_trunk(route)
    for task, rs in routes.items():
        for route in rs:
            backend.add_path(task, route)
    return backend
