"""The image family's ONNX graphs: one per trunk width and one per (task, route) path."""

from __future__ import annotations

from pathlib import Path

import torch

from models.export import export_graph, path_file, trunk_file
from models.image.model import TaskRoutedModel
from models.routes import Route


def export_trunk(model: TaskRoutedModel, width: float, out: Path) -> Path:
    cfg = model.cfg
    sub = model.extract(
        Route(width, min(cfg.routes.experts), min(cfg.routes.decoder_widths)), tasks=[cfg.task_names[0]]
    )
    image = torch.rand(2, cfg.input.channels, cfg.input.height, cfg.input.width)
    return export_graph(sub.trunk, (image,), ["image"], out)


def export_path(model: TaskRoutedModel, task: str, route: Route, out: Path) -> Path:
    cfg = model.cfg
    sub = model.extract({task: route})
    image = torch.rand(2, cfg.input.channels, cfg.input.height, cfg.input.width)
    tokens = sub.trunk(image)
    return export_graph(sub.paths[task], (tokens, image), ["tokens", "image"], out)


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
