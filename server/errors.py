"""Errors that become HTTP answers, and their JSON bodies.

/v1 answers `{"error": {"code", "message", "field"}}`; the Open Inference Protocol
endpoints answer `{"error": "<message>"}` as KServe and Triton do, so their clients show
the message.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.metrics import count_request
from server.responses import json_response


class APIError(Exception):
    """An answer other than 200: status, machine code, message naming the field."""

    def __init__(
        self,
        field: str | None,
        message: str,
        status: int = 422,
        code: str = "invalid_input",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.field, self.message, self.status, self.code = field, message, status, code
        self.headers = headers or {}


def error_response(request: Request, err: APIError) -> Response:
    message = err.message
    if err.field and err.field not in message:
        message = f"{err.field}: {message}"  # the message always names the field at fault
    if request.url.path.startswith("/v2"):
        body = {"error": message}
    else:
        body = {"error": {"code": err.code, "message": message, "field": err.field}}
    return json_response(body, status=err.status, headers=err.headers)


def from_validation(errors: list[dict], root: str = "body") -> APIError:
    """The first pydantic error as an APIError naming its field path."""
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    field = ".".join(loc) or root
    if first.get("type") == "json_invalid":
        return APIError(root, "request body is not valid JSON", 400, "invalid_json")
    return APIError(field, f"{field}: {first.get('msg', 'invalid value')}", 422, "invalid_field")


def parse_model(model_cls, data: object):
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise from_validation(e.errors()) from None


def loads(body: bytes, root: str = "body") -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise APIError(root, f"request body is not valid JSON: {e}", 400, "invalid_json") from None


def install_handlers(app) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        if request.url.path.endswith(("/predict", "/infer")):
            count_request(request, str(exc.status))
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return error_response(request, from_validation(list(exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        field = "path" if exc.status_code in (404, 405) else None
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return error_response(request, APIError(field, message, exc.status_code, code))
