"""The Open Inference Protocol (KServe v2) endpoints, with the binary tensor data
extension, so that Triton's and KServe's clients work unchanged."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from models.checkpoint import CheckpointError
from server import __version__
from server.deps import body_bytes, check_model, ready_engine, require_auth, serve_request
from server.engine import Engine
from server.errors import APIError, loads, parse_model
from server.lifecycle import reload_engine
from server.responses import json_response
from server.schemas import InferRequest

health = APIRouter(prefix="/v2", tags=["v2 health"])
router = APIRouter(prefix="/v2", tags=["v2"], dependencies=[Depends(require_auth)])

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"UINT8": np.uint8, "FP32": np.float32, "INT64": np.int64}


@health.get("")
def server_metadata() -> dict:
    return {"name": "trunkline", "version": __version__, "extensions": ["binary_tensor_data", "parameters"]}


@health.get("/health/live")
def live() -> dict:
    return {"live": True}


@health.get("/health/ready")
def ready(request: Request) -> Response:
    ok = request.app.state.engine.ready and not request.app.state.draining
    return json_response({"ready": ok}, status=200 if ok else 503)


def output_specs(engine: Engine) -> list[dict]:
    spec, specs = engine.cfg.input, []
    for t in engine.cfg.tasks:
        if t.kind == "dense":
            specs.append(
                {"name": f"{t.name}_mask", "datatype": "UINT8", "shape": [-1, spec.height, spec.width]}
            )
            continue
        specs.append({"name": f"{t.name}_scores", "datatype": "FP32", "shape": [-1, t.num_classes]})
        if t.kind == "classification":
            specs.append({"name": f"{t.name}_label", "datatype": "INT64", "shape": [-1]})
    return specs


@router.get("/models/{model}")
@router.get("/models/{model}/versions/{version}")
def model_metadata(model: str, request: Request, version: str = "1") -> dict:
    engine = check_model(request.app.state.engine, model)
    spec = engine.cfg.input
    return {
        "name": engine.name,
        "versions": ["1"],
        "platform": f"trunkline_{engine.backend.name}",
        "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, spec.height, spec.width]}],
        "outputs": output_specs(engine),
        "parameters": {
            "tasks": ",".join(engine.cfg.task_names),
            "default_budget": engine.default_budget.label,
        },
    }


@router.get("/models/{model}/ready")
@router.get("/models/{model}/versions/{version}/ready")
def model_ready(model: str, request: Request, version: str = "1") -> Response:
    engine = check_model(request.app.state.engine, model)
    ok = engine.ready and not request.app.state.draining
    return json_response({"name": engine.name, "ready": ok}, status=200 if ok else 503)


@router.post("/repository/index")
def repository_index(request: Request) -> list[dict]:
    engine = request.app.state.engine
    return [{"name": engine.name, "version": "1", "state": "READY" if engine.ready else "LOADING"}]


@router.post("/repository/models/{model}/load")
async def load_model(model: str, request: Request) -> Response:
    """Re-read the served checkpoint from disk and swap it in atomically (Triton's
    model-repository extension); other paths cannot be loaded over HTTP."""
    check_model(request.app.state.engine, model)
    lock: asyncio.Lock = request.app.state.reload_lock
    if lock.locked():
        raise APIError("model", f"model {model!r} is already being reloaded", 409, "reload_in_progress")
    async with lock:
        try:
            engine = await reload_engine(request.app)
        except CheckpointError as e:
            raise APIError(
                "model", f"reload failed, still serving the previous model: {e}", 422, "invalid_checkpoint"
            ) from None
    return json_response({"name": engine.name, "ready": engine.ready})


def split_body(body: bytes, header_length: str | None) -> tuple[object, bytes]:
    """(JSON header, binary tail) of a request with the binary tensor data extension."""
    if header_length is None:
        return loads(body), b""
    if not header_length.isdigit() or int(header_length) > len(body):
        raise APIError(
            HEADER_LENGTH,
            f"{HEADER_LENGTH} must be an integer no larger than the body",
            400,
            "invalid_header",
        )
    n = int(header_length)
    return loads(body[:n]), body[n:]


def decode_image_tensor(req: InferRequest, binary: bytes, engine: Engine) -> np.ndarray:
    """The `image` input as float32 [N, H, W] in [0, 1]."""
    spec = engine.cfg.input
    names = [i.name for i in req.inputs]
    if names != ["image"]:
        raise APIError("inputs", f"inputs: expected exactly one input named 'image', got {names}", 400)
    tensor = req.inputs[0]
    if tensor.datatype not in ("UINT8", "FP32"):
        raise APIError(
            "inputs.image.datatype", f"image datatype must be UINT8 or FP32, got {tensor.datatype}", 400
        )
    shape = tensor.shape
    if len(shape) == 4 and shape[1] == 1:
        shape = [shape[0], shape[2], shape[3]]
    if len(shape) != 3 or shape[1:] != [spec.height, spec.width] or shape[0] < 1:
        raise APIError(
            "inputs.image.shape",
            f"image shape must be [N, {spec.height}, {spec.width}], got {tensor.shape}",
            400,
        )
    if shape[0] > engine.settings.max_instances:
        raise APIError(
            "inputs.image.shape",
            f"batch of {shape[0]} exceeds the limit of {engine.settings.max_instances} instances",
            413,
            "too_many_instances",
        )
    dtype = np.dtype(DTYPES[tensor.datatype])
    count = int(np.prod(shape))
    size = (tensor.parameters or {}).get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise APIError("inputs.image", "image has both data and binary_data_size", 400)
        if size != count * dtype.itemsize or size != len(binary):
            raise APIError(
                "inputs.image.parameters.binary_data_size",
                f"binary_data_size {size} does not match shape {tensor.shape} of "
                f"{tensor.datatype} ({count * dtype.itemsize} bytes) or the {len(binary)} bytes sent",
                400,
            )
        array = np.frombuffer(binary, dtype=dtype)
    else:
        if tensor.data is None:
            raise APIError("inputs.image.data", "image has neither data nor binary_data_size", 400)
        try:
            array = np.asarray(tensor.data, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise APIError("inputs.image.data", "image data must be numbers", 400) from None
        if array.size != count:
            raise APIError(
                "inputs.image.data",
                f"image data has {array.size} values; shape {tensor.shape} needs {count}",
                400,
            )
    array = array.reshape(shape)
    if dtype == np.uint8:
        if array.dtype != np.uint8 and (array.min() < 0 or array.max() > 255 or not np.isfinite(array).all()):
            raise APIError("inputs.image.data", "UINT8 image values must be in [0, 255]", 400)
        return array.astype(np.float32) * np.float32(1 / 255)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise APIError("inputs.image.data", "FP32 image values must be in [0, 1] (already scaled)", 400)
    return array.astype(np.float32)


def request_options(req: InferRequest, engine: Engine) -> dict:
    """Trunkline's parameters: task(s), budget, min_budget, timeout (µs), priority."""
    p = dict(req.parameters or {})
    if "tasks" in p and "task" in p:
        raise APIError("parameters.task", "give parameters.task or parameters.tasks, not both", 400)
    field = "parameters.tasks" if "tasks" in p else "parameters.task"
    raw = p.get("tasks", p.get("task"))
    if raw is None:
        raise APIError("parameters.task", f"parameters.task is required: one of {engine.cfg.task_names}", 400)
    if not isinstance(raw, str):
        raise APIError(field, f"{field} must be a string (comma-separated for several tasks)", 400)
    tasks = [t.strip() for t in raw.split(",") if t.strip()]
    timeout = p.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
    ):
        raise APIError(
            "parameters.timeout", "parameters.timeout must be a positive number of microseconds", 400
        )
    priority = p.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise APIError("parameters.priority", "parameters.priority must be a non-negative integer", 400)
    return {
        "tasks": tasks,
        "field": field,
        "budget": p.get("budget"),
        "min_budget": p.get("min_budget"),
        "timeout_ms": timeout / 1000 if timeout is not None else None,
    }


def output_tensors(engine: Engine, tasks: list[str], outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    tensors = {}
    for t in tasks:
        kind, probs = engine.cfg.task(t).kind, outputs[t]
        if kind == "dense":
            tensors[f"{t}_mask"] = probs.argmax(1).astype(np.uint8)
            continue
        tensors[f"{t}_scores"] = probs.astype(np.float32)
        if kind == "classification":
            tensors[f"{t}_label"] = probs.argmax(1).astype(np.int64)
    return tensors


def flat_receipt(receipt: dict) -> dict:
    """OIP parameters are scalars: the receipt flattened, routes as `route.<task>`."""
    flat = {k: v for k, v in receipt.items() if k != "tasks"}
    for task, r in receipt["tasks"].items():
        flat[f"route.{task}"] = r["route"]
    return flat


def encode_infer_response(
    req: InferRequest, engine: Engine, tensors: dict[str, np.ndarray], receipt: dict
) -> Response:
    params = req.parameters or {}
    binary_default = bool(params.get("binary_data_output", False))
    if req.outputs:
        wanted = [
            (o.name, bool((o.parameters or {}).get("binary_data", binary_default))) for o in req.outputs
        ]
        unknown = [n for n, _ in wanted if n not in tensors]
        if unknown:
            raise APIError(
                "outputs", f"unknown outputs {unknown}; this request produces {sorted(tensors)}", 400
            )
    else:
        wanted = [(name, binary_default) for name in tensors]
    DT = {np.dtype(np.uint8): "UINT8", np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}
    outputs, chunks = [], []
    for name, binary in wanted:
        array = tensors[name]
        out = {"name": name, "datatype": DT[array.dtype], "shape": list(array.shape)}
        if binary:
            raw = np.ascontiguousarray(array).tobytes()
            out["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            out["data"] = array.reshape(-1).tolist()
        outputs.append(out)
    body = {
        "model_name": engine.name,
        "model_version": "1",
        "outputs": outputs,
        "parameters": flat_receipt(receipt),
    }
    if req.id is not None:
        body["id"] = req.id
    header = orjson.dumps(body)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(
        header + b"".join(chunks),
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(len(header))},
    )


@router.post("/models/{model}/infer")
@router.post("/models/{model}/versions/{version}/infer")
async def infer(
    model: str, request: Request, version: str = "1", engine: Engine = Depends(ready_engine)
) -> Response:
    started = time.perf_counter()
    check_model(engine, model)
    header, binary = split_body(await body_bytes(request), request.headers.get(HEADER_LENGTH))
    req = parse_model(InferRequest, header)
    opts = request_options(req, engine)
    engine.check_tasks(opts["tasks"], opts["field"])
    request.state.tasks = opts["tasks"]
    images = decode_image_tensor(req, binary, engine)
    admission = engine.admit(
        opts["tasks"], len(images), opts["budget"], opts["min_budget"], opts["timeout_ms"]
    )
    prediction = await serve_request(request, engine, images, admission)
    tensors = output_tensors(engine, opts["tasks"], prediction.result.outputs)
    response = encode_infer_response(req, engine, tensors, engine.receipt(prediction))
    request.app.state.metrics.latency.labels(engine.name, "v2").observe(time.perf_counter() - started)
    return response
