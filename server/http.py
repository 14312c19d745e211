"""HTTP plumbing the routers share: mapping domain errors to status codes and to each API's
error body, auth, body limits, JSON parsing and responses.

Each router declares its wire format with a route class (`V1Route`, `V2Route`): the class
catches domain errors and request-validation errors raised by its handlers and writes them
the way that API writes errors, so no code looks at the URL to pick a format.
"""

from __future__ import annotations

import hmac
import zlib
from collections.abc import Callable

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from models.adapter import InputError
from server import errors as e
from server.metrics import count_request

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


V2_STATUS = {e.InvalidInput: 400}


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
                except InputError as err:  # an adapter could not decode an input
                    response = write(e.InvalidInput(str(err), err.field))
                if getattr(request.state, "model", None):  # a prediction: count it, by status
                    count_request(request, response.status_code)
                return response

            return handle

    return ErrorMappingRoute


V1Route = _route_class(v1_error)
V2Route = _route_class(v2_error)


# -- dependencies (async: FastAPI runs a plain `def` dependency in its thread pool) -------
async def require_auth(request: Request) -> None:
    token = request.app.state.settings.auth_token
    if not token:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise e.Unauthorized("missing or wrong bearer token in the Authorization header", "authorization")


async def body_bytes(request: Request) -> bytes:
    """The request body, decompressed, refusing anything over the body limit."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise e.TooLarge(f"request body is {declared} bytes; the limit is {limit}", "body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise e.TooLarge(f"request body exceeds the limit of {limit} bytes", "body")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
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
