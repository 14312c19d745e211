"""The image family's architecture configuration: what its checkpoints' `config.json` holds.

Pydantic validates it, so a malformed checkpoint fails with a message naming the field.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import model_validator

from models.config import RouteSpace, TaskSpec, _Strict


class InputSpec(_Strict):
    """What one input instance is: the server decodes requests into this."""

    kind: Literal["image"] = "image"
    channels: int = 1
    height: int = 56
    width: int = 56
    dtype: Literal["uint8"] = "uint8"
    scale: float = 1.0 / 255.0


class StemConfig(_Strict):
    """Input embedding. `kind` picks a class from `models.trunk.STEMS`."""

    kind: Literal["conv"] = "conv"
    channels: tuple[int, ...] = (16, 32, 64)  # hidden channels; a last conv projects to `dim`
    strides: tuple[int, ...] = (2, 2, 1, 2)  # one per conv

    @property
    def stride(self) -> int:
        return math.prod(self.strides)


class ModelConfig(_Strict):
    name: str
    family: Literal["image"] = "image"  # the `trunkline.families` entry point that serves it
    input: InputSpec = InputSpec()
    stem: StemConfig = StemConfig()
    dim: int = 128
    heads: int = 8
    head_dim: int = 16
    mlp_hidden: int = 512
    trunk_depth: int = 3
    task_depth: int = 3
    num_experts: int = 8
    expert_hidden: int = 160
    tasks: list[TaskSpec]
    routes: RouteSpace = RouteSpace()

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be non-empty with unique names, got {names}")
        if max(self.routes.experts) > self.num_experts:
            raise ValueError("routes.experts exceeds num_experts")
        if self.input.height % self.stem.stride or self.input.width % self.stem.stride:
            raise ValueError("input size must be a multiple of stem.stride")
        if len(self.stem.strides) != len(self.stem.channels) + 1:
            raise ValueError("stem.strides needs one stride per conv: len(channels) + 1")
        for w in self.routes.widths:
            if not 0 < w <= 1 or abs(w * self.heads - round(w * self.heads)) > 1e-9:
                raise ValueError(f"route width {w} must select whole attention heads")
        return self

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def grid(self) -> tuple[int, int]:
        return self.input.height // self.stem.stride, self.input.width // self.stem.stride


def mnist_scenes_config(**overrides) -> ModelConfig:
    """The bundled demo model (docs/design.md section 7)."""
    tasks = [
        TaskSpec(name="count", kind="classification", labels=["1", "2", "3"]),
        TaskSpec(name="presence", kind="multilabel", labels=[str(d) for d in range(10)]),
        TaskSpec(name="sum", kind="classification", labels=[str(s) for s in range(28)]),
        TaskSpec(
            name="segment",
            kind="dense",
            labels=["background"] + [f"digit_{d}" for d in range(10)],
        ),
    ]
    return ModelConfig(name="mnist-scenes", tasks=tasks, **overrides)
