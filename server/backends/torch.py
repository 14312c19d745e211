"""PyTorch backend: the adapter's extracted route modules, traced to TorchScript, in
inference mode.

TorchScript runs a whole graph per call without coming back to Python between operators:
batch-1 latency drops by a quarter to a third on this model, and the compute thread takes the
GIL once per graph instead of once per operator, so a busy event loop (which holds the GIL
most of the time) no longer stretches every operator of a batch by up to the GIL's switch
interval (measured: one-image batches ran 20x slower than calibrated under 2x overload with
eager modules). `torch.jit` is deprecated in favour of `torch.compile`/`torch.export`, which
need a compiler toolchain at run time; eager mode stays available (`TRUNKLINE_TORCHSCRIPT=false`).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from models.adapter import ModelAdapter
from models.routes import Route

log = logging.getLogger("trunkline")


class TorchBackend:
    name = "torch"

    def __init__(self, adapter: ModelAdapter, threads: int, script: bool = True) -> None:
        torch.set_num_threads(threads)
        self.adapter, self.script = adapter, script
        self.cache_tag = "torchscript" if script else "torch"  # calibration differs between them
        self.trunks: dict[float, torch.nn.Module] = {}
        self.paths: dict[tuple[str, Route], torch.nn.Module] = {}
        self._example = torch.from_numpy(adapter.example_batch(2))

    def _compile(self, module: torch.nn.Module, example: tuple) -> torch.nn.Module:
        module.eval()
        if not self.script:
            return module
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
                return torch.jit.freeze(torch.jit.trace(module, example))
        except Exception as e:  # noqa: BLE001 - a module that does not trace runs eagerly
            log.warning("%s: tracing failed (%s); running it eagerly", type(module).__name__, e)
            return module

    def add_trunk(self, width: float) -> None:
        self.trunks[width] = self._compile(self.adapter.trunk_module(width), (self._example,))

    def add_path(self, task: str, route: Route) -> None:
        with torch.inference_mode():
            tokens = self.trunks[route.width](self._example).clone()
        module = self.adapter.path_module(task, route)
        self.paths[(task, route)] = self._compile(module, (tokens, self._example))

    def run_trunk(self, width: float, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.trunks[width](torch.from_numpy(batch)).numpy()

    def run_path(self, task: str, route: Route, tokens: np.ndarray, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.paths[(task, route)](torch.from_numpy(tokens), torch.from_numpy(batch)).numpy()
