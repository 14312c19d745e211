"""App factory and lifespan: open the model repository, load every model (live at once,
ready once they are calibrated), and drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from server import __version__, api_v1, api_v2
from server.docs import install_docs
from server.errors import TrunklineError
from server.http import Call, answer, v1_error, v2_error
from server.metrics import Metrics
from server.repository import ModelRepository
from server.settings import Settings

log = logging.getLogger("trunkline")


def prediction_route(method: str, path: str):
    """(handler, error writer, path parameters) of a prediction request, else None.

    /v1/predict, /v2/models/{model}/infer and /v2/models/{model}/versions/{version}/infer."""
    if method != "POST":
        return None
    if path == "/v1/predict":
        return api_v1.predict, v1_error, {}
    parts = path.split("/")  # "", "v2", "models", model, ["versions", version,] "infer"
    if len(parts) == 5 and parts[1:3] == ["v2", "models"] and parts[4] == "infer" and parts[3]:
        return api_v2.infer, v2_error, {"model": parts[3]}
    if len(parts) == 7 and parts[1:3] == ["v2", "models"] and parts[4] == "versions" and parts[6] == "infer":
        if parts[3] and parts[5]:
            return api_v2.infer, v2_error, {"model": parts[3], "version": parts[5]}
    return None


class Trunkline(FastAPI):
    """FastAPI for everything but predictions, which go from the ASGI channel straight to
    their handlers (`server.http.answer`): no middleware stack, routing or dependency
    solving on the hot path. The routers still declare them, for the OpenAPI page."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = prediction_route(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if route is None:
            await super().__call__(scope, receive, send)
            return
        handler, write, params = route
        call = Call.of(self.state, Headers(scope=scope), params)
        response = await answer(call, receive, handler, write)
        await response(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, not ready from the moment a shutdown signal arrives: the readiness
    probe answers 503 and new predictions are refused while in-flight ones finish. A drain
    that SIGTERM asked for ends in exit status 0 (uvicorn would raise the signal again once
    drained, so that the process dies of it: status 143 to an orchestrator)."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app

    def handle_exit(self, sig, frame) -> None:
        repository = getattr(self.app.state, "repository", None)
        if repository is not None:
            repository.draining = True
        if not hasattr(self.app.state, "drain_started"):
            self.app.state.drain_started = time.monotonic()  # the drain timeout counts from here
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in getattr(self, "_captured_signals", []):
            self._captured_signals.remove(sig)


def create_app(settings: Settings | None = None, *, calibrate_before_serving: bool = False) -> FastAPI:
    """The Trunkline ASGI app.

    Under uvicorn the app serves (live, not ready) while its models load. Replicas managed by
    an engine that routes only to started replicas (Ray Serve) pass `calibrate_before_serving`,
    so that startup returns once every model is ready.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        repo = ModelRepository(settings, app.state.metrics)
        app.state.repository = repo
        grpc_server = None
        if settings.grpc_port:
            from server import api_grpc  # grpcio loads only where gRPC serves

            grpc_server = await api_grpc.start(app.state, settings)
        loading = asyncio.create_task(repo.start())
        loading.add_done_callback(_report_failure)
        if calibrate_before_serving:
            await loading
        try:
            yield
        finally:
            repo.draining = True  # refuse new work; uvicorn has drained HTTP connections
            if grpc_server is not None:  # no new calls; those in flight finish within the drain
                since = time.monotonic() - getattr(app.state, "drain_started", time.monotonic())
                await grpc_server.stop(grace=max(0.0, settings.drain_timeout_s - since))
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await repo.stop()

    app = Trunkline(
        title="Trunkline",
        version=__version__,
        description="Budget-routed inference for task-routed multi-task models.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    install_docs(app)
    app.include_router(api_v1.router)
    app.include_router(api_v2.health)
    app.include_router(api_v2.router)

    @app.exception_handler(StarletteHTTPException)
    async def _unmatched(request: Request, exc: StarletteHTTPException) -> Response:
        """Paths and methods no router serves."""
        err = TrunklineError(f"{request.method} {request.url.path}: {exc.detail}", "path")
        err.code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = v1_error(err)
        response.status_code = exc.status_code
        response.headers.update(exc.headers or {})
        return response

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app


def _report_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("loading the models failed: %s", task.exception())
