"""The /v1 API: models, and budget-routed predictions with a route receipt."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.codec import decode_image, encode_png
from server.deps import body_bytes, check_model, ready_engine, require_auth, serve_request
from server.engine import Engine
from server.errors import APIError, loads, parse_model
from server.responses import json_response
from server.schemas import ErrorResponse, PredictRequest, PredictResponse

router = APIRouter(prefix="/v1", tags=["v1"], dependencies=[Depends(require_auth)])

ERRORS = {s: {"model": ErrorResponse} for s in (400, 401, 404, 413, 415, 422, 429, 503)}


def model_summary(engine: Engine) -> dict:
    return {"name": engine.name, "tasks": engine.cfg.task_names, "ready": engine.ready}


@router.get("/models")
def list_models(request: Request) -> dict:
    return {"models": [model_summary(request.app.state.engine)]}


@router.get("/models/{model}", responses=ERRORS)
def describe_model(model: str, request: Request) -> dict:
    engine = check_model(request.app.state.engine, model)
    spec = engine.cfg.input
    tables = engine.tables
    return {
        **model_summary(engine),
        "input": {
            "name": "image",
            "shape": [spec.height, spec.width],
            "dtype": spec.dtype,
            "formats": ["base64 PNG", "nested list 0-255"],
        },
        "default_budget": engine.default_budget.label,
        "backend": engine.backend.name,
        "tasks": {
            t.name: {
                "kind": t.kind,
                "labels": t.labels,
                "routes": [
                    {
                        "id": e.id,
                        "flops": e.flops,
                        "flops_fraction": e.flops_fraction,
                        "score": e.score,
                        "params": e.params,
                        "latency_ms": {str(b): round(tables.route_latency_ms(e, b), 3) for b in e.latency_ms},
                    }
                    for e in tables.tables[t.name]
                ],
            }
            for t in engine.cfg.tasks
        },
    }


def check_instances(req: PredictRequest, engine: Engine) -> int:
    limit = engine.settings.max_instances
    if len(req.inputs) > limit:
        raise APIError(
            "inputs",
            f"inputs has {len(req.inputs)} instances; the limit is {limit}",
            413,
            "too_many_instances",
        )
    return len(req.inputs)


def decode_inputs(req: PredictRequest, engine: Engine) -> np.ndarray:
    shape = (engine.cfg.input.height, engine.cfg.input.width)
    images = [decode_image(x.image, f"inputs.{i}.image", shape) for i, x in enumerate(req.inputs)]
    return np.stack(images).astype(np.float32) * np.float32(1 / 255)


def encode_output(kind: str, labels: list[str], probs: np.ndarray, mask_format: str) -> dict:
    if kind == "classification":
        idx = int(probs.argmax())
        return {"label": labels[idx], "index": idx, "scores": probs.tolist()}
    if kind == "multilabel":
        return {"labels": [labels[i] for i in np.flatnonzero(probs >= 0.5)], "scores": probs.tolist()}
    mask = probs.argmax(0).astype(np.uint8)
    if mask_format == "png":
        return {"mask": encode_png(mask), "mask_format": "png"}
    return {"mask": mask.tolist()}


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
async def predict(request: Request, engine: Engine = Depends(ready_engine)) -> Response:
    started = time.perf_counter()
    if not request.headers.get("content-type", "").startswith("application/json"):
        raise APIError("content-type", "content-type must be application/json", 415, "unsupported_media_type")
    req = parse_model(PredictRequest, loads(await body_bytes(request)))
    if req.model is not None:
        check_model(engine, req.model)
    tasks = req.task_list
    engine.check_tasks(tasks, "task" if req.task is not None else "tasks")
    request.state.tasks = tasks
    # admission before decoding: a request shed under overload costs no image decoding
    admission = engine.admit(
        tasks,
        check_instances(req, engine),
        req.budget,
        req.min_budget,
        req.timeout_ms,
        req.latency_ms,
        req.task_weights,
    )
    images = decode_inputs(req, engine)
    prediction = await serve_request(request, engine, images, admission)
    specs = {t: engine.cfg.task(t) for t in tasks}
    outputs = [
        {
            t: encode_output(specs[t].kind, specs[t].labels, prediction.result.outputs[t][i], req.mask_format)
            for t in tasks
        }
        for i in range(len(images))
    ]
    body = {"model": engine.name, "outputs": outputs, "route": engine.receipt(prediction)}
    request.app.state.metrics.latency.labels(engine.name, "v1").observe(time.perf_counter() - started)
    return json_response(body)
