"""Training recipes: full model, importance reordering, then sandwich-rule training over
routes with in-place distillation from the full route and an expert balance loss."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from models.image import checkpoint
from models.image.config import InputSpec, ModelConfig, mnist_scenes_config
from models.image.data import make_scenes
from models.image.evaluate import build_route_tables, evaluate, images_to_tensor, route_scores
from models.image.flops import all_routes, full_route
from models.image.model import TaskRoutedModel
from models.kinds import kind
from models.losses import feature_distill_loss
from models.routes import Route


@dataclass
class Recipe:
    """Everything that decides a training run, saved next to the checkpoint."""

    name: str = "mnist-scenes"
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    batch_size: int = 128
    full_steps: int = 3500
    sandwich_steps: int = 1600
    random_routes: int = 2
    lr: float = 2e-3
    sandwich_lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    balance_weight: float = 0.02
    # the per-pixel segment loss is what teaches the trunk digit identity fastest
    task_weights: dict = field(default_factory=lambda: {"segment": 3.0})
    distill_weight: float = 0.5  # student loss = (1 - w) * truth + w * distillation
    feature_weight: float = 1.0
    val_scenes: int = 1000
    test_scenes: int = 2000
    log_every: int = 100
    seed: int = 0
    threads: int = 2


RECIPES = {
    "mnist-scenes": Recipe(),
    # a few hundred steps on a small model: the test suite's training run
    "mnist-scenes-tiny": Recipe(
        name="mnist-scenes-tiny",
        model={
            "dim": 64,
            "heads": 4,
            "head_dim": 16,
            "mlp_hidden": 128,
            "trunk_depth": 1,
            "task_depth": 1,
            "num_experts": 4,
            "expert_hidden": 32,
            "stem": {"channels": [8, 16, 32], "strides": [2, 2, 1, 2]},
        },
        batch_size=64,
        full_steps=400,
        sandwich_steps=60,
        lr=3e-3,
        sandwich_lr=1e-3,
        warmup_steps=40,
        val_scenes=200,
        test_scenes=400,
        log_every=50,
    ),
}

VAL_SEED, TEST_SEED = 10_000, 20_000


def _lr_at(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _batch(
    recipe: Recipe, step: int, phase: int, spec: InputSpec
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    scenes = make_scenes(recipe.batch_size, "train", seed=recipe.seed * 1_000_003 + phase * 100_000 + step)
    targets = {k: torch.from_numpy(v) for k, v in scenes.targets().items()}
    return images_to_tensor(scenes.images, spec), targets


def _task_losses(model, tokens, image, targets, route, weights, teacher=None, distill_weight=0.0):
    """Sum over tasks of truth (and distillation) losses; also returns the logits.

    The batch is split by task after the trunk (task i takes rows i, i+T, ...): every
    sample trains the shared trunk, each task path sees a quarter of them. This keeps a
    step at one trunk + one task path per sample, as serving does, instead of four.
    """
    total, logits = 0.0, {}
    T = len(model.cfg.task_names)
    for i, task in enumerate(model.cfg.task_names):
        k = kind(model.cfg.task(task).kind)
        out = model.forward_task(tokens[i::T], image[i::T], task, route)
        loss = k.loss(out, targets[task][i::T])
        if teacher is not None:
            loss = (1 - distill_weight) * loss + distill_weight * k.distill(out, teacher[task])
        total = total + weights.get(task, 1.0) * loss
        logits[task] = out.detach()
    return total, logits


class Trainer:
    def __init__(self, recipe: Recipe, out: Path) -> None:
        self.recipe, self.out = recipe, out
        torch.manual_seed(recipe.seed)
        random.seed(recipe.seed)
        np.random.seed(recipe.seed)
        torch.set_num_threads(recipe.threads)
        self.cfg: ModelConfig = mnist_scenes_config(**recipe.model)
        if recipe.name != "mnist-scenes":
            self.cfg = self.cfg.model_copy(update={"name": recipe.name})
        self.model = TaskRoutedModel(self.cfg)
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "train_log.jsonl").open("w")
        self.started = time.perf_counter()

    def log(self, **row) -> None:
        row["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.log_file.write(json.dumps(row) + "\n")
        self.log_file.flush()

    def _optimizer(self, lr: float) -> torch.optim.Optimizer:
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "gate" not in n]
        other = [p for n, p in self.model.named_parameters() if p.ndim < 2 or "gate" in n]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.recipe.weight_decay},
                {"params": other, "weight_decay": 0.0},
            ],
            lr=lr,
        )

    def train_full(self) -> None:
        """Phase 1: the full route alone, all tasks on every sample."""
        r, route = self.recipe, full_route(self.cfg)
        opt = self._optimizer(r.lr)
        self.model.train()
        bar = tqdm(range(r.full_steps), desc="full model", dynamic_ncols=True)
        running = 0.0
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, r.full_steps, r.lr, r.warmup_steps)
            image, targets = _batch(r, step, 1, self.cfg.input)
            tokens = self.model.forward_trunk(image, route.width)
            loss, _ = _task_losses(self.model, tokens, image, targets, route, r.task_weights)
            loss = loss + r.balance_weight * self.model.balance_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            running += loss.item()
            if (step + 1) % r.log_every == 0:
                bar.set_postfix(loss=f"{running / r.log_every:.3f}")
                self.log(phase="full", step=step + 1, loss=running / r.log_every)
                running = 0.0
            if (step + 1) % (5 * r.log_every) == 0:
                self.log(phase="full", step=step + 1, val=self.quick_val(route))
                self.model.train()

    def quick_val(self, route: Route, n: int = 300) -> dict[str, float]:
        """Validation metrics of one route on a few scenes: progress in the log."""
        self.model.eval()
        scenes = make_scenes(n, "train", seed=VAL_SEED)
        run = lambda x: self.model.predict(x, self.cfg.task_names, route)  # noqa: E731
        return {t: round(v, 4) for t, v in evaluate(run, scenes, self.cfg.tasks, self.cfg.input).items()}

    def train_sandwich(self) -> None:
        """Phase 3: full + smallest + random routes per step, students distilled in place."""
        r = self.recipe
        routes = all_routes(self.cfg)
        full, smallest = full_route(self.cfg), routes[0]
        rng = random.Random(r.seed)
        opt = self._optimizer(r.sandwich_lr)
        self.model.train()
        bar = tqdm(range(r.sandwich_steps), desc="sandwich", dynamic_ncols=True)
        running = 0.0
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr_at(step, r.sandwich_steps, r.sandwich_lr, r.warmup_steps)
            image, targets = _batch(r, step, 3, self.cfg.input)
            opt.zero_grad(set_to_none=True)
            tokens = self.model.forward_trunk(image, full.width)
            loss, teacher = _task_losses(self.model, tokens, image, targets, full, r.task_weights)
            loss = loss + r.balance_weight * self.model.balance_loss()
            loss.backward()
            teacher_tokens = tokens.detach()
            total = loss.item()
            students = [smallest] + rng.sample(routes[1:-1], r.random_routes)
            for route in students:
                tokens = self.model.forward_trunk(image, route.width)
                loss, _ = _task_losses(
                    self.model, tokens, image, targets, route, r.task_weights, teacher, r.distill_weight
                )
                loss = loss + r.feature_weight * feature_distill_loss(tokens, teacher_tokens)
                loss.backward()
                total += loss.item()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            running += total
            if (step + 1) % r.log_every == 0:
                bar.set_postfix(loss=f"{running / r.log_every:.3f}")
                self.log(
                    phase="sandwich",
                    step=step + 1,
                    loss=running / r.log_every,
                    val_smallest=self.quick_val(smallest),
                )
                running = 0.0
                self.model.train()

    def finish(self) -> dict:
        """Route tables on validation scenes, test metrics, checkpoint and card."""
        r, model = self.recipe, self.model.eval()
        val = make_scenes(r.val_scenes, "train", seed=VAL_SEED)
        scores = route_scores(model, val)
        tables = build_route_tables(model, scores)
        test = make_scenes(r.test_scenes, "test", seed=TEST_SEED)
        test_metrics = test_metrics_by_tier(model, tables, test)
        minutes = (time.perf_counter() - self.started) / 60
        self.log(phase="done", minutes=round(minutes, 1), test=test_metrics)
        card = render_card(self.cfg, r, tables, test_metrics, minutes)
        checkpoint.save(model, tables, card, self.out)
        (self.out / "recipe.json").write_text(json.dumps(asdict(r), indent=2) + "\n")
        return test_metrics


def test_metrics_by_tier(model: TaskRoutedModel, tables: dict, scenes) -> dict[str, dict]:
    """Per task: the metric of its full route and of its best route within 0.25 FLOPs."""
    result = {}
    for task, rows in tables.items():
        spec = model.cfg.task(task)
        low = max((row for row in rows if row["flops_fraction"] <= 0.25), key=lambda x: x["score"])
        entry = {}
        for tier, row in (("max", rows[-1]), ("low", low)):
            module = model.extract({task: Route.parse(row["id"])})
            entry[tier] = {
                "route": row["id"],
                "flops_fraction": row["flops_fraction"],
                "score": round(evaluate(module, scenes, [spec], model.cfg.input)[task], 4),
            }
        result[task] = entry
    return result


def render_card(cfg: ModelConfig, recipe: Recipe, tables: dict, test: dict, minutes: float) -> str:
    lines = [
        f"# {cfg.name}",
        "",
        "A task-routed multi-task model for MNIST-Scenes v1 (docs/design.md section 7): a conv stem and",
        f"{cfg.trunk_depth} transformer blocks shared by all tasks, {cfg.task_depth} blocks of",
        f"{cfg.num_experts} experts gated per task, and a slimmable decoder per task.",
        "",
        "## Training",
        f"`trunkline train --recipe {recipe.name}`: {recipe.full_steps} steps of the full model, "
        f"importance reordering, {recipe.sandwich_steps} sandwich-rule steps "
        f"(full + smallest + {recipe.random_routes} random routes, in-place distillation), "
        f"batch {recipe.batch_size}, seed {recipe.seed}, {recipe.threads} CPU threads.",
        f"Measured wall time from scratch: **{minutes:.1f} minutes**.",
        "",
        f"## Test metrics ({recipe.test_scenes} scenes from the test pool, seed {TEST_SEED})",
        "",
        "| task | metric | full route | score | tier low route | FLOPs fraction | score |",
        "|---|---|---|---|---|---|---|",
    ]
    for task, e in test.items():
        metric = tables[task][-1].get("metric", "")
        lines.append(
            f"| {task} | {metric} | {e['max']['route']} | {e['max']['score']:.4f} | "
            f"{e['low']['route']} | {e['low']['flops_fraction']:.3f} | {e['low']['score']:.4f} |"
        )
    lines += ["", f"## Route tables (validation, {recipe.val_scenes} scenes from the train pool)", ""]
    for task, rows in tables.items():
        lines.append(
            f"- **{task}**: "
            + ", ".join(f"{r['id']} ({r['flops_fraction']:.2f}, {r['score']:.3f})" for r in rows)
        )
    return "\n".join(lines) + "\n"


def train(recipe_name: str, out: str | Path, **overrides) -> dict:
    if recipe_name not in RECIPES:
        raise ValueError(f"unknown recipe {recipe_name!r}; known: {sorted(RECIPES)}")
    recipe = replace(RECIPES[recipe_name], **overrides)
    trainer = Trainer(recipe, Path(out))
    trainer.train_full()
    save_file(trainer.model.state_dict(), trainer.out / "full-phase.safetensors")  # resumable
    trainer.model.reorder_by_importance()
    trainer.log(phase="reorder")
    trainer.train_sandwich()
    return trainer.finish()
