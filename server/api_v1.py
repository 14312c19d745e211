"""The /v1 API: hosted models, and budget-routed predictions with a route receipt.

HTTP only: the repository finds the model, its adapter decodes the inputs, its engine
admits and runs them, the task kinds encode the outputs."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from models.adapter import ModelAdapter, families
from server.engine import RequestOptions
from server.errors import InvalidInput, ModelNotFound, TooLarge, UnsupportedMediaType
from server.http import Call, V1Route, answer, model_response, parse_json, require_auth, v1_error
from server.repository import ModelRepository
from server.schemas import (
    ErrorResponse,
    ModelList,
    ModelSummary,
    PredictRequest,
    PredictResponse,
    openapi_body,
)

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
        confidence=req.confidence,
        max_budget=req.max_budget,
    )


def check_instances(req: PredictRequest, name: str) -> None:
    """Each instance is {input_name: value} (its value is decoded in the batch)."""
    for i, instance in enumerate(req.inputs):
        if name not in instance or len(instance) != 1:
            raise InvalidInput(
                f"each instance must be an object with exactly the key {name!r}", f"inputs.{i}"
            )


def decode_inputs(req: PredictRequest, adapter: ModelAdapter) -> np.ndarray:
    """Each instance's value -> the adapter's decoded batch."""
    name = adapter.input_name
    decoded = [adapter.decode_instance(x[name], f"inputs.{i}.{name}") for i, x in enumerate(req.inputs)]
    return adapter.join(decoded)


def predict_body() -> dict:
    """The request's schema, each instance as one of the installed families declares it."""
    body = openapi_body(PredictRequest)
    body["properties"]["inputs"]["items"] = {"anyOf": [f.instance_schema for f in families().values()]}
    return body


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": predict_body()}}}
    },
)
async def predict_route(request: Request) -> Response:
    """Served by `predict` straight from ASGI (server.app); declared here for the OpenAPI
    page and for apps that mount this router."""
    call = Call.of(request.app.state, request.headers, {})
    return await answer(call, request.receive, predict, v1_error)


async def predict(call: Call) -> Response:
    if not call.headers.get("content-type", "").startswith("application/json"):
        raise UnsupportedMediaType("content-type must be application/json", "content-type")
    req = parse_json(PredictRequest, call.body)
    opts = request_options(req)
    model = req.model if req.model is not None else call.repository.model_for(opts.tasks, opts.field)
    # the lease holds this model's engine until the answer: a reload or an unload waits for it
    with call.repository.lease(model) as engine:
        call.model = engine.name
        call.tasks = engine.known_tasks(opts.tasks)
        limit = engine.settings.max_instances
        if len(req.inputs) > limit:
            raise TooLarge(f"inputs has {len(req.inputs)} instances; the limit is {limit}", "inputs")
        timings = call.timings
        check_instances(req, engine.adapter.input_name)
        timings.lap("parse")
        admission = engine.admit(opts, len(req.inputs), arrived=call.arrived)
        call.routes = {e.task: e.id for e in admission.plan.entries}
        timings.lap("admit")
        # decoding and encoding run in the batch, on the compute thread
        options = {"mask_format": req.mask_format}
        prediction = await engine.infer(
            partial(decode_inputs, req, engine.adapter),
            admission,
            n=len(req.inputs),
            encode=lambda outputs, confidence=None: orjson.dumps(
                engine.encode_json(outputs, options, confidence)
            ),
        )
        timings.batch(prediction.result)
        receipt = engine.receipt(prediction).model_dump_json(exclude_none=True).encode()
        body = b'{"model":%b,"outputs":%b,"route":%b}' % (
            orjson.dumps(engine.name),
            prediction.result.encoded,
            receipt,
        )
        engine.metrics.latency.labels(engine.name, "v1").observe(time.perf_counter() - timings.start)
        timings.lap("answer")
        return Response(body, media_type="application/json")
