"""The text model (text-tasks on all-MiniLM-L6-v2), side by side in one run:

- quality on the held-out split: every route of every task (the accuracy-vs-FLOPs frontier),
  against baseline (a), the frozen base encoder mean-pooled with a linear head per task
  (logistic / ridge regression), and baseline (b), the base encoder fine-tuned on each task
  alone;
- serving over HTTP, beside mnist-scenes in the same server: batch-1 latency low vs max,
  saturated throughput low vs max, one 4-task request vs four single-task requests, overload
  at 2x the capacity at max with min_budget low, padding waste of length groups, memory of one
  server against single-task servers.
"""

from __future__ import annotations

import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
from safetensors.torch import load_file
from torch import nn

from bench.common import percentile
from bench.http_load import load, start_server, summarise
from bench.model_level import goal
from bench.scale import Scale
from models.checkpoint import BUNDLED
from models.kinds import kind
from models.routes import Route
from models.text.adapter import TextAdapter
from models.text.data import TextTask, load_task
from models.text.model import base_encoder, base_sha256, check_base, pool
from models.text.train import Encoder, _sorted_batches, evaluate_module
from routing import Budget, RouteTables

MODEL = "text-tasks"
TASKS = ["sentiment", "question_type", "spam", "sentiment_score"]
# rows per task for the tiny (CI) scale: seconds, proves it runs
TINY_ROWS = 64
FRONTIER_ROWS = 800


def _rows(task: TextTask, n: int | None) -> TextTask:
    return (
        task if n is None else TextTask(task.name, task.kind, task.labels, task.texts[:n], task.targets[:n])
    )


# -- quality ---------------------------------------------------------------------------------
def _features(encoder, enc: Encoder, task: TextTask) -> tuple[np.ndarray, np.ndarray]:
    feats, targets = [], []
    with torch.inference_mode():
        for batch, y in _sorted_batches(enc, task, 64):
            feats.append(pool(encoder(batch), batch[:, 1]).numpy())
            targets.append(y)
    return np.concatenate(feats), np.concatenate(targets)


def baseline_frozen(encoder, enc: Encoder, train: TextTask, test: TextTask, spec) -> float:
    """(a): frozen encoder, mean pooling, logistic regression (ridge for regression)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    x, y = _features(encoder, enc, train)
    xt, yt = _features(encoder, enc, test)
    if spec.kind == "regression":
        pred = Ridge(alpha=1.0).fit(x, y).predict(xt)
        probs = torch.from_numpy(pred.astype(np.float32))[:, None]
    else:
        clf = LogisticRegression(max_iter=3000).fit(x, y)
        probs = torch.from_numpy(clf.predict_proba(xt).astype(np.float32))
    meter = spec.new_metric()
    meter.update(probs, yt)
    return meter.value()


def _length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length: sort within pools of 50 batches, then shuffle."""
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    pool_size = batch_size * 50
    batches = []
    for start in range(0, len(idx), pool_size):
        chunk = sorted(idx[start : start + pool_size], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def baseline_finetuned(
    cfg, base: dict, enc: Encoder, train: TextTask, test: TextTask, spec, epochs: float
) -> dict:
    """(b): the whole pretrained encoder (its layers; the embedding tables frozen) fine-tuned
    on one task with a mean-pooled linear head: AdamW 1e-4, warm-up then linear decay."""
    torch.manual_seed(0)
    encoder = base_encoder(cfg, base)
    head = nn.Linear(cfg.dim, spec.num_classes)
    params = [p for n, p in encoder.named_parameters() if not n.startswith("embeddings.")] + list(
        head.parameters()
    )
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = enc.ids(train.texts)
    rng = random.Random(0)
    plan = []
    while len(plan) < max(1, round(epochs * len(ids) / 32)):
        plan += _length_batches([len(r) for r in ids], 32, rng)
    steps = max(1, round(epochs * len(ids) / 32))
    plan = plan[:steps]
    k = kind(spec.kind)
    started = time.perf_counter()
    encoder.train()
    for step, rows in enumerate(plan):
        warm = max(1, steps // 16)
        scale = (step + 1) / warm if step < warm else max(0.0, (steps - step) / (steps - warm))
        for g in opt.param_groups:
            g["lr"] = 1e-4 * scale
        batch = Encoder.pad([ids[i] for i in rows])
        logits = head(pool(encoder(batch), batch[:, 1]))
        loss = k.loss(logits, torch.from_numpy(train.targets[rows]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    encoder.eval()
    run = lambda b: {spec.name: k.activate(head(pool(encoder(b), b[:, 1])))}  # noqa: E731
    return {
        "score": evaluate_module(run, enc, test, spec),
        "steps": steps,
        "minutes": round((time.perf_counter() - started) / 60, 1),
    }


def baselines(scale: Scale, threads: int) -> dict[str, dict]:
    """Baselines (a) and (b) per task on the held-out split. Fine-tuning (b) takes ~20 minutes
    of these two cores, so a run keeps its results in the cache, keyed by everything that
    decides them (base weights' hash, data, epochs, scale); a later run on this machine reads
    them and says so."""
    import hashlib
    import json

    from models.text.model import text_tasks_config

    cfg = text_tasks_config()
    ref = cfg.base.model_copy(update={"sha256": ""})
    sha = base_sha256(ref)
    epochs = {"tiny": 0.05, "quick": 2.0, "full": 3.0}[scale.name]
    sizes = {n: len(load_task(n)) for n in TASKS}
    key = hashlib.sha256(json.dumps([sha, sizes, epochs, scale.name, 1]).encode()).hexdigest()[:12]
    cache = Path.home() / ".cache" / "trunkline" / "bench" / f"text-baselines-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text()) | {"cached": str(cache)}
    torch.set_num_threads(threads)
    enc = Encoder(cfg, 64)  # at most 64 tokens, as the probe
    base = load_file(check_base(ref))
    frozen = base_encoder(cfg, base).eval()
    tiny = scale.name == "tiny"
    result: dict = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "epochs": epochs}
    for name in TASKS:
        spec = cfg.task(name)
        data = load_task(name)
        train = _rows(data.split("train"), TINY_ROWS if tiny else None)
        test = _rows(data.split("test"), TINY_ROWS if tiny else None)
        a = baseline_frozen(frozen, enc, train, test, spec)
        b = baseline_finetuned(cfg, base, enc, train, test, spec, epochs)
        result[name] = {
            "a": round(a, 4),
            "b": round(b["score"], 4),
            "b_minutes": b["minutes"],
            "b_steps": b["steps"],
        }
    if not tiny:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=2))
    return result


def quality(scale: Scale, threads: int) -> dict:
    torch.set_num_threads(threads)
    adapter = TextAdapter(BUNDLED / MODEL, MODEL, "1")
    model, tables = adapter.model, adapter.route_rows  # fractions as budgets see them
    cfg = model.cfg
    serve_enc = Encoder(cfg, cfg.input.max_tokens)
    tiny = scale.name == "tiny"
    base = baselines(scale, threads)
    rows, frontier, goals = [], {}, []
    for name in TASKS:
        spec = cfg.task(name)
        test = _rows(load_task(name).split("test"), TINY_ROWS if tiny else None)
        a, b = base[name]["a"], base[name]["b"]
        # the full and the `low` route on the whole held-out split; the rest of the frontier
        # (for the plot) on its first FRONTIER_ROWS rows
        low_id = max((r for r in tables[name] if r["flops_fraction"] <= 0.25), key=lambda r: r["score"])["id"]
        routes = []
        for row in tables[name]:
            module = model.extract({name: Route.parse(row["id"])})
            whole = row["id"] in (low_id, tables[name][-1]["id"])
            rows_used = test if whole else _rows(test, FRONTIER_ROWS)
            routes.append(
                {
                    "route": row["id"],
                    "flops_fraction": row["flops_fraction"],
                    "validation": row["score"],
                    "test": round(evaluate_module(module, serve_enc, rows_used, spec), 4),
                    "test_rows": len(rows_used),
                }
            )
        frontier[name] = routes
        full = routes[-1]
        low = next(r for r in routes if r["route"] == low_id)
        rows.append(
            {
                "task": name,
                "metric": spec.metric_name,
                "baseline_a_frozen": a,
                "baseline_b_finetuned": b,
                "full_route": full["test"],
                "low_route": low["route"],
                "low_flops_fraction": low["flops_fraction"],
                "low_score": low["test"],
            }
        )
        points = lambda x: round(100 * x, 1)  # noqa: E731
        goals.append(
            goal(f"{name}: full route - (b) (points)", points(full["test"] - b), -1.0, at_most=False)
        )
        goals.append(goal(f"{name}: low route - (b) (points)", points(low["test"] - b), -4.0, at_most=False))
        goals.append(goal(f"{name}: low route - (a) (points)", points(low["test"] - a), 0.0, at_most=False))
    frontier_rows = [{"task": t, **r} for t, routes in frontier.items() for r in routes]
    return {
        "rows": rows,
        "frontier": frontier_rows,
        "goals": goals,
        "test_rows": "all" if not tiny else TINY_ROWS,
        "baselines": {k: v for k, v in base.items() if k not in TASKS},
    }


# -- serving -----------------------------------------------------------------------------------
def texts_from_tests(n: int) -> list[str]:
    """Real held-out texts of every task, mixed: realistic lengths."""
    out = []
    for name in TASKS:
        out += load_task(name).split("test").texts[: n // len(TASKS) + 1]
    random.Random(0).shuffle(out)
    return out[:n]


def text_body(texts: list[str], task: str | list[str], tier: str, model: str = MODEL, **extra) -> bytes:
    key = "tasks" if isinstance(task, list) else "task"
    return orjson.dumps(
        {"model": model, key: task, "budget": tier, "inputs": [{"text": t} for t in texts], **extra}
    )


def _post(url: str, body: bytes) -> dict:
    r = httpx.post(
        f"{url}/v1/predict", content=body, headers={"content-type": "application/json"}, timeout=120
    )
    r.raise_for_status()
    return r.json()


def batch1_latency(url: str, texts: list[str], n: int) -> dict:
    """Sequential batch-1 requests on one keep-alive connection (as the image family's section 1
    measures), low and max interleaved: p50 each."""
    seq = [
        (tier, text_body([texts[i % len(texts)]], TASKS[i % len(TASKS)], tier))
        for i in range(n)
        for tier in (("low", "max") if i % 2 == 0 else ("max", "low"))
    ]
    res = load(url, seq, 1, 600, limit=len(seq))
    ok = [r for r in res if r[1] == 200]
    return {t: round(statistics.median(r[0] for r in ok if r[4] == t), 2) for t in ("low", "max")}


def multi_task_compute(adapter: TextAdapter, texts: list[str], rounds: int) -> dict:
    """In-process, batch 32 at `max`: one 4-task request (encoder once, then each path) vs four
    single-task requests (the encoder four times)."""
    tables = RouteTables(adapter, adapter.route_rows)
    plan = tables.resolve(TASKS, Budget.parse("max"))
    singles = [tables.resolve([t], Budget.parse("max")) for t in TASKS]
    batch = torch.from_numpy(adapter.stack([adapter.tokenize(texts[:32])]))
    joint = adapter.model.extract(plan.routes)
    alone = [adapter.model.extract(p.routes) for p in singles]
    a, b = [], []
    with torch.inference_mode():
        joint(batch)
        for m in alone:
            m(batch)
        for _ in range(rounds):
            t = time.perf_counter()
            joint(batch)
            a.append(time.perf_counter() - t)
            t = time.perf_counter()
            for m in alone:
                m(batch)
            b.append(time.perf_counter() - t)
    return {
        "one_4_task_request_ms": round(statistics.median(a) * 1000, 1),
        "four_single_task_requests_ms": round(statistics.median(b) * 1000, 1),
        "ratio": round(statistics.median(a) / statistics.median(b), 3),
    }


def padding_waste(adapter: TextAdapter, texts: list[str], batch: int = 32) -> dict:
    """Padded tokens / real tokens - 1, batches of `batch` real held-out texts: one padded
    batch against the server's length groups."""
    one, grouped, groups = [], [], []
    for i in range(0, len(texts) - batch + 1, batch):
        decoded = [adapter.tokenize([t]) for t in texts[i : i + batch]]
        real = sum(len(d.ids[0]) for d in decoded)
        padded = adapter.stack(decoded)
        one.append(padded.shape[0] * padded.shape[2] / real - 1)
        parts = adapter.batches(decoded)
        grouped.append(sum(b.shape[0] * b.shape[2] for _, b in parts) / real - 1)
        groups.append(len(parts))
    return {
        "one_batch": round(statistics.mean(one), 3),
        "length_groups": round(statistics.mean(grouped), 3),
        "groups_per_batch": round(statistics.mean(groups), 2),
    }


def overload(url: str, texts: list[str], scale: Scale, timeout_ms: float) -> dict:
    """2x the saturated capacity at `max`, one text per request, with min_budget low."""
    traffic = [("max", text_body([t], TASKS[i % 4], "max")) for i, t in enumerate(texts)]
    cap = summarise(load(url, traffic, scale.concurrency, scale.duration_s), 0.5)["throughput_rps"]
    rate = 2 * cap
    arms = {
        "degradation (min_budget low)": [
            ("max", text_body([t], TASKS[i % 4], "max", min_budget="low", timeout_ms=timeout_ms))
            for i, t in enumerate(texts)
        ],
        "no degradation": [
            ("max", text_body([t], TASKS[i % 4], "max", timeout_ms=timeout_ms)) for i, t in enumerate(texts)
        ],
    }
    rows = []
    for name, payload in arms.items():
        res = load(url, payload, 512, scale.duration_s, rate=rate)
        ok = [x for x in res if x[1] == 200 and x[0] <= timeout_ms]
        rows.append(
            {
                "arm": name,
                "offered_rps": round(rate, 1),
                "requests": len(res),
                "answered_within_timeout": round(len(ok) / max(1, len(res)), 4),
                "answered_late": round(
                    sum(1 for x in res if x[1] == 200 and x[0] > timeout_ms) / max(1, len(res)), 4
                ),
                "shed": round(sum(1 for x in res if x[1] in (429, 503)) / max(1, len(res)), 4),
                "p99_ms": round(percentile([x[0] for x in res], 99), 1) if res else None,
            }
        )
    return {"capacity_at_max_rps": round(cap, 1), "timeout_ms": timeout_ms, "rows": rows}


def rss_mib(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def _quick_start(scale: Scale) -> dict[str, str]:
    """At the tiny (CI) scale servers calibrate two batch sizes once: seconds, not minutes."""
    return {"batch_buckets": "[1,8]", "calibration_rounds": "1"} if scale.name == "tiny" else {}


def memory(scale: Scale, threads: int, port: int, texts: list[str]) -> dict:
    """RSS of one server hosting text-tasks and mnist-scenes against four servers hosting one
    text task each (the text model with the three others removed), all warmed the same way."""
    from models.text.train import remove_task

    def warm(url: str, tasks: list[str], model: str = MODEL) -> None:
        for task in tasks:
            for tier in ("low", "max"):
                _post(url, text_body(texts[:32], task, tier, model))

    proc = start_server("torch", port, threads, model=f"{MODEL},mnist-scenes", **_quick_start(scale))
    try:
        warm(f"http://127.0.0.1:{port}", TASKS)
        ours = rss_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    singles = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, task in enumerate(TASKS):  # one at a time: each measured alone, as the one above
            folder = Path(tmp) / f"{MODEL}-{task}"
            shutil.copytree(BUNDLED / MODEL, folder)
            for other in TASKS:
                if other != task:
                    remove_task(folder, other)
            p = start_server("torch", port + 1 + i, threads, model=str(folder), **_quick_start(scale))
            try:
                warm(f"http://127.0.0.1:{port + 1 + i}", [task], folder.name)
                singles[task] = rss_mib(p.pid)
            finally:
                p.terminate()
                p.wait(timeout=60)
    total = sum(singles.values())
    rows = [{"server": "trunkline: text-tasks (4 tasks) + mnist-scenes", "rss_mib": round(ours, 1)}]
    rows += [{"server": f"single-task server: {t}", "rss_mib": round(v, 1)} for t, v in singles.items()]
    rows.append({"server": "four single-task servers, total", "rss_mib": round(total, 1)})
    return {"rows": rows, "one_over_four": round(ours / total, 3)}


def serving(scale: Scale, threads: int, port: int) -> dict:
    texts = texts_from_tests(256)
    adapter = TextAdapter(BUNDLED / MODEL, MODEL, "1")
    torch.set_num_threads(threads)
    result: dict = {"padding": padding_waste(adapter, texts)}
    result["multi_task"] = multi_task_compute(adapter, texts, max(3, scale.rounds))
    del adapter
    proc = start_server("torch", port, threads, model=MODEL, **_quick_start(scale))
    url = f"http://127.0.0.1:{port}"
    try:
        result["batch1_p50_ms"] = batch1_latency(url, texts, max(4, scale.http_requests * 4))
        sat = {}
        for tier in ("max", "low"):
            traffic = [(tier, text_body([t], TASKS[i % 4], tier)) for i, t in enumerate(texts)]
            sat[tier] = round(
                summarise(load(url, traffic, scale.concurrency, scale.duration_s), 0.5)["throughput_rps"], 1
            )
        result["saturated_rps"] = sat
        result["overload"] = overload(url, texts, scale, timeout_ms=500.0)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    result["memory"] = memory(scale, threads, port + 10, texts)
    p50, sat = result["batch1_p50_ms"], result["saturated_rps"]
    degraded = result["overload"]["rows"][0]
    result["rows"] = [
        {"measure": "batch-1 p50 over HTTP (ms)", "low": p50["low"], "max": p50["max"]},
        {"measure": "saturated throughput, one text a request (req/s)", "low": sat["low"], "max": sat["max"]},
        *({"measure": f"overload: {r['arm']}", **r} for r in result["overload"]["rows"]),
        {"measure": "padding waste, batches of 32 held-out texts", **result["padding"]},
        {"measure": "multi-task compute, batch 32 at max", **result["multi_task"]},
        *({"measure": "memory", **r} for r in result["memory"]["rows"]),
    ]
    result["goals"] = [
        goal("batch-1 p50 over HTTP, low / max", round(p50["low"] / p50["max"], 3), 0.4),
        goal("saturated throughput, low / max", round(sat["low"] / sat["max"], 3), 3.0, at_most=False),
        goal(
            "one 4-task request / four single-task requests (compute, batch 32)",
            result["multi_task"]["ratio"],
            0.4,
        ),
        goal(
            "overload 2x at max, min_budget low: answered within timeout",
            degraded["answered_within_timeout"],
            0.97,
            at_most=False,
        ),
        goal("padding waste of length groups (padded / real - 1)", result["padding"]["length_groups"], 0.25),
    ]
    return result


def frontier_plot(frontier_rows: list[dict], rows: list[dict], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frontier: dict[str, list[dict]] = {}
    for r in frontier_rows:
        frontier.setdefault(r["task"], []).append(r)
    fig, axes = plt.subplots(1, len(frontier), figsize=(4 * len(frontier), 3.4))
    base = {r["task"]: r for r in rows}
    for ax, (task, routes) in zip(np.atleast_1d(axes), frontier.items()):
        ax.plot(
            [r["flops_fraction"] for r in routes], [r["test"] for r in routes], "o-", label="routes (test)"
        )
        ax.axhline(base[task]["baseline_b_finetuned"], color="C2", ls="--", label="(b) fine-tuned")
        ax.axhline(base[task]["baseline_a_frozen"], color="C3", ls=":", label="(a) frozen probe")
        ax.axvline(0.25, color="grey", lw=0.5)
        ax.set_title(f"{task} ({base[task]['metric']})")
        ax.set_xlabel("FLOPs fraction")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "plots" / "text_frontier.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path.relative_to(out))
