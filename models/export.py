"""ONNX export: one graph per trunk width and one per (task, route) path, opset 17, with a
dynamic batch axis. Serving runs the trunk graph once per batch and forks into task graphs,
so a route is the pair (trunk-wXX.onnx, TASK-ROUTE.onnx)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from models.model import TaskPath, TaskRoutedModel
from models.routes import Route

OPSET = 18  # the exporter's native opset (>= 17 as the contract asks); no version conversion


def trunk_file(route: Route) -> str:
    return f"trunk-{route.trunk}.onnx"


def path_file(task: str, route: Route) -> str:
    return f"{task}-{route.id}.onnx"


class _PathGraph(nn.Module):
    """TaskPath with positional inputs, as ONNX wants them."""

    def __init__(self, path: TaskPath) -> None:
        super().__init__()
        self.path = path

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.path(tokens, image)


BATCH = torch.export.Dim("batch", min=1, max=4096)


def _export(module: nn.Module, args: tuple, names: list[str], out: Path, shapes: tuple | None = None) -> Path:
    """One graph, its inputs `names`; `shapes`: the dynamic axes per input (default: the batch axis)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    shapes = shapes or tuple({0: BATCH} for _ in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(),
            args,
            dynamo=True,
            opset_version=OPSET,
            input_names=names,
            output_names=["output"],
            dynamic_shapes=shapes,
            verbose=False,
        )
    program.save(str(out))
    return out


def export_trunk(model: TaskRoutedModel, width: float, out: Path) -> Path:
    cfg = model.cfg
    sub = model.extract(
        Route(width, min(cfg.routes.experts), min(cfg.routes.decoder_widths)), tasks=[cfg.task_names[0]]
    )
    image = torch.rand(2, cfg.input.channels, cfg.input.height, cfg.input.width)
    return _export(sub.trunk, (image,), ["image"], out)


def export_path(model: TaskRoutedModel, task: str, route: Route, out: Path) -> Path:
    cfg = model.cfg
    sub = model.extract({task: route})
    image = torch.rand(2, cfg.input.channels, cfg.input.height, cfg.input.width)
    tokens = sub.trunk(image)
    return _export(_PathGraph(sub.paths[task]), (tokens, image), ["tokens", "image"], out)


def export_routes(
    model: TaskRoutedModel, routes: dict[str, list[Route]], out_dir: str | Path, force: bool = False
) -> list[Path]:
    """Export every trunk width and task path that `routes` uses; skip existing files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for route in {r.trunk: r for rs in routes.values() for r in rs}.values():
        if force or not (out_dir / trunk_file(route)).exists():
            written.append(export_trunk(model, route.width, out_dir / trunk_file(route)))
    for task, rs in routes.items():
        for route in rs:
            if force or not (out_dir / path_file(task, route)).exists():
                written.append(export_path(model, task, route, out_dir / path_file(task, route)))
    return written
