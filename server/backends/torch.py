"""PyTorch backend: the adapter's extracted route modules, in inference mode."""

from __future__ import annotations

import numpy as np
import torch

from models.adapter import ModelAdapter
from models.routes import Route


class TorchBackend:
    name = "torch"

    def __init__(self, adapter: ModelAdapter, threads: int) -> None:
        torch.set_num_threads(threads)
        self.adapter = adapter
        self.trunks: dict[str, torch.nn.Module] = {}
        self.paths: dict[tuple[str, Route], torch.nn.Module] = {}

    def add_trunk(self, route: Route) -> None:
        self.trunks[route.trunk] = self.adapter.trunk_module(route)

    def add_path(self, task: str, route: Route) -> None:
        self.paths[(task, route)] = self.adapter.path_module(task, route)

    def run_trunk(self, trunk: str, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.trunks[trunk](torch.from_numpy(batch)).numpy()

    def run_path(self, task: str, route: Route, tokens: np.ndarray, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.paths[(task, route)](torch.from_numpy(tokens), torch.from_numpy(batch)).numpy()
