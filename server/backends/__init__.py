"""Compute backends: run a trunk width on a batch, then a task path on a slice of it.

Both take and return numpy arrays so that the batcher is backend-agnostic.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from models.routes import Route


class Backend(Protocol):
    name: str

    def run_trunk(self, width: float, images: np.ndarray) -> np.ndarray:
        """float32 images [B, C, H, W] in [0, 1] -> trunk tokens [B, N, D]."""

    def run_path(self, task: str, route: Route, tokens: np.ndarray, images: np.ndarray) -> np.ndarray:
        """One task's path on trunk tokens -> probabilities."""


def create_backend(name: str, model, routes: dict[str, list[Route]], settings) -> Backend:
    if name == "torch":
        from server.backends.torch import TorchBackend

        return TorchBackend(model, routes, threads=settings.threads)
    if name == "onnxruntime":
        from server.backends.onnx import OnnxBackend

        return OnnxBackend(model, routes, threads=settings.threads, cache_dir=settings.onnx_dir)
    raise ValueError(f"unknown backend {name!r}; expected 'torch' or 'onnxruntime'")
