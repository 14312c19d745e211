"""Model-level cost of routes (issue 2): FLOPs ratios and torch latency ratios at batch 1 and 64.

    python -m bench.model_latency [--model mnist-scenes] [--threads 2] [--rounds 15]

Every route is an extracted module; full and smallest routes of a task run in alternating
rounds and the ratio of medians is reported.
"""

from __future__ import annotations

import argparse
import json

import torch

from bench.common import interleaved_medians
from models.image import checkpoint
from models.image.flops import full_flops, request_flops
from models.routes import Route


def measure(model_name: str, threads: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    model, tables = checkpoint.load(model_name)
    cfg = model.cfg
    dense_all = full_flops(cfg, cfg.task_names)
    report = {"threads": threads, "tasks": {}}
    for task, rows in tables.items():
        full, smallest = Route.parse(rows[-1]["id"]), Route.parse(rows[0]["id"])
        low = max((r for r in rows if r["flops_fraction"] <= 0.25), key=lambda r: r["score"])
        modules = {"full": model.extract({task: full}), "smallest": model.extract({task: smallest})}
        entry = {
            "full_route": full.id,
            "smallest_route": smallest.id,
            "flops_full_vs_dense_all_tasks": request_flops(cfg, full.width, {task: full}) / dense_all,
            "flops_low_vs_full": low["flops_fraction"],
        }
        for batch in (1, 64):
            x = torch.rand(batch, 1, cfg.input.height, cfg.input.width)
            with torch.inference_mode():
                ms = interleaved_medians(
                    {k: (lambda m=m, x=x: m(x)) for k, m in modules.items()}, rounds=rounds
                )
            entry[f"batch{batch}_ms"] = ms
            entry[f"batch{batch}_latency_ratio_smallest_vs_full"] = ms["smallest"] / ms["full"]
        report["tasks"][task] = entry
    # the dense all-task forward (what serving a plain multi-task model costs) vs one task
    everything = model.extract(Route(1.0, max(cfg.routes.experts), 1.0))
    one = model.extract({"sum": Route(1.0, max(cfg.routes.experts), 1.0)})
    x = torch.rand(64, 1, cfg.input.height, cfg.input.width)
    with torch.inference_mode():
        ms = interleaved_medians(
            {"all_tasks": lambda: everything(x), "one_task": lambda: one(x)}, rounds=rounds
        )
    report["batch64_latency_one_task_vs_all_tasks"] = ms["one_task"] / ms["all_tasks"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="mnist-scenes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = measure(args.model, args.threads, args.rounds)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"torch, {args.threads} threads, medians of {args.rounds} interleaved rounds")
    print("task      full route    FLOPs full/all-tasks  FLOPs low/full  b1 smallest/full  b64 smallest/full")
    for task, e in report["tasks"].items():
        print(
            f"{task:9} {e['full_route']:13} {e['flops_full_vs_dense_all_tasks']:20.3f}  "
            f"{e['flops_low_vs_full']:14.3f}  {e['batch1_latency_ratio_smallest_vs_full']:16.3f}  "
            f"{e['batch64_latency_ratio_smallest_vs_full']:17.3f}"
        )
    print(
        "batch 64 latency, one task (sum) vs all four tasks: "
        f"{report['batch64_latency_one_task_vs_all_tasks']:.3f}"
    )


if __name__ == "__main__":
    main()
