"""The /v1 API: hosted models, and budget-routed predictions with a route receipt.

HTTP only: the repository finds the model, its adapter decodes the inputs, its engine
admits and runs them, the task kinds encode the outputs."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.engine import Engine, RequestOptions
from server.errors import InvalidInput, ModelNotFound, TooLarge, UnsupportedMediaType
from server.http import V1Route, body_bytes, model_response, parse_json, require_auth
from server.repository import ModelRepository
from server.schemas import ErrorResponse, ModelList, ModelSummary, PredictRequest, PredictResponse

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_auth)], route_class=V1Route)

ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 415, 422, 429, 503)}


def repository(request: Request) -> ModelRepository:
    return request.app.state.repository


@router.get("/models", response_model=ModelList, responses={401: {"model": ErrorResponse}})
def list_models(request: Request) -> Response:
    repo = repository(request)
    return model_response(ModelList(models=[ModelSummary(**repo.summary(s)) for s in repo.slots.values()]))


@router.get("/models/{model}", responses=ERRORS)
def describe_model(model: str, request: Request) -> dict:
    repo = repository(request)
    slot = repo.slot(model)
    if slot.engine is None:
        raise ModelNotFound(f"model {model!r} is not loaded ({slot.reason})", "model")
    return {**repo.summary(slot), **slot.engine.describe()}


def request_options(req: PredictRequest) -> RequestOptions:
    if (req.task is None) == (req.tasks is None):
        raise InvalidInput("give exactly one of `task` (one task) or `tasks` (several)", "task")
    if req.task is not None:
        tasks, field = [req.task], "task"
    else:
        field = "tasks"
        tasks = (
            [t.strip() for t in req.tasks.split(",") if t.strip()]
            if isinstance(req.tasks, str)
            else req.tasks
        )
    return RequestOptions(
        tasks=list(tasks),
        field=field,
        budget=req.budget,
        min_budget=req.min_budget,
        timeout_ms=req.timeout_ms,
        latency_ms=req.latency_ms,
        task_weights=req.task_weights,
        priority=req.priority or 0,
    )


def decode_inputs(req: PredictRequest, engine: Engine) -> np.ndarray:
    """Each instance {input_name: value} -> the adapter's decoded batch."""
    adapter, name = engine.adapter, engine.adapter.input_name
    decoded = []
    for i, instance in enumerate(req.inputs):
        field = f"inputs.{i}"
        extra = sorted(set(instance) - {name})
        if name not in instance or extra:
            raise InvalidInput(f"each instance must be an object with exactly the key {name!r}", field)
        decoded.append(adapter.decode_instance(instance[name], f"{field}.{name}"))
    return np.concatenate(decoded)


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
                }
            },
        }
    },
)
async def predict(request: Request) -> Response:
    started = time.perf_counter()
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise UnsupportedMediaType("content-type must be application/json", "content-type")
    req = parse_json(PredictRequest, await body_bytes(request))
    # the lease holds this model's engine until the answer: a reload or an unload waits for it
    with repository(request).lease(req.model) as engine:
        return await _predict(request, engine, req, started)


async def _predict(request: Request, engine: Engine, req: PredictRequest, started: float) -> Response:
    state = request.state
    state.model = engine.name
    opts = request_options(req)
    state.tasks = opts.tasks
    limit = engine.settings.max_instances
    if len(req.inputs) > limit:
        raise TooLarge(f"inputs has {len(req.inputs)} instances; the limit is {limit}", "inputs")
    # admission before decoding: a request shed under overload costs no decoding
    admission = engine.admit(opts, len(req.inputs))
    state.routes = {e.task: e.id for e in admission.plan.entries}
    prediction = await engine.infer(decode_inputs(req, engine), admission)
    body = PredictResponse.model_construct(
        model=engine.name,
        outputs=engine.encode_json(prediction, {"mask_format": req.mask_format}),
        route=engine.receipt(prediction),
    )
    engine.metrics.latency.labels(engine.name, "v1").observe(time.perf_counter() - started)
    return model_response(body)
