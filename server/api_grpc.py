"""The Open Inference Protocol over gRPC (Triton's and KServe's `inference.GRPCInferenceService`)
and gRPC's standard health service, in the same process, event loop, engines and batcher as
the HTTP API. Requests, receipts and errors are the HTTP v2 API's, in gRPC's terms:

- Trunkline's request fields (`task`, `tasks`, `budget`, `min_budget`, `timeout` in µs,
  `priority`, `confidence`, `max_budget`) are request `parameters`; the call's gRPC deadline,
  when it has one, is a timeout too (the earlier of the two counts);
- inputs come as `raw_input_contents` (little-endian bytes; BYTES elements each a 4-byte
  length and its bytes, as Triton's client writes them) or typed `contents`; outputs always
  as `raw_output_contents`, as Triton answers;
- the receipt is the response's `parameters`, flattened as over HTTP; `server-timing` is
  trailing metadata;
- errors are status codes as Triton's server maps them (`CODES`), UNAVAILABLE with the retry
  delay in trailing metadata (`retry-after` seconds, and `grpc-retry-pushback-ms` that gRPC's
  own retry policy honours).

Calls count in `trunkline_requests_total` under the HTTP status the same answer has there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

import grpc
import numpy as np

from models.adapter import InputError, Tensor
from server import __version__
from server import errors as e
from server.api_v2 import DATATYPES, flat_receipt, input_tensor, request_options
from server.engine import Engine
from server.http import V2_STATUS, Timings, check_auth, status_of
from server.protos import health, inference, service_handler

log = logging.getLogger("trunkline")

SERVICE = "inference.GRPCInferenceService"
HEALTH = "grpc.health.v1.Health"

# domain error -> status code (the first class in the error's MRO that is listed)
CODES: dict[type[e.TrunklineError], grpc.StatusCode] = {
    e.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    e.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    e.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
    e.LoadFailed: grpc.StatusCode.INVALID_ARGUMENT,
    e.TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    e.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
    e.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    e.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
    e.ModelUnloading: grpc.StatusCode.UNAVAILABLE,
    e.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
    e.Overloaded: grpc.StatusCode.UNAVAILABLE,
    e.ControlDisabled: grpc.StatusCode.PERMISSION_DENIED,
    e.Internal: grpc.StatusCode.INTERNAL,
}

# where typed `contents` of each datatype go (FP16 and BF16 only as raw bytes)
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def code_of(err: e.TrunklineError) -> grpc.StatusCode:
    for cls in type(err).__mro__:
        if cls in CODES:
            return CODES[cls]
    return grpc.StatusCode.INTERNAL


async def abort(context: grpc.aio.ServicerContext, err: e.TrunklineError) -> None:
    metadata = ()
    if err.retry_after is not None:
        seconds = max(1, round(err.retry_after))
        metadata = (("retry-after", str(seconds)), ("grpc-retry-pushback-ms", str(seconds * 1000)))
    await context.abort(code_of(err), err.message, metadata)


def parameters(params) -> dict:
    """A protobuf map of InferParameter as plain values (a parameter with none set: None)."""
    out = {}
    for key, value in params.items():
        which = value.WhichOneof("parameter_choice")
        out[key] = getattr(value, which) if which else None
    return out


def set_parameters(target, values: dict) -> None:
    for key, value in values.items():
        p = target[key]
        if isinstance(value, bool):
            p.bool_param = value
        elif isinstance(value, int):
            p.int64_param = value
        elif isinstance(value, float):
            p.double_param = value
        else:
            p.string_param = str(value)


def input_tensors(request) -> list[tuple[Tensor, str]]:
    """Each input with its data: its slice of `raw_input_contents`, or its typed contents."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise e.InvalidInput(
            f"holds {len(raw)} tensors; the request has {len(request.inputs)} inputs (all raw or none)",
            "raw_input_contents",
        )
    tensors = []
    for i, t in enumerate(request.inputs):
        field = f"inputs.{t.name}" if t.name.isidentifier() else f"inputs.{i}"
        given = [f.name for f, _ in t.contents.ListFields()]
        if raw:
            if given:
                raise e.InvalidInput("has contents, and the request raw_input_contents", f"{field}.contents")
            tensors.append((Tensor(t.name, t.datatype, list(t.shape), raw=raw[i]), field))
            continue
        where = CONTENTS.get(t.datatype)
        if where is None:
            known = sorted(CONTENTS)
            raise e.InvalidInput(
                f"{t.datatype!r} has no typed contents; send it in raw_input_contents, or use one of {known}",
                f"{field}.datatype",
            )
        if given != [where]:
            got = ", ".join(given) or "nothing"
            raise e.InvalidInput(
                f"{t.datatype} data goes in contents.{where}; got {got}", f"{field}.contents"
            )
        values = getattr(t.contents, where)
        if t.datatype == "BYTES":
            data = [_utf8(b, f"{field}.contents.bytes_contents.{j}") for j, b in enumerate(values)]
        else:
            data = list(values)
        tensors.append((Tensor(t.name, t.datatype, list(t.shape), data=data), field))
    return tensors


def _utf8(raw: bytes, field: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise e.InvalidInput(f"is not valid UTF-8 (byte {err.start})", field) from None


def encode_outputs(request, engine: Engine, outputs: dict[str, np.ndarray], confidence=None):
    """The requested outputs (all by default) as a response with raw contents (run in the
    batch, on the compute thread)."""
    tensors = engine.encode_tensors(outputs, confidence)
    names = [o.name for o in request.outputs] or list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise e.InvalidInput(f"unknown outputs {unknown}; this request produces {sorted(tensors)}", "outputs")
    response = inference.ModelInferResponse(
        model_name=engine.name, model_version=engine.version, id=request.id
    )
    for name in names:
        array = tensors[name]
        response.outputs.add(name=name, datatype=DATATYPES[array.dtype], shape=array.shape)
        response.raw_output_contents.append(np.ascontiguousarray(array).tobytes())
    return response


class InferenceService:
    """`inference.GRPCInferenceService` on the app's repository."""

    def __init__(self, state) -> None:
        self.settings, self.repository, self.metrics = state.settings, state.repository, state.metrics

    def _auth(self, context: grpc.aio.ServicerContext) -> None:
        check_auth(self.settings.auth_token, dict(context.invocation_metadata() or ()))

    async def ServerLive(self, request, context):
        return inference.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return inference.ServerReadyResponse(ready=self.repository.ready)

    async def ServerMetadata(self, request, context):
        return inference.ServerMetadataResponse(
            name="trunkline",
            version=__version__,
            extensions=["binary_tensor_data", "parameters", "model_repository"],
        )

    async def ModelReady(self, request, context):
        try:
            self._auth(context)
            slot = self.repository.slot(request.name)
        except e.TrunklineError as err:
            return await abort(context, err)
        engine = slot.engine
        ok = bool(engine and engine.ready and slot.state == "READY" and not self.repository.draining)
        if request.version and engine is not None and request.version != engine.version:
            ok = False
        return inference.ModelReadyResponse(ready=ok)

    async def ModelMetadata(self, request, context):
        try:
            self._auth(context)
            engine = self.repository.loaded(request.name, request.version or None)
        except e.TrunklineError as err:
            return await abort(context, err)
        response = inference.ModelMetadataResponse(
            name=engine.name, versions=[engine.version], platform=f"trunkline_{engine.backend.name}"
        )
        for target, specs in (
            (response.inputs, engine.adapter.tensor_inputs()),
            (response.outputs, engine.tensor_outputs()),
        ):
            for s in specs:
                target.add(name=s["name"], datatype=s["datatype"], shape=s["shape"])
        return response

    async def RepositoryIndex(self, request, context):
        try:
            self._auth(context)
        except e.TrunklineError as err:
            return await abort(context, err)
        response = inference.RepositoryIndexResponse()
        for entry in self.repository.index():
            if request.ready and entry.state != "READY":
                continue
            response.models.add(
                name=entry.name, version=entry.version, state=entry.state, reason=entry.reason
            )
        return response

    async def RepositoryModelLoad(self, request, context):
        try:
            self._auth(context)
            await self.repository.load(request.model_name)
        except e.TrunklineError as err:
            return await abort(context, err)
        return inference.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(self, request, context):
        try:
            self._auth(context)
            await self.repository.unload(request.model_name)
        except e.TrunklineError as err:
            return await abort(context, err)
        return inference.RepositoryModelUnloadResponse()

    async def ModelInfer(self, request, context):
        timings, arrived = Timings(), time.monotonic()
        model, tasks, routes = None, [], {}
        status = 200
        try:
            self._auth(context)
            if not request.model_name:
                raise e.InvalidInput("is required", "model_name")
            with self.repository.lease(request.model_name, request.model_version or None) as engine:
                model = engine.name
                params = parameters(request.parameters)
                left = context.time_remaining()
                given = params.get("timeout")
                if left is not None:  # the call's deadline is a timeout too (µs, as `timeout`)
                    deadline_us = max(left * 1e6, 1.0)
                    if given is None:
                        params["timeout"] = deadline_us
                    elif isinstance(given, (int, float)) and not isinstance(given, bool) and given > 0:
                        params["timeout"] = min(given, deadline_us)  # (a bad one is refused below)
                opts = request_options(params, engine)
                tasks = engine.known_tasks(opts.tasks)
                tensor, field, n = input_tensor(input_tensors(request), engine)
                timings.lap("parse")
                admission = engine.admit(opts, n, "parameters.priority", arrived)
                routes = {x.task: x.id for x in admission.plan.entries}
                timings.lap("admit")
                prediction = await engine.infer(
                    partial(engine.adapter.decode_tensor, tensor, field),
                    admission,
                    n=n,
                    encode=partial(encode_outputs, request, engine),
                )
                timings.batch(prediction.result)
                response = prediction.result.encoded
                set_parameters(response.parameters, flat_receipt(engine.receipt(prediction).model_dump()))
                engine.metrics.latency.labels(engine.name, "grpc").observe(
                    time.perf_counter() - timings.start
                )
                timings.lap("answer")
                context.set_trailing_metadata((("server-timing", timings.header()),))
                return response
        except InputError as err:  # an adapter could not decode an input
            err = e.InvalidInput(str(err), err.field)
            status = status_of(err, V2_STATUS)
            await abort(context, err)
        except e.TrunklineError as err:
            status = status_of(err, V2_STATUS)
            await abort(context, err)
        except asyncio.CancelledError:
            status = 499  # the client went away or its deadline passed: the batcher forgot it
            raise
        except Exception:  # noqa: BLE001 - a bug answers INTERNAL without its details
            log.exception("gRPC prediction failed")
            status = 500
            await abort(context, e.Internal("internal error; the server log has the details"))
        finally:
            if model:
                self.metrics.count(model, tasks, routes, status)


class HealthService:
    """`grpc.health.v1.Health`: SERVING while the server is ready (the models named at start
    are loaded and calibrated, and it is not draining), for the whole server ("") and for
    the inference service; "liveness" is SERVING while the process answers at all."""

    READY = ("", SERVICE)
    LIVE = "liveness"

    def __init__(self, repository) -> None:
        self.repository = repository

    def _status(self, service: str) -> int:
        codes = health.HealthCheckResponse
        if service == self.LIVE:
            return codes.SERVING
        if service not in self.READY:
            return codes.SERVICE_UNKNOWN
        return codes.SERVING if self.repository.ready else codes.NOT_SERVING

    async def Check(self, request, context):
        status = self._status(request.service)
        if status == health.HealthCheckResponse.SERVICE_UNKNOWN:
            known = [*self.READY, self.LIVE]
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}; known: {known}"
            )
        return health.HealthCheckResponse(status=status)

    async def Watch(self, request, context):
        """Each change of status; the stream ends once the server drains (so that it does not
        hold the drain's grace period open)."""
        last = None
        while True:
            status = self._status(request.service)
            if status != last:
                yield health.HealthCheckResponse(status=status)
                last = status
            if self.repository.draining:
                return
            await asyncio.sleep(0.5)


async def start(state, settings) -> grpc.aio.Server:
    """Serve both services on settings.host:settings.grpc_port (in this event loop)."""
    options = [
        ("grpc.max_receive_message_length", settings.max_body_bytes),
        ("grpc.max_send_message_length", -1),
        # worker processes share the port (as uvicorn's workers share theirs); one server
        # alone refuses a port another process holds
        ("grpc.so_reuseport", int(settings.workers > 1)),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        (
            service_handler(SERVICE, InferenceService(state)),
            service_handler(HEALTH, HealthService(state.repository)),
        )
    )
    address = f"{settings.host}:{settings.grpc_port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as err:
        raise OSError(f"cannot listen for gRPC on {address}: {err} (set --grpc-port, 0 to disable)") from None
    await server.start()
    log.info("gRPC on %s", address)
    return server
