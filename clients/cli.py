"""`trunkline predict [--model M] --task T [--budget B] (IMAGE... | --text "..." ...)`: send
PNG files or texts to a server, print what each answered and the receipt."""

from __future__ import annotations

import argparse
import json
import sys

from clients.client import Client, TrunklineError


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trunkline predict", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("--model", help="the model to ask (default: the server's first)")
    parser.add_argument("--task", required=True, help="a task, or several separated by commas")
    parser.add_argument(
        "--text", action="append", dest="texts", help="a text for a text model (repeat for several)"
    )
    parser.add_argument(
        "--budget",
        help="fraction in (0, 1], min|low|medium|high|max, or auto (climb until --confidence)",
    )
    parser.add_argument("--confidence", type=float, help="budget auto: the confidence an answer must reach")
    parser.add_argument("--max-budget", help="budget auto: the dearest rung (default max)")
    parser.add_argument("--min-budget", help="floor under load; budget auto: the first rung")
    parser.add_argument("--timeout-ms", type=float)
    parser.add_argument("--token", help="bearer token, if the server requires one")
    parser.add_argument("--json", action="store_true", help="print the whole response as JSON")
    parser.add_argument("images", nargs="*", help="PNG files, 56x56 grayscale (or --text)")
    args = parser.parse_args(argv)
    if bool(args.images) == bool(args.texts):
        parser.error("give image files or --text, one of the two")
    tasks = [t for t in args.task.split(",") if t]
    budget = float(args.budget) if args.budget and args.budget[0].isdigit() else args.budget
    try:
        options = dict(
            tasks=tasks,
            budget=budget,
            confidence=args.confidence,
            max_budget=args.max_budget,
            min_budget=args.min_budget,
            timeout_ms=args.timeout_ms,
        )
        with Client(args.url, token=args.token) as client:
            if args.texts:
                result = client.predict_text(args.texts, model=args.model, **options)
            else:
                result = client.predict(args.images, model=args.model, mask_format="png", **options)
    except TrunklineError as e:  # an error answer, or no answer (TransportError: server down, unreachable)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # an image file that cannot be read
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.raw, indent=2))
        return 0
    r = result.receipt
    for path, output in zip(args.images or args.texts, result.outputs):
        parts = []
        for task, out in output.items():
            value = out.get("label", out.get("labels"))
            sure = f" (confidence {out['confidence']:.3f})" if "confidence" in out else ""
            parts.append(f"{task}={value if value is not None else '<mask>'}{sure}")
        print(f"{path}: {' '.join(parts)}")
    routes = ", ".join(f"{t}:{v['route']}" for t, v in r.tasks.items())
    print(
        f"route {routes}  flops_fraction={r.flops_fraction:.3f} degraded={r.degraded} "
        f"backend={r.backend} batch={r.batch_size} compute={r.compute_ms:.1f}ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
