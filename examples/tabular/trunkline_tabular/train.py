"""Step 3 of docs/adapters.md: training, route tables and the checkpoint.

    python -m trunkline_tabular.train --out checkpoints/penguins

Sandwich training (each step: the full route, the smallest and two random routes of the
route space, every task), then every route scored on the validation split, each task's route
table its Pareto frontier over FLOPs (Trunkline's `models.routes.pareto_frontier`), and the
checkpoint written as the server reads it: config.json, model.safetensors, routes.json, card.md.
Temperatures for budget `auto`: `python -m models.calibrate DIR` afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.config import TaskSpec
from models.kinds import kind
from models.routes import Route, pareto_frontier
from trunkline_tabular import data
from trunkline_tabular.config import TabularConfig
from trunkline_tabular.model import TabularRoutedModel, all_routes, full_route, request_flops


def score(model: TabularRoutedModel, split: data.Split, task: str, route: Route) -> float:
    with torch.inference_mode():
        probs = model.extract_path(task, route)(
            model.extract_trunk(route.width)(torch.from_numpy(split.features)), None
        )
    meter = model.cfg.task(task).new_metric()
    meter.update(probs, split.targets[task])
    return float(meter.value())


def route_tables(model: TabularRoutedModel, split: data.Split) -> dict[str, list[dict]]:
    cfg, tables = model.cfg, {}
    for task in cfg.task_names:
        full = request_flops(cfg, {task: full_route(cfg)})
        points = {r: (request_flops(cfg, {task: r}), score(model, split, task, r)) for r in all_routes(cfg)}
        tables[task] = [
            {
                "id": r.id,
                "flops": points[r][0],
                "flops_fraction": round(points[r][0] / full, 4),
                "score": round(points[r][1], 4),
                "metric": cfg.task(task).metric_name,
                "params": sum(p.numel() for p in model.extract_path(task, r).parameters()),
            }
            for r in pareto_frontier(points)
        ]
    return tables


def train(out: Path, steps: int = 400, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    rng = random.Random(seed)
    split = data.load("train")
    cfg = TabularConfig(
        name="penguins",
        features=data.FEATURES,
        mean=split.features.mean(0).round(4).tolist(),
        std=split.features.std(0).round(4).tolist(),
        tasks=[TaskSpec(name=t, kind="classification", labels=labels) for t, labels in data.TASKS.items()],
    )
    model = TabularRoutedModel(cfg)
    routes = all_routes(cfg)
    x = torch.from_numpy(split.features)
    y = {t: torch.from_numpy(v) for t, v in split.targets.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    loss_of = kind("classification").loss
    start = time.monotonic()
    for _ in range(steps):
        batch = torch.randint(0, len(x), (64,))
        sampled = [full_route(cfg), routes[0], *rng.sample(routes, 2)]
        loss = sum(
            loss_of(logits, y[t][batch])
            for r in sampled
            for t, logits in model(x[batch], {t: r for t in cfg.task_names}).items()
        )
        loss = loss + 0.01 * model.experts.balance_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    tables = route_tables(model, data.load("validation"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "routes.json").write_text(json.dumps(tables, indent=2) + "\n")
    test = data.load("test")
    lines = [
        "# penguins (trunkline-tabular)",
        "",
        f"Trained by `python -m trunkline_tabular.train` in {time.monotonic() - start:.0f} s on one "
        f"CPU thread ({steps} steps of 64 birds, seed {seed}), {len(x)} train / "
        f"{len(data.load('validation').features)} validation / {len(test.features)} test birds "
        "of the Palmer penguins.",
        "",
        "| task | metric | route | FLOPs fraction | validation | test |",
        "|---|---|---|---|---|---|",
    ]
    for task, rows in tables.items():
        for row in rows:
            test_score = score(model, test, task, Route.parse(row["id"]))
            cells = [task, row["metric"], row["id"], row["flops_fraction"], row["score"], f"{test_score:.4f}"]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    (out / "card.md").write_text("\n".join(lines) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the checkpoint folder to write")
    parser.add_argument(
        "--steps", type=int, default=400, help="optimiser steps (default 400: more overfits 199 birds)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a net this small runs fastest on one thread (and leaves the other core)
    print(train(args.out, args.steps, args.seed))


if __name__ == "__main__":
    main()
