"""ONNX Runtime backend: one session per trunk width and per task path.

Graphs are exported into a cache directory keyed by the checkpoint's fingerprint, so a
restart or a reload of the same checkpoint reuses them. CUDA is used when onnxruntime-gpu
and a GPU are present. A graph whose tensors keep their data in files outside its folder
(`../`, an absolute path, a symlink out) is refused before onnxruntime opens it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from models.adapter import ModelAdapter
from models.checkpoint import CheckpointError
from models.export import path_file, trunk_file
from models.routes import Route


def providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class UnsafeGraph(CheckpointError):
    """An ONNX graph that would read files outside its own folder."""


def _tensors(graph: onnx.GraphProto):
    """Every tensor of a graph and of its subgraphs: initializers and attribute values."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def check_external_data(file: Path) -> None:
    """Raise UnsafeGraph when a tensor of `file` keeps its data outside the graph's folder."""
    model = onnx.load(str(file), load_external_data=False)
    folder = file.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = (folder / location).resolve()  # follows symlinks
        if Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(folder):
            raise UnsafeGraph(
                f"{file.name}: tensor {tensor.name!r} keeps its data at {location!r}, "
                "outside the graph's folder"
            )


class Graph:
    """A session fed only the inputs its graph declares (the exporter drops an input that a
    path never reads, as a count head does the image)."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.inputs = {i.name for i in session.get_inputs()}

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: v for k, v in feeds.items() if k in self.inputs})[0]


class OnnxBackend:
    name = "onnxruntime"

    def __init__(self, adapter: ModelAdapter, threads: int, cache_dir: Path) -> None:
        self.adapter = adapter
        self.out = Path(cache_dir) / f"{adapter.name}-{adapter.fingerprint()}"
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = threads
        self.options.inter_op_num_threads = 1
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.trunks: dict[str, Graph] = {}
        self.paths: dict[tuple[str, Route], Graph] = {}

    def _session(self, file: Path) -> Graph:
        check_external_data(file)
        return Graph(ort.InferenceSession(str(file), self.options, providers=providers()))

    def add_trunk(self, route: Route) -> None:
        file = self.out / trunk_file(route)
        if not file.exists():
            self.adapter.export_trunk(route, file)
        self.trunks[route.trunk] = self._session(file)

    def add_path(self, task: str, route: Route) -> None:
        file = self.out / path_file(task, route)
        if not file.exists():
            self.adapter.export_path(task, route, file)
        self.paths[(task, route)] = self._session(file)

    def run_trunk(self, trunk: str, batch: np.ndarray) -> np.ndarray:
        return self.trunks[trunk].run({self.adapter.input_name: batch})

    def run_path(self, task: str, route: Route, tokens: np.ndarray, batch: np.ndarray) -> np.ndarray:
        return self.paths[(task, route)].run({"tokens": tokens, self.adapter.input_name: batch})
