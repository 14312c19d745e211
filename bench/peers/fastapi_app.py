"""Peer (d): a plain FastAPI app that batches, the way one would write it by hand.

    python -m bench.peers.fastapi_app PORT [--tasks count,sum] [--max-batch 64] [--wait-ms 2]

An asyncio queue collects requests for up to `wait-ms` or `max-batch` images; the batch runs
in one worker thread, one forward per (task, tier) module.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import uvicorn
from fastapi import FastAPI, Request

from bench.peers.common import PeerModel, parse_args


def build(model: PeerModel, max_batch: int, wait_ms: float) -> FastAPI:
    app = FastAPI()
    queue: asyncio.Queue = asyncio.Queue()
    pool = ThreadPoolExecutor(1)

    async def batcher() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            size = len(items[0][1])
            deadline = loop.time() + wait_ms / 1000
            while size < max_batch:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
                except TimeoutError:
                    break
                items.append(item)
                size += len(item[1])
            try:
                answers = await loop.run_in_executor(pool, model.run_mixed, [(key, x) for key, x, _ in items])
                for (_, _, future), answer in zip(items, answers):
                    future.set_result(answer)
            except Exception as exc:  # noqa: BLE001 - hand the error to every waiting request
                for _, _, future in items:
                    future.set_exception(exc)

    @app.on_event("startup")
    async def start() -> None:
        app.state.batcher = asyncio.create_task(batcher())

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        key, images = model.decode(await request.json())
        future = asyncio.get_running_loop().create_future()
        await queue.put((key, images, future))
        return {"outputs": await future}

    return app


def main() -> None:
    args = parse_args()
    model = PeerModel(tasks=args.tasks, threads=args.threads)
    app = build(model, args.max_batch, args.wait_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
