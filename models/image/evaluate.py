"""Metrics on held-out scenes (docs/design.md section 7) and route tables (Pareto frontiers)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from models.config import TaskSpec
from models.image.config import InputSpec
from models.image.data import Scenes
from models.image.flops import all_routes, full_flops, request_flops
from models.image.model import TaskRoutedModel
from models.routes import Route, pareto_frontier


def images_to_tensor(images: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """uint8 [B, H, W] -> float [B, 1, H, W] scaled as the input spec says: what the model sees."""
    return torch.from_numpy(images).float().mul_(spec.scale).unsqueeze(1)


def evaluate(
    run: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    scenes: Scenes,
    tasks: list[TaskSpec],
    spec: InputSpec,
    batch_size: int = 250,
) -> dict[str, float]:
    """Primary metric per task of `run` (image batch -> probabilities per task)."""
    meters = {t.name: t.new_metric() for t in tasks}
    targets = scenes.targets()
    with torch.inference_mode():
        for i in range(0, len(scenes.images), batch_size):
            out = run(images_to_tensor(scenes.images[i : i + batch_size], spec))
            for task, meter in meters.items():
                meter.update(out[task], targets[task][i : i + batch_size])
    return {t: m.value() for t, m in meters.items()}


def route_scores(model: TaskRoutedModel, scenes: Scenes) -> dict[str, dict[Route, float]]:
    """Score of every route of the route space, per task (trunk shared per route)."""
    cfg = model.cfg
    scores: dict[str, dict[Route, float]] = {t: {} for t in cfg.task_names}
    model.eval()
    for route in all_routes(cfg):
        metrics = evaluate(
            lambda x, r=route: model.predict(x, cfg.task_names, r), scenes, cfg.tasks, cfg.input
        )
        for task, value in metrics.items():
            scores[task][route] = value
    return scores





def build_route_tables(
    model: TaskRoutedModel, scores: dict[str, dict[Route, float]]
) -> dict[str, list[dict]]:
    """routes.json content: per task the Pareto frontier with FLOPs, score, parameters."""
    cfg = model.cfg
    tables = {}
    for task, per_route in scores.items():
        full = full_flops(cfg, [task])
        points = {r: (request_flops(cfg, r.width, {task: r}), s) for r, s in per_route.items()}
        rows = []
        for route in pareto_frontier(points):
            flops, score = points[route]
            params = sum(p.numel() for p in model.extract({task: route}).parameters())
            rows.append(
                {
                    "id": route.id,
                    "flops": flops,
                    "flops_fraction": round(flops / full, 4),
                    "score": round(score, 4),
                    "metric": cfg.task(task).metric_name,
                    "params": params,
                }
            )
        tables[task] = rows
    return tables
