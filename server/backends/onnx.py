"""ONNX Runtime backend: one session per trunk width and per task path.

Graphs are exported into a cache directory keyed by the checkpoint's fingerprint, so a
restart or a reload of the same checkpoint reuses them. A graph whose tensors keep their data
in files outside its folder (`../`, an absolute path, a symlink out) is refused before
onnxruntime opens it.

On the CPU every session runs on its caller's thread alone (one intra-op thread, so no thread
pool): a pool per session, ~50 of them per model, each spinning after its run while the next
session's ran, served 40 req/s of mixed one-image traffic against 476 without (bench/RESULTS.md).
A batch of 4 or more is split across `threads` threads instead, each running its share on the
same session (onnxruntime runs a session from several threads at once and releases the GIL):
at batch 64 as fast as a shared 2-thread pool, and batch 1 keeps its single-core latency.
On CUDA (device "cuda", onnxruntime-gpu) sessions run on the CUDA execution provider, whole.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from models.adapter import ModelAdapter
from models.checkpoint import CheckpointError
from models.export import path_file, trunk_file
from models.routes import Route

SPLIT_FROM = 4  # a batch this large or larger is split across the compute threads (CPU)


def providers(device: str = "cpu") -> list[str]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]  # server.backends.check_device


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

    def __init__(self, adapter: ModelAdapter, threads: int, cache_dir: Path, device: str = "cpu") -> None:
        self.adapter = adapter
        self.providers = providers(device)
        self.out = Path(cache_dir) / f"{adapter.name}-{adapter.fingerprint()}"
        self.options = ort.SessionOptions()
        self.options.intra_op_num_threads = 1
        self.options.inter_op_num_threads = 1
        self.options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.threads = threads if device == "cpu" else 1
        # the caller's thread runs one share; these the others
        self.pool = ThreadPoolExecutor(self.threads - 1, "trunkline-onnx") if self.threads > 1 else None
        self.trunks: dict[str, Graph] = {}
        self.paths: dict[tuple[str, Route], Graph] = {}

    def _session(self, file: Path) -> Graph:
        check_external_data(file)
        return Graph(ort.InferenceSession(str(file), self.options, providers=self.providers))

    def _run(self, graph: Graph, feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        parts = min(self.threads, n // (SPLIT_FROM // 2)) if self.pool else 1
        if parts < 2:
            return graph.run(feeds)
        bounds = np.linspace(0, n, parts + 1).astype(int)
        shares = [{k: v[a:b] for k, v in feeds.items()} for a, b in zip(bounds, bounds[1:])]
        later = [self.pool.submit(graph.run, share) for share in shares[1:]]
        return np.concatenate([graph.run(shares[0]), *(f.result() for f in later)])

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=False)

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
        return self._run(self.trunks[trunk], {self.adapter.input_name: batch})

    def run_path(self, task: str, route: Route, tokens: np.ndarray, batch: np.ndarray) -> np.ndarray:
        return self._run(self.paths[(task, route)], {"tokens": tokens, self.adapter.input_name: batch})
