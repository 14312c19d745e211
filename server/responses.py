"""JSON responses serialised with orjson (fast on large score and mask payloads)."""

from __future__ import annotations

import orjson
from fastapi.responses import Response


def json_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, headers=headers, media_type="application/json")
