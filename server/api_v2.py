"""The Open Inference Protocol (KServe v2) endpoints, with the binary tensor data extension
and Triton's model repository extension, so that Triton's and KServe's clients work
unchanged. HTTP only: the repository, adapters and engines do the rest."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from models.adapter import Tensor
from server import __version__
from server.engine import Engine, RequestOptions
from server.errors import InvalidInput
from server.http import Call, V2Route, answer, json_response, parse_json, require_auth, v2_error
from server.repository import ModelRepository
from server.schemas import InferOutput, InferRequest, InferResponse, RepositoryEntry, V2Error, openapi_body

health = APIRouter(prefix="/v2", tags=["v2 health"], route_class=V2Route)
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[Depends(require_auth)], route_class=V2Route)

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
ERRORS = {s: {"model": V2Error} for s in (400, 401, 403, 404, 413, 415, 422, 429, 503)}


def repository(request: Request) -> ModelRepository:
    return request.app.state.repository


@health.get("")
def server_metadata() -> dict:
    return {
        "name": "trunkline",
        "version": __version__,
        "extensions": ["binary_tensor_data", "parameters", "model_repository"],
    }


@health.get("/health/live")
def live() -> dict:
    return {"live": True}


@health.get("/health/ready", responses={503: {"description": "not ready"}})
def ready(request: Request) -> Response:
    ok = repository(request).ready
    return json_response({"ready": ok}, status=200 if ok else 503)


@router.get("/models/{model}", responses=ERRORS)
@router.get("/models/{model}/versions/{version}", responses=ERRORS)
def model_metadata(model: str, request: Request, version: str | None = None) -> dict:
    engine = repository(request).loaded(model, version)
    return {
        "name": engine.name,
        "versions": [engine.version],
        "platform": f"trunkline_{engine.backend.name}",
        "inputs": engine.adapter.tensor_inputs(),
        "outputs": engine.tensor_outputs(),
        "parameters": {"tasks": ",".join(engine.tasks), "default_budget": engine.default_budget.label},
    }


@router.get("/models/{model}/ready", responses=ERRORS)
@router.get("/models/{model}/versions/{version}/ready", responses=ERRORS)
def model_ready(model: str, request: Request, version: str | None = None) -> Response:
    repo = repository(request)
    slot = repo.slot(model)
    engine = slot.engine
    ok = bool(engine and engine.ready and slot.state == "READY" and not repo.draining)
    if version is not None and engine is not None and version != engine.version:
        ok = False
    return json_response({"name": model, "ready": ok}, status=200 if ok else 503)


@router.post("/repository/index", response_model=list[RepositoryEntry])
def repository_index(request: Request) -> Response:
    entries = repository(request).index()
    return Response(orjson.dumps([e.model_dump() for e in entries]), media_type="application/json")


@router.post("/repository/models/{model}/load", responses=ERRORS)
async def load_model(model: str, request: Request) -> Response:
    """Load a model, or a new version of it, from the repository and swap it in once it is
    ready (explicit model-control mode); a failed load keeps the old version serving."""
    engine = await repository(request).load(model)
    return json_response({"name": engine.name, "version": engine.version, "ready": engine.ready})


@router.post("/repository/models/{model}/unload", responses=ERRORS)
async def unload_model(model: str, request: Request) -> Response:
    """Stop taking requests for the model, answer those in flight, then release it."""
    await repository(request).unload(model)
    return json_response({"name": model, "state": "UNAVAILABLE"})


def split_body(body: bytes, header_length: str | None) -> tuple[InferRequest, memoryview]:
    """(JSON header, binary tail) of a request with the binary tensor data extension. The
    tail is a view: binary tensors go from the body into numpy without copies."""
    if header_length is None:
        return parse_json(InferRequest, body), memoryview(b"")
    if not header_length.isdigit() or int(header_length) > len(body):
        raise InvalidInput(f"must be an integer no larger than the body ({len(body)} bytes)", HEADER_LENGTH)
    n = int(header_length)
    return parse_json(InferRequest, body[:n]), memoryview(body)[n:]


def input_tensors(req: InferRequest, binary: memoryview) -> list[tuple[Tensor, str]]:
    """Each input with its data from JSON or its slice of the binary tail."""
    tensors, offset = [], 0
    for i, t in enumerate(req.inputs):
        field = f"inputs.{t.name}" if t.name.isidentifier() else f"inputs.{i}"
        size = (t.parameters or {}).get("binary_data_size")
        if size is None:
            if t.data is None:
                raise InvalidInput("has neither data nor parameters.binary_data_size", field)
            tensors.append((Tensor(t.name, t.datatype, t.shape, data=t.data), field))
            continue
        if t.data is not None:
            raise InvalidInput("has both data and parameters.binary_data_size", field)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or offset + size > len(binary):
            raise InvalidInput(
                f"binary_data_size {size!r} is not a size within the {len(binary)} binary bytes sent",
                f"{field}.parameters.binary_data_size",
            )
        tensors.append((Tensor(t.name, t.datatype, t.shape, raw=binary[offset : offset + size]), field))
        offset += size
    if offset != len(binary):
        raise InvalidInput(
            f"the binary_data_size of the inputs add up to {offset} bytes; {len(binary)} were sent",
            "inputs",
        )
    return tensors


def input_tensor(tensors: list[tuple[Tensor, str]], engine: Engine) -> tuple[Tensor, str, int]:
    """The model's one input tensor, its field name and its number of instances (HTTP and
    gRPC). Its data is decoded later, in the batch."""
    expected = engine.adapter.input_name
    names = [t.name for t, _ in tensors]
    if names != [expected]:
        raise InvalidInput(f"expected exactly one input named {expected!r}, got {names}", "inputs")
    tensor, field = tensors[0]
    if not tensor.shape or tensor.shape[0] < 1:
        raise InvalidInput(
            f"shape {tensor.shape} has no batch of instances (shape [N, ...], N >= 1)", f"{field}.shape"
        )
    if tensor.shape[0] > engine.settings.max_instances:
        raise InvalidInput(
            f"batch of {tensor.shape[0]} exceeds the limit of {engine.settings.max_instances} instances",
            f"{field}.shape",
        )
    return tensor, field, tensor.shape[0]


def request_options(p: dict, engine: Engine) -> RequestOptions:
    """Trunkline's request parameters (HTTP and gRPC): task(s), budget, min_budget, timeout
    (µs), priority; budget auto's confidence and max_budget."""
    if "tasks" in p and "task" in p:
        raise InvalidInput("give parameters.task or parameters.tasks, not both", "parameters.task")
    field = "parameters.tasks" if "tasks" in p else "parameters.task"
    raw = p.get("tasks", p.get("task"))
    if raw is None:
        raise InvalidInput(f"is required: one of {engine.tasks}", "parameters.task")
    if not isinstance(raw, str):
        raise InvalidInput("must be a string (comma-separated for several tasks)", field)
    timeout = p.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise InvalidInput("must be a positive number of microseconds", "parameters.timeout")
    confidence = p.get("confidence")
    if confidence is not None and (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0 < confidence < 1  # NaN fails this too
    ):
        raise InvalidInput("must be a number strictly between 0 and 1", "parameters.confidence")
    priority = p.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise InvalidInput("must be a non-negative integer", "parameters.priority")
    return RequestOptions(
        tasks=[t.strip() for t in raw.split(",") if t.strip()],
        field=field,
        budget=p.get("budget"),
        min_budget=p.get("min_budget"),
        timeout_ms=timeout / 1000 if timeout is not None else None,
        priority=priority,
        confidence=confidence,
        max_budget=p.get("max_budget"),
    )


def flat_receipt(receipt: dict) -> dict:
    """OIP parameters are scalars: the receipt flattened, routes as `route.<task>`."""
    flat = {k: v for k, v in receipt.items() if k not in ("tasks", "rows") and v is not None}
    if "tokens" in flat:  # per instance: a scalar string "12,7"
        flat["tokens"] = ",".join(map(str, flat["tokens"]))
    for task, r in receipt["tasks"].items():
        flat[f"route.{task}"] = r["route"]
    # budget auto, per instance i and task: `escalations.<task>.<i>` "L2-...,L4-...",
    # `confidences.<task>.<i>` "0.61,0.97", `degraded.<task>.<i>`, and `flops.<i>`
    for i, row in enumerate(receipt.get("rows") or []):
        for task, r in row["tasks"].items():
            flat[f"escalations.{task}.{i}"] = ",".join(r["escalations"])
            flat[f"confidences.{task}.{i}"] = ",".join(map(str, r["confidences"]))
            flat[f"degraded.{task}.{i}"] = r["degraded"]
        flat[f"flops.{i}"] = row["flops"]
    return flat


def encode_outputs(
    req: InferRequest,
    engine: Engine,
    outputs: dict[str, np.ndarray],
    confidence: dict[str, np.ndarray] | None = None,
) -> tuple[list[InferOutput], list[bytes]]:
    """The requested outputs (all by default), as JSON data or binary chunks (run in the
    batch, on the compute thread; budget auto: once its rows are answered)."""
    tensors = engine.encode_tensors(outputs, confidence)
    params = req.parameters or {}
    binary_default = bool(params.get("binary_data_output", False))
    if req.outputs:
        wanted = [
            (o.name, bool((o.parameters or {}).get("binary_data", binary_default))) for o in req.outputs
        ]
        unknown = [n for n, _ in wanted if n not in tensors]
        if unknown:
            raise InvalidInput(
                f"unknown outputs {unknown}; this request produces {sorted(tensors)}", "outputs"
            )
    else:
        wanted = [(name, binary_default) for name in tensors]
    encoded, chunks = [], []
    for name, binary in wanted:
        array = tensors[name]
        out = InferOutput.model_construct(name=name, datatype=DATATYPES[array.dtype], shape=list(array.shape))
        if binary:
            raw = np.ascontiguousarray(array).tobytes()
            out.parameters = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out.data = array.reshape(-1).tolist()
        encoded.append(out)
    return encoded, chunks


def respond(
    req: InferRequest, engine: Engine, encoded: tuple[list[InferOutput], list[bytes]], receipt: dict
) -> Response:
    outputs, chunks = encoded
    body = InferResponse.model_construct(
        model_name=engine.name,
        model_version=engine.version,
        id=req.id,
        outputs=outputs,
        parameters=flat_receipt(receipt),
    )
    header = body.model_dump_json(exclude_none=True).encode()
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


# JSON, as the protocol's own OpenAPI document declares it. The binary tensor data extension
# (the JSON header, then the tensors' bytes; Inference-Header-Content-Length: the header's
# length) is negotiated by that header, whatever the content type: no schema can say it
INFER_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": openapi_body(InferRequest)}}}
}


@router.post(
    "/models/{model}/infer", response_model=InferResponse, responses=ERRORS, openapi_extra=INFER_BODY
)
async def infer_route(model: str, request: Request) -> Response:
    """Inference. Binary tensor data extension: the body is the JSON header then the tensors'
    bytes (in the order of the inputs' `parameters.binary_data_size`), with the header
    `Inference-Header-Content-Length: <JSON header bytes>`; outputs asking for `binary_data`
    come back the same way."""
    # served by `infer` straight from ASGI (server.app); declared here for the OpenAPI page
    # and for apps that mount this router
    call = Call.of(request.app.state, request.headers, dict(request.path_params))
    return await answer(call, request.receive, infer, v2_error)


@router.post(
    "/models/{model}/versions/{version}/infer",
    response_model=InferResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
)
async def infer_version_route(model: str, version: str, request: Request) -> Response:
    """`infer` for one version of the model (404 when another is loaded)."""
    return await infer_route(model, request)


async def infer(call: Call) -> Response:
    timings = call.timings
    # the model first: an unknown model is a 404 whatever the body
    with call.repository.lease(call.params["model"], call.params.get("version")) as engine:
        call.model = engine.name
        req, binary = split_body(call.body, call.headers.get(HEADER_LENGTH))
        opts = request_options(dict(req.parameters or {}), engine)
        call.tasks = engine.known_tasks(opts.tasks)
        tensor, field, n = input_tensor(input_tensors(req, binary), engine)
        timings.lap("parse")
        admission = engine.admit(opts, n, "parameters.priority", call.arrived)
        call.routes = {e.task: e.id for e in admission.plan.entries}
        timings.lap("admit")
        # decoding and encoding run in the batch, on the compute thread
        prediction = await engine.infer(
            partial(engine.adapter.decode_tensor, tensor, field),
            admission,
            n=n,
            encode=partial(encode_outputs, req, engine),
        )
        timings.batch(prediction.result)
        receipt = engine.receipt(prediction).model_dump()
        response = respond(req, engine, prediction.result.encoded, receipt)
        engine.metrics.latency.labels(engine.name, "v2").observe(time.perf_counter() - timings.start)
        timings.lap("answer")
        return response
