"""The benchmark suite: one command, every comparison side by side in one run.

    python -m bench all --quick          # ~10 minutes; writes bench/RESULTS.md, plots, results.json
    python -m bench all --full
    python -m bench peers overload --quick
    python -m bench all --tiny --out /tmp/b   # seconds per comparison: what CI runs

Comparisons: budget, accuracy, sparse, fanout, overhead, peers, overload, memory, limit, backends,
repository, startup, workers, grpc, text-quality, text-serving, fast-routes, gpu (on a GPU machine),
anytime (budget auto).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from bench import (
    anytime,
    fast_routes,
    gpu,
    model_level,
    overhead,
    protocols,
    report,
    repository,
    serving,
    text,
    workers,
)
from bench.scale import SCALES
from models.image import checkpoint
from models.image.flops import ConfigFlops
from routing import RouteTables

MODEL_LEVEL = ["budget", "accuracy", "sparse", "fanout", "limit", "backends"]
HTTP = ["overhead", "peers", "overload", "memory", "repository", "startup", "workers", "grpc"]
TEXT = ["text-quality", "text-serving"]
ROUTES = ["fast-routes", "gpu"]
ANYTIME = ["anytime"]
ALL = MODEL_LEVEL + HTTP + TEXT + ROUTES + ANYTIME


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", nargs="+", choices=["all", *ALL])
    size = parser.add_mutually_exclusive_group()
    for name in SCALES:
        size.add_argument(f"--{name}", dest="scale", action="store_const", const=name)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="where RESULTS.md goes")
    parser.add_argument(
        "--threads", type=int, default=2, help="model compute threads (server and model level)"
    )
    parser.add_argument("--port", type=int, default=8190, help="Trunkline's port; peers use the next ones")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale or "quick"]
    wanted = ALL if "all" in args.what else [w for w in ALL if w in args.what]
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    started = time.monotonic()

    torch.set_num_threads(args.threads)
    model, tables = checkpoint.load("mnist-scenes")
    rt = RouteTables(ConfigFlops(model.cfg), tables)
    results: dict = {}

    def step(name: str, fn, *a):
        print(f"[bench] {name} ({scale.name}) ...", flush=True)
        t = time.monotonic()
        results[name] = fn(*a)
        print(f"[bench] {name} done in {time.monotonic() - t:.0f} s", flush=True)

    if "budget" in wanted:
        step("budget", model_level.budget_scaling, model, rt, scale)
    if "accuracy" in wanted:
        step("accuracy", model_level.accuracy_vs_flops, model, tables, scale)
    if "sparse" in wanted:
        step("sparse", model_level.sparse_paths, model, scale)
    if "fanout" in wanted:
        step("fanout", model_level.fan_out, model, scale)
    if "limit" in wanted:
        step("limit", model_level.machine_limit, model, scale)
    if "backends" in wanted:
        onnx_dir = Path.home() / ".cache" / "trunkline" / "onnx"
        step("backends", model_level.backends, model, rt, scale, args.threads, onnx_dir)

    needs_server = {"budget", "fanout", *HTTP} & set(wanted)
    if needs_server:
        from models.image.data import make_scenes

        images = make_scenes(256, "test", seed=4242).images
        if needs_server - {"memory", "repository", "startup", "workers", "grpc"}:
            with serving.trunkline(args.port, args.threads, scale) as (_, url):
                if "overhead" in wanted:
                    step("overhead", overhead.overhead, url, images, scale, args.threads)
                if "budget" in wanted:
                    step("budget_http", serving.http_budget, url, images, scale, args.threads)
                if "fanout" in wanted:
                    step("fanout_http", serving.http_fan_out, url, images, scale)
                if "peers" in wanted:
                    step("peers", serving.peers, url, images, scale, args.threads, args.port + 1)
                if "overload" in wanted:
                    step("overload", serving.overload, url, images, scale)

        if "memory" in wanted:  # fresh servers, after the load runs above have finished
            step("memory", serving.memory, images, scale, args.threads, args.port + 10)
        if "repository" in wanted:
            step("repository", repository.two_models, images, scale, args.threads, args.port + 20)
        if "startup" in wanted:
            step("startup", repository.startup, scale, args.threads, args.port + 21)
        if "workers" in wanted:
            step("workers", workers.workers, images, scale, args.threads, args.port + 22)
        if "grpc" in wanted:
            step("grpc", protocols.grpc_vs_http, images, scale, args.threads, args.port + 60)

    if "text-quality" in wanted:
        step("text_quality", text.quality, scale, args.threads)
        q = results["text_quality"]
        q["plot"] = text.frontier_plot(q["frontier"], q["rows"], args.out)
    if "text-serving" in wanted:
        step("text_serving", text.serving, scale, args.threads, args.port + 30)
    if "fast-routes" in wanted:
        step("fast_routes", fast_routes.fast_routes, scale, args.threads, args.port + 40)
    if "gpu" in wanted:
        step("gpu", gpu.gpu, scale)
    if "anytime" in wanted:
        step("anytime", anytime.anytime, scale, args.threads, args.port + 50, args.out)

    minutes = (time.monotonic() - started) / 60
    path = report.write(results, args.out, command, scale.name, minutes)
    print(f"[bench] wrote {path} in {minutes:.1f} minutes")
    for _key, value in results.items():
        for g in value.get("goals", []):
            print(f"  {'met ' if g['met'] else 'MISS'}  {g['goal']}: {g['value']} (goal {g['target']})")
    return results


if __name__ == "__main__":
    main()
