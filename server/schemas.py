"""HTTP wire formats: the /v1 API and the Open Inference Protocol (KServe v2)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Budget = float | str


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- /v1 ---------------------------------------------------------------------------------
class ImageInput(_Wire):
    image: str | list[list[float]] = Field(
        description="base64 PNG, or a nested list of rows of pixel values 0-255"
    )


class PredictRequest(_Wire):
    model: str | None = Field(None, description="model name; default: the hosted model")
    task: str | None = Field(None, description="one task; or use `tasks`")
    tasks: list[str] | None = Field(None, description="several tasks over one trunk pass")
    budget: Budget | None = Field(
        None, description="fraction of full-route FLOPs in (0, 1], or min|low|medium|high|max"
    )
    min_budget: Budget | None = Field(None, description="floor when degrading under load")
    latency_ms: float | None = Field(None, gt=0, description="best route whose calibrated latency fits")
    timeout_ms: float | None = Field(None, gt=0, description="answer within this, or 503")
    task_weights: dict[str, float] | None = Field(None, description="preference between tasks")
    mask_format: Literal["list", "png"] = "list"
    inputs: list[ImageInput] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_task_field(self) -> PredictRequest:
        if (self.task is None) == (self.tasks is None):
            raise ValueError("give exactly one of `task` or `tasks`")
        return self

    @property
    def task_list(self) -> list[str]:
        return [self.task] if self.task is not None else list(self.tasks or [])


class ClassificationOutput(BaseModel):
    label: str
    index: int
    scores: list[float]


class MultiLabelOutput(BaseModel):
    labels: list[str]
    scores: list[float]


class DenseOutput(BaseModel):
    mask: list[list[int]] | str
    mask_format: Literal["list", "png"] = "list"


class TaskReceipt(BaseModel):
    route: str
    experts: list[list[int]] = Field(description="experts used, per task-zone block")
    experts_k: int
    decoder_width: float
    score: float = Field(description="validation score of this route")


class Receipt(BaseModel):
    tasks: dict[str, TaskReceipt]
    trunk_width: float
    flops: int
    flops_fraction: float
    budget_requested: str
    degraded: bool
    backend: str
    batch_size: int
    queue_ms: float
    compute_ms: float


class PredictResponse(BaseModel):
    model: str
    outputs: list[dict[str, ClassificationOutput | MultiLabelOutput | DenseOutput]]
    route: Receipt


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- Open Inference Protocol -----------------------------------------------------------
Parameters = dict[str, Any]


class InferInput(_Wire):
    name: str
    shape: list[int]
    datatype: str
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferOutputRequest(_Wire):
    name: str
    parameters: Parameters | None = None


class InferRequest(_Wire):
    id: str | None = None
    parameters: Parameters | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[InferOutputRequest] | None = None
