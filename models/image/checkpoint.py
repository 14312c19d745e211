"""The image family's checkpoints: model.safetensors, config.json, routes.json, card.md.

Loading runs no code from the checkpoint (safetensors and JSON only) and rejects a
malformed or mismatching checkpoint with a `CheckpointError` that names the problem.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.checkpoint import CheckpointError, load_tables, resolve
from models.image.config import ModelConfig
from models.image.model import TaskRoutedModel

FILES = ("model.safetensors", "config.json", "routes.json", "card.md")


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
