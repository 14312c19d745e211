"""ONNX export: one graph per trunk width and one per (task, route) path, opset 18, with a
dynamic batch axis. Serving runs the trunk graph once per batch and forks into task graphs,
so a route is the pair (trunk-wXX.onnx, TASK-ROUTE.onnx).

Graphs are for onnxruntime: attention exports as its fused `com.microsoft.Attention` and
reshapes as constant-shape Reshapes (models.layers), ~40 nodes per three-block graph where the
standard ops took ~100 (per-node cost, not FLOPs, decides a batch-1 route's time here)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from models.routes import Route

# bumped whenever extraction or export changes the graphs: part of the cache key of exported
# graphs and calibrations (models.adapter.ModelAdapter.fingerprint)
EXPORT_VERSION = 2
OPSET = 18  # the exporter's native opset (>= 17 as the contract asks); no version conversion


def trunk_file(route: Route) -> str:
    return f"trunk-{route.trunk}.onnx"


def path_file(task: str, route: Route) -> str:
    return f"{task}-{route.id}.onnx"


class _Inputs(nn.Module):
    """A module called with its tensor inputs only: the exporter would otherwise trace a
    forward's Python defaults (a width of 1.0) as graph inputs."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.module(*inputs)


def export_graph(
    module: nn.Module,
    args: tuple,
    names: list[str],
    out: Path,
    axes: tuple | None = None,
    output: dict | None = None,
    shared: dict[str, str] | None = None,
) -> Path:
    """One graph, its inputs `names`; `axes`: the dynamic axes per input and `output` those of
    its output (default: the batch axis). TorchScript's exporter: a graph in a third of a second
    where the dynamo exporter takes 5-9 s here, so a cold start exports a model's ~50 graphs in
    seconds; parity with torch is tested per route either way.

    `shared`: initializer name -> a file beside the graph that keeps its data, for a tensor that
    many graphs hold (the text trunks' 47 MB word embeddings): written once, and onnxruntime maps
    external data, so every session of the folder reads the same pages."""
    out.parent.mkdir(parents=True, exist_ok=True)
    dynamic = dict(zip(names, axes or [{0: "batch"}] * len(names))) | {"output": output or {0: "batch"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Inputs(module).eval(),
            args,
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=names,
            output_names=["output"],
            dynamic_axes=dynamic,
            custom_opsets={"com.microsoft": 1},  # onnxruntime's fused Attention (models.layers)
        )
    if shared:
        _share_initializers(out, shared)
    return out


def _share_initializers(graph_file: Path, shared: dict[str, str]) -> None:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(graph_file))
    for tensor in graph.graph.initializer:
        if tensor.name not in shared:
            continue
        data = numpy_helper.to_array(tensor)
        target = graph_file.parent / shared[tensor.name]
        if not target.exists() or target.stat().st_size != data.nbytes:
            partial = target.with_suffix(f".{os.getpid()}.partial")
            np.ascontiguousarray(data).tofile(partial)
            partial.replace(target)  # atomic: a concurrent export writes the same bytes
        tensor.ClearField("raw_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", target.name), ("offset", "0"), ("length", str(data.nbytes))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    onnx.save(graph, str(graph_file))
