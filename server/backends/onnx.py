"""ONNX Runtime backend: one session per trunk width and per task path.

Graphs are exported once into a cache directory keyed by the checkpoint's weights, so a
restart reuses them. CUDA is used when onnxruntime-gpu and a GPU are present.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.export import export_routes, path_file, trunk_file
from models.model import TaskRoutedModel
from models.routes import Route

log = logging.getLogger("trunkline")


def providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def fingerprint(model: TaskRoutedModel) -> str:
    digest = hashlib.sha256(model.cfg.model_dump_json().encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class OnnxBackend:
    name = "onnxruntime"

    def __init__(
        self, model: TaskRoutedModel, routes: dict[str, list[Route]], threads: int, cache_dir: Path
    ) -> None:
        out = Path(cache_dir) / f"{model.cfg.name}-{fingerprint(model)}"
        written = export_routes(model, routes, out)
        if written:
            log.info("exported %d ONNX graphs to %s", len(written), out)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(file: str) -> ort.InferenceSession:
            return ort.InferenceSession(str(out / file), options, providers=providers())

        widths = sorted({r.width for rs in routes.values() for r in rs})
        self.trunks = {w: session(trunk_file(w)) for w in widths}
        self.paths = {(t, r): session(path_file(t, r)) for t, rs in routes.items() for r in rs}

    def run_trunk(self, width: float, images: np.ndarray) -> np.ndarray:
        return self.trunks[width].run(None, {"image": images})[0]

    def run_path(self, task: str, route: Route, tokens: np.ndarray, images: np.ndarray) -> np.ndarray:
        return self.paths[(task, route)].run(None, {"tokens": tokens, "image": images})[0]
