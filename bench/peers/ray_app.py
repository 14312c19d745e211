"""Peer (c): Ray Serve with `@serve.batch` and model multiplexing by task.

    python -m bench.peers.ray_app PORT [--max-batch 64] [--wait-ms 2]

One replica (the machine has 2 cores) whose multiplexed models are the (task, tier) routes;
`@serve.batch` forms the batches and each batch runs one forward per route.
"""

from __future__ import annotations

import threading

import ray
from ray import serve
from starlette.requests import Request

from bench.peers.common import PeerModel, parse_args


def deployment(max_batch: int, wait_ms: float, tasks: list[str], threads: int):
    @serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
    class MultiTaskPeer:
        def __init__(self) -> None:
            self.model = PeerModel(tasks=tasks, threads=threads)

        @serve.multiplexed(max_num_models_per_replica=64)
        async def get_route(self, key: str) -> str:
            assert key in self.model.modules, key  # the extracted module is already resident
            return key

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=wait_ms / 1000)
        async def infer(self, items: list[tuple[str, object]]) -> list[list[dict]]:
            return self.model.run_mixed(items)

        async def __call__(self, request: Request) -> dict:
            key, images = self.model.decode(await request.json())
            key = await self.get_route(key)
            return {"outputs": await self.infer((key, images))}

    return MultiTaskPeer


def main() -> None:
    args = parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    app = deployment(args.max_batch, args.wait_ms, args.tasks, args.threads).bind()
    serve.run(app, name="peer", route_prefix="/predict")
    threading.Event().wait()  # serve until killed


if __name__ == "__main__":
    main()
