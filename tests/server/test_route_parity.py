"""Every route of both bundled models gives the same outputs (1e-4) three ways: the full
slimmable model run at that route (what training evaluates), the extracted route modules of the
torch backend (q/k/v fused, scales folded) and the onnxruntime graphs (fused Attention,
constant-shape reshapes), at batch 1 and at a batch large enough to be split across threads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.adapter import load_adapter
from models.checkpoint import resolve
from models.routes import Route
from server.backends import build_backend
from server.settings import Settings

MODELS = {"mnist-scenes": 7, "text-tasks": 5}  # batch sizes: split into shares of 3-4 and 2-3


def _inputs(adapter, n: int) -> np.ndarray:
    if adapter.family == "text":
        texts = ["a delight", "not worth the ticket, sadly, and far too long", "win a free prize now"]
        return adapter.stack([adapter.tokenize([texts[i % 3] * (1 + i % 2) for i in range(n)])])
    return adapter.example_batch(n)


def _reference(adapter, batch: np.ndarray, task: str, route: Route) -> np.ndarray:
    model = adapter.model
    with torch.inference_mode():
        return model.predict(torch.from_numpy(batch), [task], route)[task].numpy()


@pytest.fixture(scope="module", params=list(MODELS))
def backends(request):
    adapter = load_adapter(resolve(request.param), request.param)
    routes = {t: [Route.parse(r["id"]) for r in rows] for t, rows in adapter.route_rows.items()}
    # the default graph cache (keyed by checkpoint and exporter version), as a server uses it
    settings = Settings(threads=2)
    made = {name: build_backend(name, adapter, settings, routes) for name in ("torch", "onnxruntime")}
    yield adapter, routes, made
    for backend in made.values():
        backend.close()


def test_every_route_matches_the_full_model_on_both_backends(backends):
    adapter, routes, made = backends
    checked = 0
    for n in (1, MODELS[adapter.name]):
        batch = _inputs(adapter, n)
        for task, rs in routes.items():
            for route in rs:
                want = _reference(adapter, batch, task, route)
                for name, backend in made.items():
                    got = backend.run_path(task, route, backend.run_trunk(route.trunk, batch), batch)
                    assert got.shape == want.shape, (name, task, route.id)
                    err = float(np.abs(got - want).max())
                    assert err <= 1e-4, f"{adapter.name} {name} {task} {route.id} batch {n}: {err:.2e}"
                    checked += 1
    assert checked == 2 * 2 * sum(len(rs) for rs in routes.values())
