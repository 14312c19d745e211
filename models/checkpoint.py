"""Checkpoint directories: model.safetensors, config.json, routes.json, card.md.

Loading runs no code from the checkpoint (safetensors and JSON only) and rejects a
malformed or mismatching checkpoint with a `CheckpointError` that names the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from models.routes import Route

BUNDLED = Path(__file__).parent / "checkpoints"


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
