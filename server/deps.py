"""Request plumbing shared by both APIs: auth, readiness, body limits, and running a
prediction with its metrics and overload answers."""

from __future__ import annotations

import gzip
import hmac
import zlib

import numpy as np
from fastapi import Request

from server.batcher import DeadlineExceeded, QueueFull
from server.engine import Admission, Engine, Prediction
from server.errors import APIError
from server.metrics import count_request


# The dependencies are `async def` although they never await: FastAPI runs a plain `def`
# dependency in its thread pool, a thread hop per request that cost ~8% of the event loop.
async def require_auth(request: Request) -> None:
    token = request.app.state.settings.auth_token
    if not token:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise APIError(
            "authorization",
            "missing or wrong bearer token in the Authorization header",
            401,
            "unauthorized",
            {"WWW-Authenticate": "Bearer"},
        )


async def ready_engine(request: Request) -> Engine:
    state = request.app.state
    if state.draining:
        raise APIError(None, "server is shutting down", 503, "shutting_down", {"Retry-After": "1"})
    engine: Engine = state.engine
    if not engine.ready:
        raise APIError(
            None, "model is still calibrating; see /v2/health/ready", 503, "not_ready", {"Retry-After": "1"}
        )
    return engine


def check_model(engine: Engine, name: str) -> Engine:
    if name != engine.name:
        raise APIError(
            "model", f"unknown model {name!r}; this server hosts {engine.name!r}", 404, "unknown_model"
        )
    return engine


async def body_bytes(request: Request) -> bytes:
    """The request body, decompressed, refusing anything over the body limit."""
    limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(
            "body", f"request body is {declared} bytes; the limit is {limit}", 413, "body_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError("body", f"request body exceeds the limit of {limit} bytes", 413, "body_too_large")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "identity").lower()
    if encoding in ("gzip", "deflate"):
        try:
            d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
            body = d.decompress(body, limit + 1)
        except (zlib.error, gzip.BadGzipFile):
            raise APIError(
                "content-encoding", f"body is not valid {encoding} data", 400, "bad_encoding"
            ) from None
        if len(body) > limit:
            raise APIError(
                "body", f"decompressed body exceeds the limit of {limit} bytes", 413, "body_too_large"
            )
    elif encoding != "identity":
        raise APIError(
            "content-encoding", f"unsupported content-encoding {encoding!r}", 415, "unsupported_media_type"
        )
    return body


async def serve_request(
    request: Request, engine: Engine, images: np.ndarray, admission: Admission
) -> Prediction:
    """Enqueue, await the batch, and keep the metrics; overload becomes 429/503."""
    m, name = request.app.state.metrics, engine.name
    request.state.routes = {e.task: e.id for e in admission.plan.entries}
    m.in_flight.labels(name).inc()
    m.queue_depth.labels(name).set(engine.batcher.queued + len(images))
    try:
        prediction = await engine.infer(images, admission)
    except QueueFull as e:
        raise APIError(None, str(e), 429, "queue_full", {"Retry-After": "1"}) from None
    except DeadlineExceeded as e:
        raise APIError(
            "timeout_ms", f"{e}; retry later or raise timeout", 503, "deadline_exceeded", {"Retry-After": "1"}
        ) from None
    finally:
        m.in_flight.labels(name).dec()
        m.queue_depth.labels(name).set(engine.batcher.queued)
    count_request(request, "200")
    m.queue_time.labels(name).observe(prediction.result.queue_ms / 1000)
    m.compute_time.labels(name).observe(prediction.result.compute_ms / 1000)
    if admission.degraded:
        for t in admission.plan.tasks:
            m.degraded.labels(name, t).inc()
    return prediction
