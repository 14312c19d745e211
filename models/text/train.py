"""The text-tasks recipe: multi-task fine-tuning of the full route (LoRA on the pretrained
projections, experts, heads), importance reordering, then sandwich-rule training over routes
(full + smallest + random routes per step) with in-place distillation from the full route.
Route tables on the validation split; test metrics on the held-out split for the card."""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.kinds import kind
from models.routes import Route, pareto_frontier
from models.text.data import TextTask, load_task
from models.text.model import (
    TextConfig,
    TextRoutedModel,
    all_routes,
    base_sha256,
    check_base,
    full_route,
    load_tokenizer,
    mask_bias,
    request_flops,
    text_tasks_config,
)


@dataclass
class TextRecipe:
    name: str = "text-tasks"
    model: dict = field(default_factory=dict)  # TextConfig overrides
    tasks: tuple[str, ...] = ("sentiment", "question_type", "spam", "sentiment_score")
    batch_size: int = 32
    full_steps: int = 1800
    sandwich_steps: int = 1400
    random_routes: int = 1
    lr: float = 1e-3  # LoRA, norms, biases, gates, heads
    expert_lr: float = 2e-4  # the experts: pretrained FFN weights, fine-tuned in full
    weight_decay: float = 0.01
    warmup_steps: int = 100
    balance_weight: float = 0.01
    distill_weight: float = 0.5
    task_weights: dict = field(default_factory=lambda: {"sentiment_score": 0.5})
    sampling_power: float = 0.5  # rows per task in a batch ~ (task size) ** power
    train_tokens: int = 64
    val_rows: int = 1200  # per task, for route tables
    test_rows: int | None = None  # per task, for the card (None: the whole held-out split)
    log_every: int = 50
    seed: int = 0
    threads: int = 2


RECIPES = {
    "text-tasks": TextRecipe(),
    # a few steps: the test suite's training run
    "text-tasks-tiny": TextRecipe(
        name="text-tasks-tiny",
        model={
            "routes": {
                "depths": (2, 6),
                "widths": (0.5, 1.0),
                "experts": (1, 2),
                "decoder_widths": (0.5, 1.0),
            }
        },
        batch_size=8,
        full_steps=6,
        sandwich_steps=4,
        warmup_steps=2,
        val_rows=24,
        test_rows=48,
        log_every=2,
    ),
}


class Encoder:
    """Texts -> int64 batches [B, 2, T] (ids, mask), truncated to `max_tokens`."""

    def __init__(self, cfg: TextConfig, max_tokens: int) -> None:
        self.tok = load_tokenizer(cfg.base)
        self.max_tokens = max_tokens
        self.sep = self.tok.token_to_id("[SEP]")

    def ids(self, texts: list[str]) -> list[list[int]]:
        out = []
        for e in self.tok.encode_batch(texts):
            ids = e.ids
            out.append(ids if len(ids) <= self.max_tokens else ids[: self.max_tokens - 1] + [self.sep])
        return out

    @staticmethod
    def pad(rows: list[list[int]]) -> torch.Tensor:
        T = max(len(r) for r in rows)
        batch = torch.zeros(len(rows), 2, T, dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, 0, : len(r)] = torch.tensor(r)
            batch[i, 1, : len(r)] = 1
        return batch


def _lr_at(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class _Stream:
    """Endless shuffled passes over one task's training rows."""

    def __init__(self, ids: list[list[int]], targets: np.ndarray, seed: int) -> None:
        self.ids, self.targets, self.rng = ids, targets, np.random.default_rng(seed)
        self.order, self.pos = self.rng.permutation(len(ids)), 0

    def take(self, n: int) -> tuple[list[list[int]], np.ndarray]:
        if self.pos + n > len(self.order):
            self.order, self.pos = self.rng.permutation(len(self.ids)), 0
        idx = self.order[self.pos : self.pos + n]
        self.pos += n
        return [self.ids[i] for i in idx], self.targets[idx]


def _sorted_batches(encoder: Encoder, task: TextTask, batch_size: int):
    """(batch, targets) in batches sorted by length: little padding."""
    ids = encoder.ids(task.texts)
    order = np.argsort([len(r) for r in ids], kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        yield Encoder.pad([ids[j] for j in idx]), task.targets[idx]


def evaluate_module(run, encoder: Encoder, task: TextTask, spec, batch_size: int = 64) -> float:
    """The primary metric of `run` (batch -> {task: probabilities}) on a task's rows."""
    meter = spec.new_metric()
    with torch.inference_mode():
        for batch, targets in _sorted_batches(encoder, task, batch_size):
            meter.update(run(batch)[task.name], targets)
    return meter.value()


class TextTrainer:
    def __init__(self, recipe: TextRecipe, out: Path) -> None:
        self.recipe, self.out = recipe, out
        torch.manual_seed(recipe.seed)
        random.seed(recipe.seed)
        torch.set_num_threads(recipe.threads)
        model_cfg = dict(recipe.model)
        base = text_tasks_config().base
        model_cfg["base"] = base.model_copy(update={"sha256": base_sha256(base)})
        cfg = text_tasks_config(**model_cfg)
        cfg = cfg.model_copy(update={"name": recipe.name, "tasks": [cfg.task(t) for t in recipe.tasks]})
        self.cfg = TextConfig.model_validate(cfg.model_dump())
        self.model = TextRoutedModel(self.cfg)
        self.model.load_base(load_file(str(check_base(self.cfg.base))))
        self.encoder = Encoder(self.cfg, recipe.train_tokens)
        self.data = {t: load_task(t) for t in recipe.tasks}
        self.streams, self.counts = {}, self._counts()
        for i, (name, task) in enumerate(self.data.items()):
            train = task.split("train")
            self.streams[name] = _Stream(self.encoder.ids(train.texts), train.targets, recipe.seed + i)
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = (out / "train_log.jsonl").open("w")
        self.started = time.perf_counter()

    def _counts(self) -> dict[str, int]:
        r = self.recipe
        sizes = {t: len(load_task(t).split("train")) ** r.sampling_power for t in r.tasks}
        total = sum(sizes.values())
        counts = {t: max(1, round(r.batch_size * s / total)) for t, s in sizes.items()}
        return counts

    def log(self, **row) -> None:
        row["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        self.log_file.write(json.dumps(row) + "\n")
        self.log_file.flush()

    def _optimizer(self, scale: float = 1.0) -> torch.optim.Optimizer:
        r = self.recipe
        experts = [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and ".experts." in n and "gate" not in n
        ]
        rest = [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and (".experts." not in n or "gate" in n)
        ]
        return torch.optim.AdamW(
            [
                {"params": experts, "lr": r.expert_lr * scale, "base_lr": r.expert_lr * scale},
                {"params": rest, "lr": r.lr * scale, "base_lr": r.lr * scale},
            ],
            weight_decay=r.weight_decay,
        )

    def _batch(self) -> tuple[torch.Tensor, dict[str, tuple[slice, torch.Tensor]]]:
        rows, parts, start = [], {}, 0
        for task, n in self.counts.items():
            ids, targets = self.streams[task].take(n)
            rows += ids
            parts[task] = (slice(start, start + n), torch.from_numpy(targets))
            start += n
        return Encoder.pad(rows), parts

    def _losses(self, batch, parts, route, teacher=None):
        r = self.recipe
        tokens = self.model.forward_trunk(batch, route)
        total, logits = 0.0, {}
        for task, (rows, target) in parts.items():
            k = kind(self.cfg.task(task).kind)
            out = self.model.forward_task(tokens[rows], batch[rows], task, route)
            loss = k.loss(out, target)
            if teacher is not None:
                loss = (1 - r.distill_weight) * loss + r.distill_weight * k.distill(out, teacher[task])
            total = total + r.task_weights.get(task, 1.0) * loss
            logits[task] = out.detach()
        return total + r.balance_weight * self.model.balance_loss(), logits

    def _run(self, phase: str, steps: int, students: bool) -> None:
        r = self.recipe
        full, routes = full_route(self.cfg), all_routes(self.cfg)
        smallest = min(routes, key=lambda x: request_flops(self.cfg, {t: x for t in r.tasks}, 32))
        rng = random.Random(r.seed)
        opt = self._optimizer()
        self.model.train()
        bar = tqdm(range(steps), desc=phase, dynamic_ncols=True)
        running = 0.0
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * _lr_at(step, steps, r.warmup_steps)
            batch, parts = self._batch()
            opt.zero_grad(set_to_none=True)
            loss, teacher = self._losses(batch, parts, full)
            loss.backward()
            total = loss.item()
            if students:
                for route in [smallest] + rng.sample(routes, r.random_routes):
                    loss, _ = self._losses(batch, parts, route, teacher)
                    loss.backward()
                    total += loss.item()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            opt.step()
            running += total
            if (step + 1) % r.log_every == 0:
                bar.set_postfix(loss=f"{running / r.log_every:.3f}")
                self.log(phase=phase, step=step + 1, loss=round(running / r.log_every, 4))
                running = 0.0
        self.model.eval()
        val = {t: round(v, 4) for t, v in self.quick_val(full).items()}
        low = {t: round(v, 4) for t, v in self.quick_val(smallest).items()}
        self.log(phase=phase, step=steps, val_full=val, val_smallest=low)

    def quick_val(self, route, rows: int = 300) -> dict[str, float]:
        self.model.eval()
        run = lambda b: self.model.predict(b, list(self.recipe.tasks), route)  # noqa: E731
        return {
            name: evaluate_module(
                run, self.encoder, _head(task.split("validation"), rows), self.cfg.task(name)
            )
            for name, task in self.data.items()
        }

    def finish(self) -> dict:
        r, model = self.recipe, self.model.eval()
        val = {name: _head(task.split("validation"), r.val_rows) for name, task in self.data.items()}
        tables = build_route_tables(model, self.encoder, val)
        test = {name: _head(task.split("test"), r.test_rows or len(task)) for name, task in self.data.items()}
        test_metrics = test_metrics_by_tier(model, self.encoder, tables, test)
        minutes = (time.perf_counter() - self.started) / 60
        self.log(phase="done", minutes=round(minutes, 1), test=test_metrics)
        save(model, tables, render_card(self.cfg, r, tables, test_metrics, minutes), self.out)
        (self.out / "recipe.json").write_text(json.dumps(asdict(r), indent=2) + "\n")
        return test_metrics


def _head(task: TextTask, n: int) -> TextTask:
    return TextTask(task.name, task.kind, task.labels, task.texts[:n], task.targets[:n])


def route_scores(model: TextRoutedModel, encoder: Encoder, val: dict[str, TextTask]) -> dict[str, dict]:
    """Validation score of every route, per task. Shares work the way routes share weights:
    per batch, each trunk (depth, width) runs once, each zone (k) once, then every head width."""
    cfg, space = model.cfg, model.cfg.routes
    scores: dict[str, dict] = {t: {} for t in val}
    for name, task in val.items():
        spec = cfg.task(name)
        meters = {rt: spec.new_metric() for rt in all_routes(cfg)}
        with torch.inference_mode():
            for batch, targets in _sorted_batches(encoder, task, 64):
                for rt0 in {Route(w, 1, 1.0, d) for d in space.depths for w in space.widths}:
                    tokens = model.forward_trunk(batch, rt0)
                    heads, _ = model.dims(rt0.width)
                    for k in space.experts:
                        x = model.forward_zone(tokens, mask_bias(batch[:, 1]), name, heads, k)
                        for dw in space.decoder_widths:
                            rt = Route(rt0.width, k, dw, rt0.depth)
                            out = kind(spec.kind).activate(model.head(name)(x, batch[:, 1], dw))
                            meters[rt].update(out, targets)
        scores[name] = {rt: m.value() for rt, m in meters.items()}
    return scores


def build_route_tables(
    model: TextRoutedModel, encoder: Encoder, val: dict[str, TextTask]
) -> dict[str, list[dict]]:
    """routes.json: per task the Pareto frontier at the reference token length."""
    cfg = model.cfg
    L = cfg.reference_tokens
    scores = route_scores(model, encoder, val)
    tables = {}
    for task, per_route in scores.items():
        full = request_flops(cfg, {task: full_route(cfg)}, L)
        points = {rt: (request_flops(cfg, {task: rt}, L), s) for rt, s in per_route.items()}
        rows = []
        for rt in pareto_frontier(points):
            flops, score = points[rt]
            params = sum(p.numel() for p in model.extract({task: rt}).parameters())
            rows.append(
                {
                    "id": rt.id,
                    "flops": flops,
                    "flops_fraction": round(flops / full, 4),
                    "score": round(score, 4),
                    "metric": cfg.task(task).metric_name,
                    "params": params,
                }
            )
        tables[task] = rows
    return tables


def test_metrics_by_tier(model, encoder, tables, test: dict[str, TextTask]) -> dict[str, dict]:
    result = {}
    for task, rows in tables.items():
        low = max((row for row in rows if row["flops_fraction"] <= 0.25), key=lambda x: x["score"])
        entry = {}
        for tier, row in (("max", rows[-1]), ("low", low)):
            module = model.extract({task: Route.parse(row["id"])})
            entry[tier] = {
                "route": row["id"],
                "flops_fraction": row["flops_fraction"],
                "score": round(evaluate_module(module, encoder, test[task], model.cfg.task(task)), 4),
            }
        result[task] = entry
    return result


def save(model: TextRoutedModel, tables: dict, card: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    save_file(model.delta_state(), out / "model.safetensors", metadata={"format": "pt", "kind": "delta"})
    (out / "config.json").write_text(model.cfg.model_dump_json(indent=2) + "\n")
    (out / "routes.json").write_text(json.dumps(tables, indent=2) + "\n")
    (out / "card.md").write_text(card)
    return out


def render_card(cfg: TextConfig, recipe: TextRecipe, tables: dict, test: dict, minutes: float) -> str:
    lines = [
        f"# {cfg.name}",
        "",
        f"A task-routed text model on `{cfg.base.package}` {cfg.base.version} (all-MiniLM-L6-v2, sha256",
        f"`{cfg.base.sha256}`): {cfg.trunk_layers} shared layers, {cfg.zone_depth} layers of",
        f"{cfg.num_experts} experts gated per task, a slimmable head per task; slimmable by depth",
        f"{list(cfg.routes.depths)} and width {list(cfg.routes.widths)}. The checkpoint stores only what",
        f"differs from the base: LoRA deltas (rank {cfg.lora_rank}), biases, norms, experts, gates, heads",
        "and the importance orders.",
        "",
        "## Training",
        f"`trunkline train --recipe {recipe.name}`: {recipe.full_steps} multi-task steps of the full route, "
        f"importance reordering, {recipe.sandwich_steps} sandwich-rule steps (full + smallest + "
        f"{recipe.random_routes} random route(s), in-place distillation), batch {recipe.batch_size}, "
        f"seed {recipe.seed}, {recipe.threads} CPU threads. Measured wall time: **{minutes:.1f} minutes**.",
        "",
        "## Test metrics (held-out split: sha1(text) mod 5 == 0)",
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
    lines += ["", f"## Route tables (validation split, FLOPs at {cfg.reference_tokens} tokens)", ""]
    for task, rows in tables.items():
        lines.append(
            f"- **{task}**: "
            + ", ".join(f"{r['id']} ({r['flops_fraction']:.2f}, {r['score']:.3f})" for r in rows)
        )
    return "\n".join(lines) + "\n"


def train(recipe_name: str, out: str | Path, **overrides) -> dict:
    recipe = replace(RECIPES[recipe_name], **overrides)
    trainer = TextTrainer(recipe, Path(out))
    trainer._run("full route", recipe.full_steps, students=False)
    save_file(trainer.model.delta_state(), trainer.out / "full-phase.safetensors")  # to resume from
    trainer.model.reorder_by_importance()
    trainer.log(phase="reorder")
    trainer._run("sandwich", recipe.sandwich_steps, students=True)
    return trainer.finish()


# -- adding a task to a trained model ----------------------------------------------------
@dataclass
class AddTaskRecipe:
    epochs: float = 3.0
    max_steps: int = 600
    batch_size: int = 32
    lr: float = 1e-3  # gate, head
    expert_lr: float = 2e-4
    random_routes: int = 1
    distill_weight: float = 0.5
    train_tokens: int = 64
    val_rows: int = 1000
    seed: int = 0
    threads: int = 2


def add_task(model_dir: str | Path, task: TextTask, recipe: AddTaskRecipe | None = None) -> dict:
    """Train a new task's experts and head on the frozen model, build its route table on
    its validation rows, and write it beside the checkpoint (tasks/NAME.safetensors and
    tasks/NAME.json). No existing file is rewritten."""
    from models.config import TaskSpec
    from models.text.adapter import TASKS_DIR, load_checkpoint

    r = recipe or AddTaskRecipe()
    started = time.perf_counter()
    torch.manual_seed(r.seed)
    torch.set_num_threads(r.threads)
    model_dir = Path(model_dir)
    folder = model_dir / TASKS_DIR
    if (folder / f"{task.name}.json").exists():
        raise ValueError(f"{model_dir} already has an added task {task.name!r}; remove it first")
    model, _ = load_checkpoint(model_dir)
    spec = TaskSpec(name=task.name, kind=task.kind, labels=task.labels, decoder_hidden=256)
    added = model.add_task(spec)
    added.init_from_(model.zone)
    cfg, encoder = model.cfg, Encoder(model.cfg, r.train_tokens)
    train, val, test = (task.split(s) for s in ("train", "validation", "test"))
    if len(train) < 2 or len(val) < 1:
        raise ValueError(f"task {task.name!r} has too few rows ({len(task)}) for its train/validation split")
    stream = _Stream(encoder.ids(train.texts), train.targets, r.seed)
    steps = min(r.max_steps, max(1, round(r.epochs * len(train) / r.batch_size)))
    experts = [p for n, p in added.named_parameters() if n.startswith("experts.") and not n.endswith("gate")]
    rest = [
        p for n, p in added.named_parameters() if not (n.startswith("experts.") and not n.endswith("gate"))
    ]
    opt = torch.optim.AdamW(
        [
            {"params": experts, "lr": r.expert_lr, "base_lr": r.expert_lr},
            {"params": rest, "lr": r.lr, "base_lr": r.lr},
        ]
    )
    k, full, routes = kind(spec.kind), full_route(cfg), all_routes(cfg)
    smallest = min(routes, key=lambda x: request_flops(cfg, {task.name: x}, 32))
    rng = random.Random(r.seed)
    added.train()
    for step in tqdm(range(steps), desc=f"add-task {task.name}", dynamic_ncols=True):
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _lr_at(step, steps, max(1, steps // 20))
        ids, targets = stream.take(min(r.batch_size, len(train)))
        batch, target = Encoder.pad(ids), torch.from_numpy(targets)
        opt.zero_grad(set_to_none=True)
        teacher = None
        for route in [full, smallest] + rng.sample(routes, r.random_routes):
            with torch.no_grad():  # the shared trunk is frozen
                tokens = model.forward_trunk(batch, route)
            out = model.forward_task(tokens, batch, task.name, route)
            loss = k.loss(out, target)
            if teacher is None:
                teacher = out.detach()
            else:
                loss = (1 - r.distill_weight) * loss + r.distill_weight * k.distill(out, teacher)
            loss.backward()
        opt.step()
    model.eval()
    table = build_route_tables(model, encoder, {task.name: _head(val, r.val_rows)})
    test_metrics = test_metrics_by_tier(model, encoder, table, {task.name: test}) if len(test) else {}
    folder.mkdir(exist_ok=True)
    state = {k_: v.detach().contiguous() for k_, v in added.state_dict().items()}
    save_file(state, folder / f"{task.name}.safetensors", metadata={"format": "pt"})
    minutes = (time.perf_counter() - started) / 60
    info = {
        "spec": spec.model_dump(),
        "routes": table[task.name],
        "test": test_metrics.get(task.name),
        "rows": {"train": len(train), "validation": len(val), "test": len(test)},
        "steps": steps,
        "minutes": round(minutes, 2),
    }
    (folder / f"{task.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def remove_task(model_dir: str | Path, name: str) -> None:
    """Stop offering a task: an added task's files are deleted; a trained-in task is listed
    in tasks/removed.json (its weights stay in the shared file, untouched)."""
    from models.text.adapter import REMOVED, TASKS_DIR

    folder = Path(model_dir) / TASKS_DIR
    cfg = TextConfig.model_validate_json((Path(model_dir) / "config.json").read_text())
    if (folder / f"{name}.json").exists():
        (folder / f"{name}.json").unlink()
        (folder / f"{name}.safetensors").unlink(missing_ok=True)
        return
    if name not in cfg.task_names:
        raise ValueError(f"model {cfg.name!r} has no task {name!r}")
    removed_file = folder / REMOVED
    removed = set(json.loads(removed_file.read_text())) if removed_file.exists() else set()
    folder.mkdir(exist_ok=True)
    removed_file.write_text(json.dumps(sorted(removed | {name})) + "\n")
