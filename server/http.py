"""HTTP plumbing the routers share: mapping domain errors to status codes and to each API's
error body, auth, body limits, JSON parsing and responses.

Each router declares its wire format with a route class (`V1Route`, `V2Route`): the class
catches domain errors and request-validation errors raised by its handlers and writes them
the way that API writes errors, so no code looks at the URL to pick a format.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, SecretStr, ValidationError
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from models.adapter import InputError
from server import errors as e
from server.metrics import Metrics
from server.settings import Settings

if TYPE_CHECKING:
    from server.repository import ModelRepository

log = logging.getLogger("trunkline")

# status per domain error; an API may override (the OIP answers invalid input with 400)
STATUS: dict[type[e.TrunklineError], int] = {
    e.InvalidJSON: 400,
    e.BadEncoding: 400,
    e.InvalidInput: 422,
    e.InvalidValue: 422,
    e.TooLarge: 413,
    e.UnsupportedMediaType: 415,
    e.Unauthorized: 401,
    e.ModelNotFound: 404,
    e.ModelNotReady: 503,
    e.ModelUnloading: 503,
    e.ShuttingDown: 503,
    e.QueueFull: 429,
    e.Overloaded: 503,
    e.LoadFailed: 400,
    e.ControlDisabled: 403,
    e.Internal: 500,
}


def status_of(err: e.TrunklineError, overrides: dict | None = None) -> int:
    for cls in type(err).__mro__:
        if overrides and cls in overrides:
            return overrides[cls]
        if cls in STATUS:
            return STATUS[cls]
    return 500


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")


def model_response(body: BaseModel, status: int = 200) -> Response:
    return Response(
        body.model_dump_json(exclude_none=True), status_code=status, media_type="application/json"
    )


def _headers(err: e.TrunklineError, status: int) -> dict[str, str]:
    headers = {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(err.retry_after)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def v1_error(err: e.TrunklineError) -> Response:
    status = status_of(err)
    body = {"error": {"code": err.code, "message": err.message, "field": err.field}}
    return json_response(body, status, _headers(err, status))


V2_STATUS = {e.InvalidInput: 400, e.InvalidValue: 400}  # the protocol answers every invalid request 400


def v2_error(err: e.TrunklineError) -> Response:
    """`{"error": "<message>"}` as KServe and Triton answer, so their clients show it."""
    status = status_of(err, V2_STATUS)
    return json_response({"error": err.message}, status, _headers(err, status))


def from_validation(errors: list[dict], root: str = "body") -> e.InvalidInput:
    """The first pydantic error as a domain error naming its field path."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return e.InvalidJSON("request body is not valid JSON", root)
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or root
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "missing":
        message = "is required"
    elif first.get("type") == "extra_forbidden":
        message = "is not a field of this request"
    return e.InvalidInput(f"{field}: {message}", field)


def parse_json(model: type[BaseModel], body: bytes, root: str = "body"):
    """Parse and validate a JSON body in one pass (pydantic's own JSON parser)."""
    try:
        return model.model_validate_json(body)
    except ValidationError as err:
        raise from_validation(err.errors(include_url=False), root) from None


class Timings:
    """The server's own timers of one request, sent back as a `Server-Timing` header
    (`parse;dur=0.081, decode;dur=0.2, ..., total;dur=6.1`, milliseconds)."""

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.stages: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        """Charge the time since the previous lap to `stage`."""
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + (now - self._last) * 1000
        self._last = now

    def add(self, stage: str, ms: float) -> None:
        self.stages[stage] = self.stages.get(stage, 0.0) + ms

    def batch(self, result) -> None:
        """The batch's own timers (queue, decode, compute, encode: the batch's, on the compute
        thread); the rest of the wait is `handoff` (to the compute thread and back)."""
        steps = {
            "queue": result.queue_ms,
            "decode": result.decode_ms,
            "compute": result.compute_ms,
            "encode": result.encode_ms,
        }
        for k, v in steps.items():
            self.add(k, v)
        now = time.perf_counter()
        self.add("handoff", max(0.0, (now - self._last) * 1000 - sum(steps.values())))
        self._last = now

    def header(self) -> str:
        total = (time.perf_counter() - self.start) * 1000
        return ", ".join(f"{k};dur={v:.3f}" for k, v in [*self.stages.items(), ("total", total)])


def _route_class(write: Callable[[e.TrunklineError], Response]) -> type[APIRoute]:
    class ErrorMappingRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    response = await handler(request)
                except e.TrunklineError as err:
                    response = write(err)
                except RequestValidationError as err:
                    response = write(from_validation(list(err.errors())))
                return response

            return handle

    return ErrorMappingRoute


V1Route = _route_class(v1_error)
V2Route = _route_class(v2_error)


# -- auth and bodies ----------------------------------------------------------------
def check_auth(token: SecretStr | None, headers: Headers) -> None:
    """`Authorization: Bearer <token>` when a token is set (compared in constant time)."""
    if token is None or not token.get_secret_value():
        return
    given = headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token.get_secret_value()}".encode()):
        raise e.Unauthorized("missing or wrong bearer token in the Authorization header", "authorization")


async def require_auth(request: Request) -> None:
    """The dependency of the routers' other routes (async: FastAPI runs a plain `def`
    dependency in its thread pool)."""
    check_auth(request.app.state.settings.auth_token, request.headers)


async def read_body(receive: Receive, headers: Headers, limit: int) -> bytes:
    """The request body straight from the ASGI channel, decompressed, refusing anything over
    the body limit."""
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise e.TooLarge(f"request body is {declared} bytes; the limit is {limit}", "body")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise e.TooLarge(f"request body exceeds the limit of {limit} bytes", "body")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    encoding = headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        try:
            d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
            body = d.decompress(body, limit + 1)
        except zlib.error:
            raise e.BadEncoding(f"body is not valid {encoding} data", "content-encoding") from None
        if len(body) > limit:
            raise e.TooLarge(f"decompressed body exceeds the limit of {limit} bytes", "body")
    elif encoding != "identity":
        raise e.UnsupportedMediaType(f"unsupported content-encoding {encoding!r}", "content-encoding")
    return body


# -- prediction calls: the hot path -------------------------------------------------
@dataclass
class Call:
    """One prediction request as its handler sees it: headers, body and path parameters,
    and how far it got (model, tasks, routes) for the request counter. No framework objects:
    prediction requests go from the ASGI channel straight to their handler."""

    settings: Settings
    repository: ModelRepository
    metrics: Metrics
    headers: Headers
    params: dict[str, str]
    timings: Timings = field(default_factory=Timings)
    arrived: float = field(default_factory=time.monotonic)  # its timeout counts from here
    body: bytes = b""
    model: str | None = None
    tasks: list[str] = field(default_factory=list)
    routes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, state, headers: Headers, params: dict[str, str]) -> Call:
        """A call to the app whose `state` holds settings, repository and metrics."""
        return cls(state.settings, state.repository, state.metrics, headers, params)


Handler = Callable[[Call], Awaitable[Response]]


async def until_disconnect(work: Awaitable[Response], receive: Receive) -> Response:
    """Await `work` while a watcher listens to the connection: when the client goes away
    first, `work` is cancelled (a queued request leaves the queue; a running one's result is
    dropped) and ClientDisconnect raised. One task a request, no more."""
    me = asyncio.current_task()
    gone = asyncio.Event()
    watch = asyncio.get_running_loop().create_task(_watch(receive, me, gone))
    try:
        return await work
    except asyncio.CancelledError:
        if not gone.is_set():
            raise  # cancelled by someone else (the server stopping)
        me.uncancel()
        raise ClientDisconnect() from None
    finally:
        watch.cancel()


async def _watch(receive: Receive, task: asyncio.Task, gone: asyncio.Event) -> None:
    """Cancel `task` when the client disconnects (the body has been read: nothing else comes)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()
    task.cancel()


async def answer(call: Call, receive: Receive, handler: Handler, write: Callable) -> Response:
    """Run a prediction handler: auth, body, the handler; domain errors written in the API's
    error format; counted and timed (`Server-Timing`)."""
    try:
        check_auth(call.settings.auth_token, call.headers)
        call.body = await read_body(receive, call.headers, call.settings.max_body_bytes)
        call.timings.lap("read")
        response = await until_disconnect(handler(call), receive)
    except e.TrunklineError as err:
        response = write(err)
    except InputError as err:  # an adapter could not decode an input
        response = write(e.InvalidInput(str(err), err.field))
    except ClientDisconnect:
        response = Response(status_code=499)  # nobody reads it; counted as the client's doing
    except Exception:  # noqa: BLE001 - a bug answers 500 without its details, the server goes on
        log.exception("prediction request failed")
        response = write(e.Internal("internal error; the server log has the details"))
    if call.model:
        call.metrics.count(call.model, call.tasks, call.routes, response.status_code)
        response.headers["Server-Timing"] = call.timings.header()
    return response
