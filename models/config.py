"""What every family's `config.json` shares: tasks (name, kind, labels) and the route space.

Pydantic validates it, so a malformed checkpoint fails with a message naming the field.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from models.kinds import KINDS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskSpec(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    kind: str = Field(description="a task kind of models.kinds.KINDS")
    labels: list[str]
    decoder_hidden: int = 128
    metric: str | None = Field(None, description="the kind's metric when unset; classification: f1")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in KINDS:
            raise ValueError(f"unknown task kind {value!r}; known: {sorted(KINDS)}")
        return value

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def metric_name(self) -> str:
        return self.metric or KINDS[self.kind].metric_name

    def new_metric(self):
        return KINDS[self.kind].metric(self.num_classes, self.metric)


class RouteSpace(_Strict):
    """The knobs a route may turn: every route picks one value of each."""

    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    experts: tuple[int, ...] = (1, 2, 4)
    decoder_widths: tuple[float, ...] = (0.25, 0.5, 1.0)
