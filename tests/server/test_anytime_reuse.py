"""Budget auto on a ladder whose rungs share a trunk (images at one width): the escalation runs
only the next rung's paths on the trunk output kept from the first rung. It must answer what
running that route from scratch answers, and count the trunk's FLOPs once."""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from models.adapter import load_adapter
from models.checkpoint import resolve
from models.routes import Route
from server.compute import ComputeScheduler
from server.engine import Engine, RequestOptions
from server.metrics import Metrics
from server.settings import Settings

LADDER = ["w25-k1-d25", "w25-k1-d100"]  # one trunk (w25), two decoder widths


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """mnist-scenes with `sum`'s fitted ladder replaced by LADDER."""
    path = tmp_path_factory.mktemp("ckpt") / "mnist-scenes"
    shutil.copytree(resolve("mnist-scenes"), path)
    tables = json.loads((path / "routes.json").read_text())
    for row in tables["sum"]:
        row.pop("rung", None)
        if row["id"] in LADDER:
            row["rung"] = LADDER.index(row["id"])
    (path / "routes.json").write_text(json.dumps(tables))
    return path


def serve(checkpoint, tmp_path, requests: list[tuple[np.ndarray, RequestOptions]]) -> list:
    """Start an engine on the checkpoint, answer the requests one after another, stop it."""

    async def run():
        compute = ComputeScheduler()
        settings = Settings(
            backend="torch", threads=1, batch_buckets=[1], calibration_rounds=1, cache_dir=tmp_path
        )
        engine = Engine(load_adapter(checkpoint), settings, compute, Metrics())
        try:
            engine.batcher.start()
            await engine.start(background=False)
            assert engine.ladders()["sum"] == LADDER
            out = []
            for images, opts in requests:
                p = await engine.infer(images, engine.admit(opts, len(images)), len(images))
                out.append((p.result.outputs["sum"], engine.receipt(p)))
            return out
        finally:
            await engine.stop()
            compute.close()

    return asyncio.run(run())


def _counted(module, *args) -> int:
    with FlopCounterMode(display=False) as counter:
        module(*args)
    return counter.get_total_flops()


def _route_output(adapter, route_id: str, x: torch.Tensor) -> np.ndarray:
    """`sum` on `route_id` from scratch: its trunk, then its path."""
    route = Route.parse(route_id)
    with torch.inference_mode():
        return adapter.path_module("sum", route)(adapter.trunk_module(route)(x), x).numpy()


def test_a_reused_trunk_answers_as_recomputing_and_counts_once(checkpoint, scenes, tmp_path):
    """One image per request first (batch 1, as the reference runs; one thread on both sides:
    bit for bit), then all of them in one request (the escalated rows take their own rows of
    the kept trunk output)."""
    auto = RequestOptions(["sum"], budget="auto", confidence=0.999)
    adapter = load_adapter(checkpoint)
    images = adapter.join([adapter.decode_instance(image.tolist(), "inputs") for image in scenes.images[:8]])
    threads = torch.get_num_threads()
    try:
        requests = [(images[i : i + 1], auto) for i in range(8)] + [(images, auto)]
        answers = serve(checkpoint, tmp_path, requests)
        torch.set_num_threads(1)
        trunk = adapter.trunk_module(Route.parse(LADDER[0]))
        climbed = 0
        for i, (out, receipt) in enumerate(answers[:-1]):
            (row,) = receipt.rows
            rungs = row.tasks["sum"].escalations
            x = torch.from_numpy(adapter.stack([images[i : i + 1]]))
            np.testing.assert_array_equal(out, _route_output(adapter, rungs[-1], x))
            ran = sum(_counted(adapter.model.extract({"sum": Route.parse(r)}), x) for r in rungs)
            if rungs == LADDER:
                climbed += 1
                with torch.inference_mode():
                    trunk_flops = _counted(trunk, x)
                assert row.reused_flops == trunk_flops > 0
                assert row.flops == ran - trunk_flops  # the trunk once, the discarded rung's path kept
            else:
                assert row.reused_flops == 0 and row.flops == ran
        assert climbed >= 2, "confidence 0.999 must send some of these images up the ladder"
    finally:
        torch.set_num_threads(threads)

    out, receipt = answers[-1]
    for i, row in enumerate(receipt.rows):
        alone, alone_receipt = answers[i]
        assert row.tasks["sum"].escalations == alone_receipt.rows[0].tasks["sum"].escalations
        np.testing.assert_allclose(out[i], alone[0], atol=1e-5)
