"""Step 4 of docs/adapters.md: the adapter, what the server calls. Everything tabular is here;
batching, budgets, receipts, metrics, both protocols and repository control are the server's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from models.adapter import InputError, ModelAdapter, Tensor
from models.checkpoint import CheckpointError, load_tables
from models.config import TaskSpec
from models.export import export_graph
from models.routes import Route
from trunkline_tabular.config import TabularConfig
from trunkline_tabular.model import TabularRoutedModel, full_route, request_flops, trunk_flops


class TabularAdapter(ModelAdapter):
    adapter_api = 1  # the models.adapter.ADAPTER_API this family implements
    family = "tabular"
    input_name = "features"
    instance_schema = {
        "type": "object",
        "properties": {
            "features": {
                "oneOf": [
                    {"type": "array", "items": {"type": "number"}, "description": "in the model's order"},
                    {"type": "object", "additionalProperties": {"type": "number"}, "description": "by name"},
                ]
            }
        },
        "required": ["features"],
        "additionalProperties": False,
    }

    def __init__(self, path: Path, name: str, version: str) -> None:
        super().__init__(path, name, version)
        try:
            self.cfg = TabularConfig.model_validate_json((path / "config.json").read_text())
        except (OSError, ValidationError) as e:
            raise CheckpointError(f"{path / 'config.json'} is invalid: {e}") from None
        self._tables = load_tables(path, self.cfg)
        self.model = TabularRoutedModel(self.cfg)
        try:
            self.model.load_state_dict(load_file(path / "model.safetensors"))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise CheckpointError(f"{path / 'model.safetensors'} does not load: {e}") from None
        self.model.eval().requires_grad_(False)
        self._tasks = {t.name: t for t in self.cfg.tasks}

    # -- what the model is ------------------------------------------------------------
    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return self._tasks

    @property
    def route_rows(self) -> dict[str, list[dict]]:
        return self._tables

    def input_metadata(self) -> dict:
        return {"name": "features", "shape": [len(self.cfg.features)], "features": self.cfg.features}

    def tensor_inputs(self) -> list[dict]:
        return [{"name": "features", "datatype": "FP32", "shape": [-1, len(self.cfg.features)]}]

    def experts(self, task: str, k: int) -> list[list[int]]:
        return self.model.experts_for(task, k)

    # -- FLOPs ------------------------------------------------------------------------
    def request_flops(self, routes: dict[str, Route]) -> int:
        return request_flops(self.cfg, routes)

    def full_flops(self, tasks: list[str]) -> int:
        return request_flops(self.cfg, {t: full_route(self.cfg) for t in tasks})

    def trunk_flops(self, route: Route) -> int:
        return trunk_flops(self.cfg, route)

    def labelled(self, split: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from trunkline_tabular import data

        rows = data.load(split)
        return {t: (rows.features, rows.targets[t]) for t in self.tasks}

    # -- decoding ---------------------------------------------------------------------
    def decode_instance(self, value: object, field: str) -> np.ndarray:
        names = self.cfg.features
        if isinstance(value, dict):
            missing, extra = [n for n in names if n not in value], sorted(set(value) - set(names))
            if missing or extra:
                raise InputError(
                    field, f"needs exactly the features {names} (missing {missing}, unknown {extra})"
                )
            value = [value[n] for n in names]
        if not isinstance(value, list) or len(value) != len(names):
            raise InputError(field, f"must be a list of {len(names)} numbers {names} or an object of them")
        return _numbers(value, field)[None]

    def decode_tensor(self, tensor: Tensor, field: str) -> np.ndarray:
        """FP32 [N, F], JSON numbers or the binary extension's little-endian floats."""
        f = len(self.cfg.features)
        if tensor.datatype != "FP32":
            raise InputError(f"{field}.datatype", f"features datatype must be FP32, got {tensor.datatype}")
        if len(tensor.shape) != 2 or tensor.shape[1] != f or tensor.shape[0] < 1:
            raise InputError(f"{field}.shape", f"features shape must be [N, {f}], got {tensor.shape}")
        count = tensor.shape[0] * f
        if tensor.raw is not None:
            if len(tensor.raw) != 4 * count:
                raise InputError(
                    f"{field}.parameters.binary_data_size",
                    f"{len(tensor.raw)} bytes do not make shape {tensor.shape} of FP32 ({4 * count} bytes)",
                )
            array = np.frombuffer(tensor.raw, "<f4").astype(np.float32)
            if not np.isfinite(array).all():
                raise InputError(f"{field}.data", "must contain only finite numbers")
        else:
            if not isinstance(tensor.data, list):
                raise InputError(f"{field}.data", "must be a list of numbers")
            array = _numbers(np.asarray(tensor.data, dtype=object).reshape(-1).tolist(), f"{field}.data")
            if array.size != count:
                raise InputError(
                    f"{field}.data", f"has {array.size} values; shape {tensor.shape} needs {count}"
                )
        return array.reshape(tensor.shape[0], f)

    def example_batch(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        mean, std = np.array(self.cfg.mean, np.float32), np.array(self.cfg.std, np.float32)
        return (mean + std * rng.standard_normal((n, len(mean)))).astype(np.float32)

    # -- what backends run ------------------------------------------------------------
    def trunk_module(self, route: Route) -> nn.Module:
        return self.model.extract_trunk(route.width)

    def path_module(self, task: str, route: Route) -> nn.Module:
        return self.model.extract_path(task, route)

    def export_trunk(self, route: Route, out: Path) -> Path:
        x = torch.from_numpy(self.example_batch(2))
        return export_graph(self.trunk_module(route), (x,), ["features"], out)

    def export_path(self, task: str, route: Route, out: Path) -> Path:
        x = torch.from_numpy(self.example_batch(2))
        tokens = self.trunk_module(route)(x)
        return export_graph(self.path_module(task, route), (tokens, x), ["tokens", "features"], out)


def _numbers(values: list, field: str) -> np.ndarray:
    """JSON numbers only (a boolean or a string is refused, never coerced), finite."""
    if any(type(v) not in (int, float) for v in values):
        raise InputError(field, "must contain only numbers")
    array = np.asarray(values, dtype=np.float32)
    if not all(math.isfinite(v) for v in values) or not np.isfinite(array).all():
        raise InputError(field, "must contain only finite numbers")
    return array
