"""PyTorch backend: the extracted route modules, in inference mode."""

from __future__ import annotations

import numpy as np
import torch

from models.model import TaskRoutedModel
from models.routes import Route


class TorchBackend:
    name = "torch"

    def __init__(self, model: TaskRoutedModel, routes: dict[str, list[Route]], threads: int) -> None:
        torch.set_num_threads(threads)
        widths = sorted({r.width for rs in routes.values() for r in rs})
        self.trunks = {w: model.extract_trunk(w) for w in widths}
        self.paths = {(t, r): model.extract_path(t, r) for t, rs in routes.items() for r in rs}

    def run_trunk(self, width: float, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.trunks[width](torch.from_numpy(images)).numpy()

    def run_path(self, task: str, route: Route, tokens: np.ndarray, images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.paths[(task, route)](torch.from_numpy(tokens), torch.from_numpy(images))
            return out.numpy()
