"""Step 1 of docs/adapters.md: what a checkpoint's `config.json` holds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from models.config import RouteSpace, TaskSpec


class TabularConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    family: Literal["tabular"] = "tabular"  # the entry point's name: how the server finds the adapter
    features: list[str]  # the input's columns, in order
    mean: list[float]  # standardisation of each feature (fitted on the training split)
    std: list[float]
    dim: int = 64
    hidden: int = 256  # trunk MLP neurons at width 1 (a width keeps a prefix of them)
    depth: int = 2
    num_experts: int = 4
    expert_hidden: int = 64
    tasks: list[TaskSpec]
    routes: RouteSpace = RouteSpace(widths=(0.25, 0.5, 1.0), experts=(1, 2, 4), decoder_widths=(0.25, 1.0))

    @model_validator(mode="after")
    def _check(self) -> TabularConfig:
        if not (len(self.features) == len(self.mean) == len(self.std)) or min(self.std, default=1) <= 0:
            raise ValueError("features, mean and std must have one entry per feature (std > 0)")
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be non-empty with unique names, got {names}")
        if max(self.routes.experts) > self.num_experts:
            raise ValueError("routes.experts exceeds num_experts")
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        return next(t for t in self.tasks if t.name == name)
