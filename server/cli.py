"""`trunkline` command line: serve, predict, train, eval, export, calibrate, add-task, remove-task.

An error is one line naming the problem (exit status 1); `trunkline --debug ...` shows the traceback."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _serve(args: argparse.Namespace) -> None:
    import os

    import uvicorn

    from server.app import DrainingServer, create_app
    from server.backends import DeviceUnavailable, check_device
    from server.settings import Settings

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        check_device(settings.backend, settings.device)
    except DeviceUnavailable as e:
        sys.exit(f"trunkline: {e}")
    from models.checkpoint import resolve

    for model in settings.model:  # a wrong name is refused here, not as a traceback from the app's start
        resolve(model)
    if settings.model_repository is not None and not settings.model_repository.is_dir():
        raise FileNotFoundError(f"--model-repository {settings.model_repository}: no such folder")
    common = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        "timeout_graceful_shutdown": int(settings.drain_timeout_s),
        "loop": "uvloop",
        "http": "httptools",
    }
    if settings.workers == 1:
        app = create_app(settings)
        DrainingServer(uvicorn.Config(app, **common), app).run()
        return
    # several worker processes on one port, each with its own copy of every model: they read
    # their settings from the environment, so the flags go there
    for name, value in overrides.items():
        os.environ[f"TRUNKLINE_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    uvicorn.run("server.app:create_app", factory=True, workers=settings.workers, **common)


def _calibrate(args: argparse.Namespace) -> None:
    from models import calibrate

    calibrate.main(args.model)


def _train(args: argparse.Namespace) -> None:
    from models.image import train
    from models.text import train as text_train

    overrides = {
        k: v
        for k, v in (("full_steps", args.full_steps), ("sandwich_steps", args.sandwich_steps))
        if v is not None
    }
    recipes = {**{n: train.train for n in train.RECIPES}, **{n: text_train.train for n in text_train.RECIPES}}
    if args.recipe not in recipes:
        sys.exit(f"unknown recipe {args.recipe!r}; known: {sorted(recipes)}")
    print(json.dumps(recipes[args.recipe](args.recipe, args.out, **overrides), indent=2))


def _add_task(args: argparse.Namespace) -> None:
    from models.text.data import load_csv_task
    from models.text.train import add_task

    task = load_csv_task(args.data, args.task, args.text_column, args.label_column, args.kind)
    print(json.dumps(add_task(args.model, task), indent=2))


def _remove_task(args: argparse.Namespace) -> None:
    from models.text.train import remove_task

    remove_task(args.model, args.task)
    print(f"task {args.task!r} removed from {args.model}; reload the model to apply")


def _eval_text(args: argparse.Namespace) -> None:
    """Every route (or the one a budget picks) of every task with packaged data, on its
    held-out split (sha1(text) mod 5 == 0)."""
    from models.adapter import load_adapter
    from models.routes import Route
    from models.text.data import LOADERS, load_task
    from models.text.train import Encoder, evaluate_module
    from routing import Budget, RouteTables

    adapter = load_adapter(args.model)
    model, tables = adapter.model, adapter.route_rows
    encoder = Encoder(model.cfg, model.cfg.input.max_tokens)
    routing = RouteTables(adapter, tables)
    result = {}
    for task, rows in tables.items():
        if task not in LOADERS:
            continue  # an added task: its data is the user's CSV (tasks/<task>.json has its test score)
        if args.budget is not None:
            chosen = routing.resolve([task], Budget.from_text(args.budget)).entries[0].id
            rows = [r for r in rows if r["id"] == chosen]
        test, spec = load_task(task).split("test"), model.cfg.task(task)
        result[task] = [
            {
                "route": row["id"],
                "flops_fraction": row["flops_fraction"],
                "metric": row.get("metric"),
                "validation": row["score"],
                "test": round(
                    evaluate_module(model.extract({task: Route.parse(row["id"])}), encoder, test, spec), 4
                ),
            }
            for row in rows
        ]
    print(json.dumps({"model": model.cfg.name, "tasks": result}, indent=2))


def _eval(args: argparse.Namespace) -> None:
    from models.adapter import family_of
    from models.image import checkpoint

    if family_of(checkpoint.resolve(args.model)) == "text":
        _eval_text(args)
        return
    from models.image.data import make_scenes
    from models.image.evaluate import evaluate
    from models.image.flops import ConfigFlops
    from models.image.train import TEST_SEED
    from models.routes import Route
    from routing import Budget, RouteTables

    model, tables = checkpoint.load(args.model)
    scenes = make_scenes(args.scenes, "test", seed=TEST_SEED)
    routing = RouteTables(ConfigFlops(model.cfg), tables)
    result = {}
    for task, rows in tables.items():
        spec = model.cfg.task(task)
        if args.budget is not None:
            rows = [
                r
                for r in rows
                if r["id"] == routing.resolve([task], Budget.from_text(args.budget)).entries[0].id
            ]
        result[task] = []
        for row in rows:
            module = model.extract({task: Route.parse(row["id"])})
            score = evaluate(module, scenes, [spec], model.cfg.input)[task]
            result[task].append(
                {
                    "route": row["id"],
                    "flops_fraction": row["flops_fraction"],
                    "metric": row.get("metric"),
                    "validation": row["score"],
                    "test": round(score, 4),
                }
            )
    print(json.dumps({"model": model.cfg.name, "test_scenes": args.scenes, "tasks": result}, indent=2))


def _export(args: argparse.Namespace) -> None:
    """Every trunk and task path of the route tables, through the model's adapter (any family)."""
    from pathlib import Path

    from models.adapter import load_adapter
    from models.export import path_file, trunk_file
    from models.routes import Route

    adapter = load_adapter(args.model)
    routes = {t: [Route.parse(r["id"]) for r in rows] for t, rows in adapter.route_rows.items()}
    out = Path(args.out or adapter.path / "onnx")
    written = 0
    for route in {r.trunk: r for rs in routes.values() for r in rs}.values():
        adapter.export_trunk(route, out / trunk_file(route))
        written += 1
    for task, rs in routes.items():
        for route in rs:
            adapter.export_path(task, route, out / path_file(task, route))
            written += 1
    print(f"wrote {written} ONNX graphs to {out}")


def _families(args: argparse.Namespace) -> None:
    from models.adapter import ADAPTER_API, ENTRY_POINT_GROUP, installed

    found = installed()
    if args.json:
        rows = [
            {"family": f.name, "package": f.package, "version": f.version}
            | {"adapter": f.target, "error": f.error}
            for f in found.values()
        ]
        print(json.dumps({"adapter_api": ADAPTER_API, "families": rows}, indent=2))
        return
    if not found:
        print(f"no model families installed (entry point group {ENTRY_POINT_GROUP!r})")
        return
    width = max(len(f.name) for f in found.values())
    origin = max(len(f.origin) for f in found.values())
    for f in found.values():
        status = f"error: {f.error}" if f.error else f.target
        print(f"{f.name:<{width}}  {f.origin:<{origin}}  {status}")


# models.image.train.RECIPES and models.text.train.RECIPES, named here so that `--help` and `predict`
# import no torch (tests/server/test_cli.py checks they agree)
RECIPES = ["mnist-scenes", "mnist-scenes-tiny", "text-tasks", "text-tasks-tiny"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trunkline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="serve models over HTTP and gRPC")
    p.add_argument(
        "--model",
        action="append",
        help="checkpoint directory or bundled model name; repeat for several (default: the bundled models)",
    )
    p.add_argument(
        "--model-repository",
        dest="model_repository",
        help="a folder of model folders: DIR/<name>/ or DIR/<name>/<version>/ (as Triton)",
    )
    p.add_argument(
        "--model-control-mode",
        dest="model_control_mode",
        choices=["none", "explicit"],
        help="explicit: POST /v2/repository/models/<m>/load|unload load and unload models at run time",
    )
    p.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument(
        "--grpc-port",
        dest="grpc_port",
        type=int,
        help="port of the Open Inference Protocol over gRPC (default 8001, as Triton; 0: no gRPC)",
    )
    p.add_argument("--backend", choices=["torch", "onnxruntime"], help="how routes run (default onnxruntime)")
    p.add_argument("--threads", type=int, help="compute threads for the models (default 2)")
    p.add_argument(
        "--workers",
        type=int,
        help="server processes on the port, each with its own models (model-control-mode none only)",
    )
    p.add_argument(
        "--max-batch-size", dest="max_batch_size", type=int, help="instances per batch (default 64)"
    )
    p.add_argument(
        "--default-budget", dest="default_budget", help="budget of requests that name none (default max)"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser("train", help="train a model from a recipe")
    p.add_argument(
        "--recipe", required=True, choices=RECIPES, help="what to train (-tiny: a seconds-long smoke run)"
    )
    p.add_argument("--out", required=True, help="the checkpoint folder to write")
    p.add_argument("--full-steps", type=int, help="steps of full-width training (default: the recipe's)")
    p.add_argument("--sandwich-steps", type=int, help="steps of sandwich training (default: the recipe's)")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="test metrics of every route, as JSON")
    p.add_argument("--model", required=True, help="a bundled name or a checkpoint folder")
    p.add_argument("--budget", help="only the route each task resolves to at this budget")
    p.add_argument(
        "--scenes", type=int, default=2000, help="image models: test scenes to score (default 2000)"
    )
    p.set_defaults(func=_eval)

    p = sub.add_parser("export", help="export every route to ONNX")
    p.add_argument("--model", required=True, help="a bundled name or a checkpoint folder")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the graph format (onnx)")
    p.add_argument("--out", help="directory (default: <checkpoint>/onnx)")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "add-task", help="train a new task on a text model's frozen encoder, beside its checkpoint"
    )
    p.add_argument("--model", required=True, help="the text model's checkpoint directory")
    p.add_argument("--task", required=True, help="the new task's name")
    p.add_argument("--data", required=True, help="a CSV file with a header")
    p.add_argument("--text-column", dest="text_column", required=True, help="the CSV column of the texts")
    p.add_argument("--label-column", dest="label_column", required=True, help="the CSV column of the labels")
    p.add_argument(
        "--kind", choices=["classification", "regression"], default="classification", help="the task's kind"
    )
    p.set_defaults(func=_add_task)

    p = sub.add_parser("remove-task", help="stop offering a task of a text model (reload to apply)")
    p.add_argument("--model", required=True, help="the text model's checkpoint directory")
    p.add_argument("--task", required=True, help="the task to remove")
    p.set_defaults(func=_remove_task)

    p = sub.add_parser(
        "calibrate", help="fit budget auto's temperatures and ladders into the checkpoint (needs the data)"
    )
    p.add_argument("--model", required=True, action="append", help="a bundled name or a checkpoint folder")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser(
        "families", help="the model families installed (trunkline.families entry points) and their packages"
    )
    p.add_argument("--json", action="store_true", help="as JSON, with the server's adapter API version")
    p.set_defaults(func=_families)

    p = sub.add_parser("predict", help="send images or texts to a server (the client)", add_help=False)
    p.set_defaults(func=None)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "predict":
        from clients.cli import main as predict_main

        argv = sys.argv[1:] if argv is None else argv
        sys.exit(predict_main(argv[argv.index("predict") + 1 :]))
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        args.func(args)
    except Exception as e:  # noqa: BLE001 - one line naming the problem; --debug for the traceback
        if args.debug:
            raise
        sys.exit(f"trunkline {args.command}: {' '.join(str(e).split()) or type(e).__name__}")


if __name__ == "__main__":
    main()
