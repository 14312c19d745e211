"""Checkpoint directories: model.safetensors, config.json, routes.json, card.md.

Loading runs no code from the checkpoint (safetensors and JSON only) and rejects a
malformed or mismatching checkpoint with a `CheckpointError` that names the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.config import ModelConfig
from models.model import TaskRoutedModel
from models.routes import Route

BUNDLED = Path(__file__).parent / "checkpoints"
FILES = ("model.safetensors", "config.json", "routes.json", "card.md")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says which file and why."""


def resolve(path_or_name: str | Path) -> Path:
    """A checkpoint directory from a path, or the name of a bundled model."""
    path = Path(path_or_name)
    if path.is_dir():
        return path
    bundled = BUNDLED / str(path_or_name)
    if bundled.is_dir():
        return bundled
    known = sorted(p.name for p in BUNDLED.iterdir() if p.is_dir()) if BUNDLED.is_dir() else []
    raise CheckpointError(
        f"no checkpoint directory at {str(path)!r} and no bundled model of that name (bundled: {known})"
    )


def save(model: TaskRoutedModel, tables: dict[str, list[dict]], card: str, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(model.cfg.model_dump_json(indent=2) + "\n")
    (out / "routes.json").write_text(json.dumps(tables, indent=2) + "\n")
    (out / "card.md").write_text(card)
    return out


def _load_config(path: Path) -> ModelConfig:
    try:
        return ModelConfig.model_validate_json((path / "config.json").read_text())
    except ValidationError as e:
        raise CheckpointError(f"{path / 'config.json'} is invalid: {e}") from None


def load_tables(path: Path, cfg) -> dict[str, list[dict]]:
    file = path / "routes.json"
    try:
        tables = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file} is not valid JSON: {e}") from None
    if not isinstance(tables, dict) or set(tables) != set(cfg.task_names):
        got = sorted(tables) if isinstance(tables, dict) else type(tables).__name__
        raise CheckpointError(f"{file} must have one route table per task {cfg.task_names}, got {got}")
    for task, rows in tables.items():
        if not isinstance(rows, list) or not rows:
            raise CheckpointError(f"{file}: route table of task {task!r} is empty or not a list")
        for row in rows:
            missing = {"id", "flops", "flops_fraction", "score"} - set(row)
            if missing:
                raise CheckpointError(f"{file}: a route of task {task!r} lacks {sorted(missing)}")
            try:
                Route.parse(row["id"]).check(cfg)
            except ValueError as e:
                raise CheckpointError(f"{file}: task {task!r}: {e}") from None
    return tables


def load(path_or_name: str | Path) -> tuple[TaskRoutedModel, dict[str, list[dict]]]:
    """(model in eval mode, route tables) from a checkpoint directory or bundled name."""
    path = resolve(path_or_name)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {missing}")
    cfg = _load_config(path)
    tables = load_tables(path, cfg)
    try:
        state = load_file(path / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / 'model.safetensors'} is unreadable: {e}") from None
    model = TaskRoutedModel(cfg)
    expected = model.state_dict()
    absent = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if absent or extra:
        raise CheckpointError(
            f"{path / 'model.safetensors'} does not match config.json: "
            f"missing tensors {absent[:5]}, unexpected tensors {extra[:5]}"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path / 'model.safetensors'}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state)
    return model.eval(), tables
