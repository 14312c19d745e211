"""Model-level comparisons (no HTTP): budget scaling, sparse task paths, fan-out, the machine's
limit and the two backends. Every ratio is of medians measured in interleaved rounds."""

from __future__ import annotations

import numpy as np
import torch

from bench.common import interleaved_medians
from bench.scale import Scale
from models.image.evaluate import evaluate
from models.image.flops import full_flops, request_flops, trunk_flops
from models.image.model import TaskRoutedModel
from models.routes import Route
from routing import Budget, RouteTables

TIERS = ["low", "medium", "high", "max"]


def goal(name: str, value: float, limit: float, at_most: bool = True) -> dict:
    met = value <= limit if at_most else value >= limit
    return {
        "goal": name,
        "value": round(value, 4),
        "target": f"{'<=' if at_most else '>='} {limit}",
        "met": met,
    }


def tier_routes(rt: RouteTables, task: str) -> dict[str, Route]:
    return {tier: rt.resolve([task], Budget.parse(tier)).routes[task] for tier in TIERS}


def images(cfg, batch: int) -> torch.Tensor:
    return torch.rand(batch, 1, cfg.input.height, cfg.input.width)


def budget_scaling(model: TaskRoutedModel, rt: RouteTables, scale: Scale) -> dict:
    """Per task and tier: batch-1 p50 ms and batch-64 throughput of the tier's extracted route."""
    cfg, rows, goals = model.cfg, [], []
    for task in rt.tables:
        routes = tier_routes(rt, task)
        modules = {tier: model.extract({task: r}) for tier, r in routes.items()}
        with torch.inference_mode():
            ms = {
                b: interleaved_medians(
                    {t: (lambda m=m, x=images(cfg, b): m(x)) for t, m in modules.items()}, scale.rounds
                )
                for b in (1, 64)
            }
        for tier, route in routes.items():
            flops = request_flops(cfg, route.width, {task: route})
            rows.append(
                {
                    "task": task,
                    "tier": tier,
                    "route": route.id,
                    "flops_fraction": round(flops / full_flops(cfg, [task]), 4),
                    "batch1_p50_ms": round(ms[1][tier], 3),
                    "batch64_ms": round(ms[64][tier], 2),
                    "batch64_images_per_s": round(64_000 / ms[64][tier], 1),
                }
            )
        goals.append(goal(f"{task}: low/max compute at batch 64", ms[64]["low"] / ms[64]["max"], 0.35))
    return {"rows": rows, "goals": goals}


def accuracy_vs_flops(model: TaskRoutedModel, tables: dict, scale: Scale) -> dict:
    """The validation frontier of every task (route tables) and its test scores."""
    from models.image.data import make_scenes
    from models.image.train import TEST_SEED

    scenes = make_scenes(scale.accuracy_scenes, "test", seed=TEST_SEED)
    rows = []
    for task, table in tables.items():
        for r in table:
            module = model.extract({task: Route.parse(r["id"])})
            test = evaluate(module, scenes, [model.cfg.task(task)], model.cfg.input)[task]
            rows.append(
                {
                    "task": task,
                    "route": r["id"],
                    "flops_fraction": r["flops_fraction"],
                    "validation": r["score"],
                    "test": round(test, 4),
                }
            )
    return {"rows": rows, "goals": [], "test_scenes": scale.accuracy_scenes}


def sparse_paths(model: TaskRoutedModel, scale: Scale) -> dict:
    """One task at its full route vs the dense all-task forward, at batch 64."""
    cfg = model.cfg
    full = Route(1.0, max(cfg.routes.experts), 1.0)
    dense_flops = full_flops(cfg, cfg.task_names)
    modules = {"dense all tasks": model.extract(full)}
    modules |= {t: model.extract({t: full}) for t in cfg.task_names}
    x = images(cfg, 64)
    with torch.inference_mode():
        ms = interleaved_medians({k: (lambda m=m: m(x)) for k, m in modules.items()}, scale.rounds)
    rows, goals = [], []
    for task in cfg.task_names:
        flops = request_flops(cfg, 1.0, {task: full}) / dense_flops
        latency = ms[task] / ms["dense all tasks"]
        rows.append(
            {"task": task, "flops_vs_dense": round(flops, 4), "batch64_latency_vs_dense": round(latency, 4)}
        )
        goals.append(goal(f"{task} full route vs dense all-task (FLOPs)", flops, 0.45))
        goals.append(goal(f"{task} full route vs dense all-task (batch-64 latency)", latency, 0.45))
    return {"rows": rows, "goals": goals, "dense_batch64_ms": round(ms["dense all tasks"], 2)}


def fan_out(model: TaskRoutedModel, scale: Scale) -> dict:
    """All four tasks in one pass (trunk once) vs four single-task passes, at batch 64."""
    cfg = model.cfg
    full = Route(1.0, max(cfg.routes.experts), 1.0)
    together = model.extract(full)
    apart = [model.extract({t: full}) for t in cfg.task_names]
    x = images(cfg, 64)
    with torch.inference_mode():
        ms = interleaved_medians(
            {"one request, all tasks": lambda: together(x), "four requests": lambda: [m(x) for m in apart]},
            scale.rounds,
        )
    flops = full_flops(cfg, cfg.task_names) / sum(full_flops(cfg, [t]) for t in cfg.task_names)
    latency = ms["one request, all tasks"] / ms["four requests"]
    return {
        "rows": [
            {"measure": "FLOPs", "ratio": round(flops, 4)},
            {
                "measure": "batch-64 compute time",
                "ratio": round(latency, 4),
                "fan_out_ms": round(ms["one request, all tasks"], 2),
                "four_ms": round(ms["four requests"], 2),
            },
        ],
        "goals": [
            goal("fan-out vs four requests (FLOPs)", flops, 0.6),
            goal("fan-out vs four requests (batch-64 compute time)", latency, 0.6),
        ],
    }


def machine_limit(model: TaskRoutedModel, scale: Scale) -> dict:
    """Achieved GFLOP/s of the full trunk at batch 64 vs torch's fp32 GEMM on the same threads."""
    cfg = model.cfg
    trunk = model.extract(Route(1.0, max(cfg.routes.experts), 1.0)).trunk
    x = images(cfg, 64)
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    with torch.inference_mode():
        ms = interleaved_medians({"trunk": lambda: trunk(x), "gemm": lambda: a @ b}, scale.rounds)
    trunk_gflops = trunk_flops(cfg, 1.0) * 64 / ms["trunk"] / 1e6
    peak = 2 * n**3 / ms["gemm"] / 1e6
    return {
        "rows": [
            {"measure": "fp32 GEMM 1024^3 (peak)", "gflop_per_s": round(peak, 1)},
            {"measure": "trunk at batch 64", "gflop_per_s": round(trunk_gflops, 1)},
        ],
        "goals": [goal("trunk GFLOP/s vs GEMM peak", trunk_gflops / peak, 0.5, at_most=False)],
        "threads": torch.get_num_threads(),
    }


def backends(model: TaskRoutedModel, rt: RouteTables, scale: Scale, threads: int, onnx_dir) -> dict:
    """torch vs onnxruntime on each task's tier routes (trunk + path), batch 1 and 64."""
    from models.adapter import load_adapter
    from server.backends import build_backend
    from server.settings import Settings

    # tiny runs (CI) export 4 graphs instead of ~30: one task, tiers low and max
    tasks, tiers = (
        (list(rt.tables)[:1], {"low", "max"}) if scale.name == "tiny" else (list(rt.tables), set(TIERS))
    )
    routes = {
        t: sorted({r for tier, r in tier_routes(rt, t).items() if tier in tiers}, key=lambda r: r.id)
        for t in tasks
    }
    settings = Settings(threads=threads, onnx_dir=onnx_dir)
    adapter = load_adapter(model.cfg.name)
    made = {name: build_backend(name, adapter, settings, routes) for name in ("torch", "onnxruntime")}
    rows = []
    for task, task_routes in routes.items():
        for route in task_routes:
            for batch in (1, 64):
                x = np.random.rand(batch, 1, model.cfg.input.height, model.cfg.input.width).astype(np.float32)

                def run(backend, route=route, x=x, task=task):
                    return backend.run_path(task, route, backend.run_trunk(route.trunk, x), x)

                ms = interleaved_medians({n: (lambda b=b: run(b)) for n, b in made.items()}, scale.rounds)
                rows.append(
                    {
                        "task": task,
                        "route": route.id,
                        "batch": batch,
                        "torch_ms": round(ms["torch"], 3),
                        "onnxruntime_ms": round(ms["onnxruntime"], 3),
                        "onnx_vs_torch": round(ms["onnxruntime"] / ms["torch"], 3),
                    }
                )
    return {"rows": rows, "goals": []}
