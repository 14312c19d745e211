"""Trunkline on Ray Serve: the same FastAPI app, one copy of the model per replica.

    serve run deploy/serve_config.yaml      # replicas and autoscaling from the config file
    serve run deploy.ray_serve:app          # one replica, defaults

Each replica builds the app in its own process (`serve.ingress` with a builder), so it loads
the model, starts its batcher and calibrates before Ray routes traffic to it. Settings come
from `TRUNKLINE_*` variables, set per application in the config's `runtime_env`. Requests keep
their task and budget semantics and receipts: every replica runs the whole server.
"""

from __future__ import annotations

from ray import serve

from server.app import create_app
from server.settings import Settings


def build_app():
    # HTTP only: Ray Serve's proxy fronts the replicas (each would take port 8001 for itself)
    return create_app(Settings(grpc_port=0), calibrate_before_serving=True)


@serve.deployment(
    name="Trunkline",
    max_ongoing_requests=64,  # the replica's own batcher queues and batches these
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(build_app)
class Trunkline:
    """A Trunkline server replica."""


app = Trunkline.bind()
