"""Anytime answers (issue 20): accuracy vs mean FLOPs of budget `auto` at several confidences,
beside every static route of the frontier, per task of both bundled models; then, over HTTP,
`auto` against `max` for text `sentiment` (batch-1 latency, saturated throughput).

    python -m bench anytime --quick

The curves replay the server's rule (routing.anytime) on every rung's outputs for the held-out
split (text: sha1 mod 5 == 0; images: the 2,000 test-pool scenes of the card), each route run
once in eager PyTorch: what the server answers to 1e-4. A row's FLOPs are those of every rung it
ran, a rung on a trunk it already ran counting only its paths (the server reuses the trunk's
output). The HTTP part runs a real server. `floors` says why a task's target is met or not:
per cheap route, how often it answers as max does, how well its confidence ranks those rows,
and the cheapest two-rung ladder from it with the threshold picked on the held-out rows.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch

from bench.http_load import load, start_server, summarise
from bench.model_level import goal
from bench.scale import Scale
from models.adapter import load_adapter
from models.calibrate import Rung, replay, route_outputs, score
from models.kinds import expected_calibration_error, kind
from routing import Budget, RouteTables
from routing.anytime import choose_ladder
from server.settings import Settings

CONFIDENCES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99)
MODELS = ("text-tasks", "mnist-scenes")
# the FLOPs the issue allows auto to reach the max route's score - 0.5 points, per task
TARGETS = {"sentiment": 0.45, "question_type": 0.45, "spam": 0.45, "presence": 0.6, "sum": 0.6, "count": 0.3}
HTTP_TASK = "sentiment"


def task_curve(adapter, tables: RouteTables, task: str, data, limit: int | None) -> dict:
    spec = adapter.tasks[task]
    k = kind(spec.kind)
    decoded, target = data
    if limit is not None and len(target) > limit:
        decoded, target = adapter.take(decoded, np.arange(limit)), target[:limit]
    metric = getattr(spec, "metric", None)
    modules: dict = {}
    floor = tables.resolve([task], Budget.parse("min"))
    top = tables.resolve([task], Budget.parse("max"))
    ladder = choose_ladder(tables, [task], floor, top)
    full = adapter.row_full_flops(decoded, [task])
    static = []
    outputs, costs = {}, {}  # per route id: its probabilities and FLOPs, per row
    for e in tables.tables[task]:
        probs = route_outputs(adapter, task, e.route, decoded, modules)
        outputs[e.id] = probs
        costs[e.id] = adapter.row_flops(decoded, {task: e.route})
        static.append(
            {
                "route": e.id,
                "fraction": float(costs[e.id].sum() / full.sum()),
                "score": score(k, probs, target, metric),
            }
        )
    rungs = [p.entries[0] for p in ladder.rungs]
    replayed = [
        Rung(
            e.id,
            e.route.trunk,
            outputs[e.id],
            e.temperature,
            costs[e.id],
            adapter.row_flops(decoded, {task: e.route}, trunk=False),
        )
        for e in rungs
    ]
    max_row = next(s for s in static if s["route"] == top.entries[0].id)
    floors = floor_bounds(adapter, tables, task, decoded, target, outputs, costs, max_row)
    auto = []
    for c in CONFIDENCES:
        answered, answer, spent = replay(k, replayed, c)
        fraction = float(spent.sum() / full.sum())
        auto.append(
            {
                "confidence": c,
                "fraction": round(fraction, 4),
                "of_max_flops": round(fraction / max_row["fraction"], 4),
                "score": round(score(k, answer, target, metric), 4),
                "escalated": round(float((answered > 0).mean()), 4),
                "answered_by": [int((answered == i).sum()) for i in range(len(rungs))],
            }
        )
    ece = []
    rows_by_id = {r["id"]: r for r in adapter.route_rows[task]}
    for e in rungs:
        probs = outputs[e.id]
        ece.append(
            {
                "route": e.id,
                "temperature": e.temperature,
                "validation ECE before": rows_by_id[e.id].get("ece"),
                "validation ECE after": rows_by_id[e.id].get("ece_calibrated"),
                "held-out ECE before": round(
                    expected_calibration_error(k.confidence(probs, 1.0), k.correct(probs, target)), 4
                ),
                "held-out ECE after": round(
                    expected_calibration_error(k.confidence(probs, e.temperature), k.correct(probs, target)),
                    4,
                ),
            }
        )
    good = [a for a in auto if a["score"] >= max_row["score"] - 0.005]
    best = min(good, key=lambda a: a["of_max_flops"]) if good else None
    return {
        "task": task,
        "rows": len(target),
        "ladder": [e.id for e in rungs],
        "max_route": max_row["route"],
        "max_score": round(max_row["score"], 4),
        "static": [{**s, "fraction": round(s["fraction"], 4), "score": round(s["score"], 4)} for s in static],
        "auto": auto,
        "chosen": best,
        "ece": ece,
        "floors": floors,
    }


def _agreement(k, probs: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Per row, whether a route answers as the max route does (what a cheap rung's confidence
    must predict for a ladder to reach max's score cheaply)."""
    return k.correct(probs, top.argmax(-1) if k.name == "classification" else top).astype(bool)


def floor_bounds(adapter, tables, task, decoded, target, outputs, costs, max_row) -> list[dict]:
    """Why a ladder reaches max's score cheaply or not, per static route cheaper than the task's
    FLOPs target: how often it answers as max does, how well its calibrated confidence ranks
    those rows (ROC AUC), and the cheapest two-rung ladder (route, then max) that reaches max's
    score - 0.5 points with the threshold chosen on these same rows (a bound on any confidence
    rule over that route's output; the escalated fraction at it)."""
    from sklearn.metrics import roc_auc_score

    spec, limit = adapter.tasks[task], TARGETS.get(task)
    k, metric = kind(spec.kind), getattr(spec, "metric", None)
    top = next(e for e in tables.tables[task] if e.id == max_row["route"])
    goal_score = max_row["score"] - 0.005
    max_flops = costs[top.id].sum()
    rows = []
    for e in tables.tables[task]:
        cost = costs[e.id]
        if e.id == top.id or limit is None or cost.sum() / max_flops > limit:
            continue
        probs = outputs[e.id]
        agree = _agreement(k, probs, outputs[top.id])
        conf = k.confidence(probs, e.temperature)
        same_trunk = e.route.trunk == top.route.trunk
        climb = adapter.row_flops(decoded, {task: top.route}, trunk=not same_trunk)
        order = np.argsort(conf, kind="stable")
        bound = None
        for q in np.linspace(0, 1, 201):
            up = np.zeros(len(order), bool)
            up[order[: round(q * len(order))]] = True
            answer = np.where(up.reshape(-1, *[1] * (probs.ndim - 1)), outputs[top.id], probs)
            if score(k, answer, target, metric) >= goal_score:
                bound = (q, float((cost.sum() + climb[up].sum()) / max_flops))
                break
        rows.append(
            {
                "route": e.id,
                "FLOPs / max's": round(float(cost.sum() / max_flops), 4),
                "score": round(score(k, probs, target, metric), 4),
                "agrees with max": round(float(agree.mean()), 4),
                "confidence AUC for agreeing": (
                    round(float(roc_auc_score(agree, conf)), 3) if 0 < agree.mean() < 1 else None
                ),
                "escalated at the bound": None if bound is None else round(bound[0], 3),
                "two-rung bound FLOPs / max's": None if bound is None else round(bound[1], 4),
            }
        )
    return rows


def curves(scale: Scale) -> tuple[list[dict], list[dict], dict]:
    limit = {"tiny": 40}.get(scale.name)
    rows, goals, per_model, ece, floors = [], [], {}, [], []
    for name in MODELS:
        adapter = load_adapter(name)
        tables = RouteTables(adapter, adapter.route_rows)
        data = adapter.labelled("test")
        per_model[name] = []
        for task in adapter.tasks:
            if kind(adapter.tasks[task].kind).no_confidence or task not in data:
                continue
            curve = task_curve(adapter, tables, task, data[task], limit)
            per_model[name].append(curve)
            ece += [
                {"model": name, "task": task, "kind": adapter.tasks[task].kind, **e} for e in curve["ece"]
            ]
            floors += [{"model": name, "task": task, **f} for f in curve["floors"]]
            chosen = curve["chosen"]
            rows.append(
                {
                    "model": name,
                    "task": task,
                    "rows": curve["rows"],
                    "ladder": " > ".join(curve["ladder"]),
                    "max score": curve["max_score"],
                    "confidence": chosen["confidence"] if chosen else None,
                    "auto score": chosen["score"] if chosen else None,
                    "auto FLOPs / max's": chosen["of_max_flops"] if chosen else None,
                    "escalated": chosen["escalated"] if chosen else None,
                }
            )
            if task not in TARGETS:
                continue
            if chosen:
                label = f"{name} {task}: auto FLOPs / max's at max's score - 0.5 points"
                goals.append(goal(label, chosen["of_max_flops"], TARGETS[task]))
            else:  # no confidence reached the score: by how much the best one fell short
                short = max(a["score"] for a in curve["auto"]) - (curve["max_score"] - 0.005)
                label = f"{name} {task}: auto's best score - (max's - 0.5 points): no confidence reached it"
                goals.append(goal(label, short, 0.0, at_most=False))
    classification = [e for e in ece if e["kind"] == "classification"]
    for split in ("validation", "held-out"):
        worst = max(e[f"{split} ECE after"] for e in classification)
        goals.append(goal(f"ECE after temperature scaling, worst classification rung ({split})", worst, 0.05))
    return rows, goals, per_model, ece, floors


def plot(per_model: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for name, tasks in per_model.items():
        fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
        for ax, curve in zip(axes[0], tasks):
            s = curve["static"]
            ax.scatter(
                [r["fraction"] for r in s], [r["score"] for r in s], s=14, c="grey", label="static routes"
            )
            a = curve["auto"]
            ax.plot([r["fraction"] for r in a], [r["score"] for r in a], "o-", c="tab:blue", label="auto")
            for r in a:
                ax.annotate(f"{r['confidence']}", (r["fraction"], r["score"]), fontsize=7)
            ax.set_title(curve["task"])
            ax.set_xlabel("mean FLOPs fraction")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("score (held-out)")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{name}: budget auto vs static routes")
        fig.tight_layout()
        path = out / "plots" / f"anytime-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path.relative_to(out)))
    return paths


def _texts(n: int) -> list[str]:
    from models.text.data import load_task

    return load_task(HTTP_TASK).split("test").texts[:n]


def http(scale: Scale, threads: int, port: int, confidence: float) -> tuple[list[dict], list[dict]]:
    """Batch 1 on one keep-alive connection (p50, mean), and 16 closed-loop clients: auto at
    `confidence` vs max (and min, auto's first rung alone), text `sentiment`; auto's answers
    under concurrency equal to a sequential run's."""
    n = {"tiny": 8}.get(scale.name, 30 * scale.rounds)
    texts = _texts(n)
    # min: auto's first rung alone (a request that never climbs), the bound on auto's latency
    arms = {
        "max": {"budget": "max"},
        "auto": {"budget": "auto", "confidence": confidence},
        "min": {"budget": "min"},
    }

    def body(text: str, arm: str) -> dict:
        return {"model": "text-tasks", "task": HTTP_TASK, "inputs": [{"text": text}], **arms[arm]}

    proc = start_server(Settings().backend, port, threads, model="text-tasks")
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            for t in texts[:10]:
                for arm in arms:
                    client.post("/v1/predict", json=body(t, arm)).raise_for_status()
            ms: dict[str, list[float]] = {arm: [] for arm in arms}
            sequential = {}
            for t in texts:  # interleaved, one keep-alive connection
                for arm in arms:
                    start = time.perf_counter()
                    r = client.post("/v1/predict", json=body(t, arm))
                    ms[arm].append((time.perf_counter() - start) * 1000)
                    r.raise_for_status()
                    if arm == "auto":
                        sequential[t] = r.json()["outputs"][0][HTTP_TASK]["label"]
        rps: dict[str, list[float]] = {arm: [] for arm in arms}
        payloads = {arm: [(arm, orjson.dumps(body(t, arm))) for t in texts] for arm in arms}
        for _ in range(scale.load_rounds):
            for arm in arms:
                rps[arm].append(summarise(load(url, payloads[arm], 16, scale.duration_s))["throughput_rps"])

        def concurrent(chunk: list[str]) -> int:
            with httpx.Client(base_url=url, timeout=60) as c:
                return sum(
                    c.post("/v1/predict", json=body(t, "auto")).json()["outputs"][0][HTTP_TASK]["label"]
                    != sequential[t]
                    for t in chunk
                )

        with ThreadPoolExecutor(16) as pool:
            mismatched = sum(pool.map(concurrent, [texts[i::16] for i in range(16)]))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    latency = {arm: (statistics.median(v), statistics.mean(v)) for arm, v in ms.items()}
    rows = [
        {
            "arm": arm,
            "p50 ms": round(latency[arm][0], 3),
            "mean ms": round(latency[arm][1], 3),
            "saturated req/s (16 clients)": round(statistics.median(rps[arm]), 1),
        }
        for arm in arms
    ]
    auto_rps, max_rps = statistics.median(rps["auto"]), statistics.median(rps["max"])
    goals = [
        goal(
            "text sentiment: auto mean latency / max's, batch 1 over HTTP",
            latency["auto"][1] / latency["max"][1],
            0.6,
        ),
        goal(
            "text sentiment: auto p50 latency / max's, batch 1 over HTTP",
            latency["auto"][0] / latency["max"][0],
            0.6,
        ),
        goal(
            "text sentiment: auto saturated req/s / max's (16 clients)",
            auto_rps / max_rps,
            1.8,
            at_most=False,
        ),
        goal(
            f"text sentiment: auto answers under 16 clients unlike the sequential run's (of {len(texts)})",
            mismatched,
            0,
        ),
    ]
    return rows, goals


def anytime(scale: Scale, threads: int, port: int, out: Path) -> dict:
    torch.set_num_threads(threads)
    rows, goals, per_model, ece, floors = curves(scale)
    text_curve = next(c for c in per_model["text-tasks"] if c["task"] == HTTP_TASK)
    confidence = (text_curve["chosen"] or text_curve["auto"][-1])["confidence"]
    http_rows, http_goals = http(scale, threads, port, confidence)
    return {
        "confidence_for_http": confidence,
        "rows": rows,
        "http": http_rows,
        "ece": ece,
        "floors": floors,
        "curves": [
            {"model": m, "task": c["task"], "ladder": " > ".join(c["ladder"]), **a}
            for m, cs in per_model.items()
            for c in cs
            for a in c["auto"]
        ],
        "plots": plot(per_model, out),
        "goals": goals + http_goals,
    }
