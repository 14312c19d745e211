"""App factory and lifespan: load the model, start the batcher, calibrate, then ready."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server import __version__, api_v1, api_v2
from server.errors import install_handlers
from server.lifecycle import calibrate, start_engine
from server.metrics import Metrics
from server.settings import Settings


def create_app(settings: Settings | None = None, *, calibrate_before_serving: bool = False) -> FastAPI:
    """The Trunkline ASGI app.

    Under uvicorn the app serves (live, not ready) while it calibrates. Replicas managed by an
    engine that routes only to started replicas (Ray Serve) pass `calibrate_before_serving`, so
    that startup returns once the model is calibrated and ready.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.draining = False
        app.state.reload_lock = asyncio.Lock()
        engine = await asyncio.to_thread(start_engine, settings, app.state.metrics)
        app.state.engine = engine
        engine.batcher.start()
        calibration = asyncio.create_task(calibrate(engine))
        if calibrate_before_serving:
            await calibration
        try:
            yield
        finally:
            app.state.draining = True  # refuse new work; uvicorn has drained connections
            calibration.cancel()
            await asyncio.gather(calibration, return_exceptions=True)
            await app.state.engine.batcher.stop()

    app = FastAPI(
        title="Trunkline",
        version=__version__,
        description="Budget-routed inference for task-routed multi-task models.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.draining = False
    install_handlers(app)
    app.include_router(api_v1.router)
    app.include_router(api_v2.health)
    app.include_router(api_v2.router)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app
