"""PyTorch backend: the adapter's extracted route modules, in inference mode.

On device "cuda" every route module lives on the GPU, inputs go up from pinned host memory on
one stream (the current one: the compute thread is the only caller) and outputs come back to
numpy; without a CUDA build of torch and a GPU, the server refuses to start
(server.backends.check_device).
"""

from __future__ import annotations

import numpy as np
import torch

from models.adapter import ModelAdapter
from models.routes import Route


class TorchBackend:
    name = "torch"

    def __init__(self, adapter: ModelAdapter, threads: int, device: str = "cpu") -> None:
        torch.set_num_threads(threads)
        self.adapter = adapter
        self.device = torch.device(device)
        self.trunks: dict[str, torch.nn.Module] = {}
        self.paths: dict[tuple[str, Route], torch.nn.Module] = {}

    def add_trunk(self, route: Route) -> None:
        self.trunks[route.trunk] = self.adapter.trunk_module(route).to(self.device)

    def add_path(self, task: str, route: Route) -> None:
        self.paths[(task, route)] = self.adapter.path_module(task, route).to(self.device)

    def _in(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cpu":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def run_trunk(self, trunk: str, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.trunks[trunk](self._in(batch)).cpu().numpy()

    def run_path(self, task: str, route: Route, tokens: np.ndarray, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.paths[(task, route)](self._in(tokens), self._in(batch)).cpu().numpy()

    def close(self) -> None:
        self.trunks.clear()
        self.paths.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
