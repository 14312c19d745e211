"""HTTP wire formats, the one definition of each: /v1, the Open Inference Protocol (KServe
v2) and the repository API. Handlers parse requests with these models and build their
responses from them. Numbers are strict: a JSON boolean or string is never a number."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

TIER_NAMES = ("min", "low", "medium", "high", "max")


def _budget_value(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a number in (0, 1] or one of {', '.join(TIER_NAMES)}")
    return value


BudgetValue = Annotated[float | str, BeforeValidator(_budget_value)]
PositiveNumber = Annotated[float, Field(strict=True, gt=0)]


def openapi_body(model: type[BaseModel]) -> dict:
    """A request model's JSON schema for an OpenAPI requestBody, its nested models inlined
    (`$defs` would be looked up at the document's root, where there are none)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Answer(BaseModel):
    """Responses: clients must tolerate fields they do not know (servers add some)."""


# -- /v1 ---------------------------------------------------------------------------------
class PredictRequest(_Wire):
    model_config = ConfigDict(
        extra="forbid",
        # exactly one of `task` and `tasks` (an explicit null is "not given")
        json_schema_extra={
            "oneOf": [
                {"required": ["task"], "properties": {"task": {"type": "string"}}},
                {"required": ["tasks"], "properties": {"tasks": {"type": ["array", "string"]}}},
            ]
        },
    )

    model: str | None = Field(
        None, description="model name; default: the model that has the tasks asked for (or the only one)"
    )
    task: str | None = Field(None, min_length=1, description="one task; or use `tasks`")
    tasks: list[Annotated[str, Field(min_length=1)]] | Annotated[str, Field(min_length=1)] | None = Field(
        None, description="several tasks over one trunk pass (a list, or one comma-separated string)"
    )
    budget: BudgetValue | None = Field(
        None,
        description="fraction of full-route FLOPs in (0, 1], or min|low|medium|high|max, or auto "
        "(each instance climbs a ladder of routes until its answer reaches `confidence`)",
    )
    confidence: Any = Field(
        None,
        description="budget auto: the calibrated confidence an answer must reach, in (0, 1); default 0.9",
        json_schema_extra={"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
    )
    max_budget: BudgetValue | None = Field(None, description="budget auto: the dearest rung (default max)")
    min_budget: BudgetValue | None = Field(
        None, description="floor when degrading under load; budget auto: the first rung"
    )
    latency_ms: PositiveNumber | None = Field(None, description="best route whose calibrated latency fits")
    timeout_ms: PositiveNumber | None = Field(None, description="answer within this, or 503")
    task_weights: dict[str, PositiveNumber] | None = Field(None, description="preference between tasks")
    priority: int | None = Field(
        None, strict=True, ge=0, description="1 runs first; 0 or absent: the default (middle) level"
    )
    mask_format: Literal["list", "png"] = "list"
    inputs: list[dict[str, Any]] = Field(
        min_length=1,
        description="instances, each an object keyed by the model's input name, e.g. "
        '{"image": "<base64 PNG>"} or {"image": [[0, 255, ...], ...]}',
    )


class TaskReceipt(_Answer):
    route: str
    experts: list[list[int]] = Field(description="experts used, per task-zone block")
    experts_k: int
    decoder_width: float
    score: float = Field(description="validation score of this route")


class RowTaskReceipt(_Answer):
    route: str = Field(description="the rung that answered")
    escalations: list[str] = Field(description="every rung this instance ran for the task, cheapest first")
    confidences: list[float] = Field(description="the calibrated confidence at each rung")
    degraded: bool = Field(description="the deadline cut the climb short below the confidence asked")


class RowReceipt(_Answer):
    """Budget auto: what one instance ran."""

    tasks: dict[str, RowTaskReceipt]
    flops: int = Field(description="FLOPs of every rung it ran (each rung's trunk and paths)")
    flops_fraction: float
    reused_flops: int = Field(
        description="FLOPs of trunks a later rung reused instead of running again (not in `flops`)"
    )


class Receipt(_Answer):
    """What actually ran for a request (budget auto: per task its dearest answering route)."""

    tasks: dict[str, TaskReceipt]
    trunk_width: float
    depth: int | None = Field(None, description="encoder layers run (families slimmable by depth)")
    flops: int = Field(description="FLOPs per sample of what ran (text: at the request's token length)")
    flops_fraction: float
    tokens: list[int] | None = Field(None, description="text: tokens per instance, after truncation")
    truncated: bool | None = Field(None, description="text: whether an instance was cut to the token limit")
    budget_requested: str
    degraded: bool
    backend: str
    model_version: str
    priority: int
    batch_size: int
    queue_ms: float
    compute_ms: float
    confidence: float | None = Field(None, description="budget auto: the confidence asked")
    flops_total: int | None = Field(None, description="budget auto: FLOPs of all instances together")
    rows: list[RowReceipt] | None = Field(None, description="budget auto: per instance")


class PredictResponse(_Answer):
    model: str
    outputs: list[dict[str, dict[str, Any]]] = Field(
        description="per instance, per task: classification {label, index, scores}; "
        "multilabel {labels, scores}; dense {mask} (class indices, or a base64 PNG)"
    )
    route: Receipt


class ModelSummary(_Answer):
    name: str
    version: str | None = None  # none until loaded
    family: str | None = None
    tasks: list[str]
    state: Literal["LOADING", "READY", "UNLOADING", "UNAVAILABLE"]
    reason: str = ""
    ready: bool


class ModelList(_Answer):
    models: list[ModelSummary]


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
    shape: list[Annotated[int, Field(strict=True, ge=0)]]
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


class InferOutput(_Answer):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: Parameters | None = None


class InferResponse(_Answer):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutput]
    parameters: Parameters


class V2Error(BaseModel):
    error: str


class RepositoryEntry(_Answer):
    name: str
    version: str = ""
    state: str
    reason: str = ""
