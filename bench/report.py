"""bench/RESULTS.md, the PNG plots and the raw JSON from one run's results."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TITLES = {
    "budget": "1. Budget scaling (model level)",
    "budget_http": "1. Budget scaling (end to end over HTTP)",
    "accuracy": "2. Accuracy vs FLOPs",
    "sparse": "3. Sparse task paths vs the dense all-task forward",
    "fanout": "4. Fan-out: one request for four tasks vs four requests (model level)",
    "fanout_http": "4. Fan-out (end to end over HTTP)",
    "peers": "5. Against the peers (mixed tasks and tiers, one-image requests)",
    "overload": "6. Overload: 2x capacity at `max`",
    "memory": "7. Memory",
    "limit": "8. The limit: trunk vs the machine's GEMM peak",
    "backends": "9. Backends: torch vs onnxruntime",
    "repository": "10. Two models in one server: shares of solo throughput, and loading under traffic",
    "startup": "11. Time to ready, cold and warm caches",
    "overhead": "12. Server overhead at batch 1 (end to end minus in-process compute) and its timers",
    "workers": "13. --workers: processes against threads at saturation (mixed one-image traffic)",
    "text_quality": "14. Text model: quality on the held-out split against baselines (a) and (b)",
    "text_serving": "15. Text model: serving beside mnist-scenes",
    "fast_routes": "16. Fast routes: a cheap route cheap in wall-clock, both families (issue 19)",
    "gpu": "17. The GPU path",
    "anytime": "18. Anytime answers: budget auto against static routes (issue 20)",
    "grpc": "19. gRPC against HTTP v2 binary: batch-1 overhead and saturated throughput (issue 21)",
}


def machine() -> dict:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def table(rows: list[dict]) -> str:
    if not rows:
        return "_no rows_\n"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plots(results: dict, out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    made = {}
    if "accuracy" in results:
        rows = results["accuracy"]["rows"]
        fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
        for ax, task in zip(axes, dict.fromkeys(r["task"] for r in rows)):
            pts = sorted((r["flops_fraction"], r["validation"], r["test"]) for r in rows if r["task"] == task)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="validation")
            ax.plot([p[0] for p in pts], [p[2] for p in pts], "s--", label="test")
            ax.set(title=task, xlabel="FLOPs fraction of the full route", xlim=(0, 1.05))
        axes[0].set_ylabel("score")
        axes[0].legend()
        made["accuracy"] = _save(fig, out / "accuracy_vs_flops.png")
    if "budget" in results:
        rows = results["budget"]["rows"]
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
        for task in dict.fromkeys(r["task"] for r in rows):
            rs = [r for r in rows if r["task"] == task]
            a.plot([r["tier"] for r in rs], [r["batch64_images_per_s"] for r in rs], "o-", label=task)
            b.plot([r["tier"] for r in rs], [r["batch1_p50_ms"] for r in rs], "o-", label=task)
        if "budget_http" in results:
            http = results["budget_http"]["rows"]
            for task in dict.fromkeys(r["task"] for r in http):
                rs = [r for r in http if r["task"] == task]
                b.plot(
                    [r["tier"] for r in rs], [r["batch1_p50_ms"] for r in rs], "x:", label=f"{task} (HTTP)"
                )
        a.set(title="batch-64 throughput (model)", ylabel="images/s")
        b.set(title="batch-1 p50 latency", ylabel="ms")
        a.legend(fontsize=7)
        b.legend(fontsize=7)
        made["budget"] = _save(fig, out / "budget_scaling.png")
    if "peers" in results:
        rows = results["peers"]["rows"]
        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
        names = [r["server"] for r in rows]
        a.bar(names, [r["saturated_rps"] for r in rows])
        a.set(title="throughput at saturation", ylabel="requests/s")
        b.bar(names, [r["fixed_p99_ms"] for r in rows])
        b.set(title=f"p99 at {rows[0]['fixed_load_rps']} requests/s", ylabel="ms")
        made["peers"] = _save(fig, out / "peers.png")
    if "overload" in results:
        rows = results["overload"]["rows"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        labels = [f"{r['images_per_request']} img, {r['arm'].split(' (')[0]}" for r in rows]
        ax.bar(labels, [r["answered_within_timeout"] for r in rows])
        ax.tick_params(axis="x", labelsize=7)
        ax.set(
            title=f"answered within {results['overload']['timeout_ms']:.0f} ms at 2x capacity", ylim=(0, 1)
        )
        made["overload"] = _save(fig, out / "overload.png")
    return made


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.name


def _previous(out: Path) -> tuple[dict, list[dict]]:
    """The sections of an earlier report in `out` and the runs that measured them: a run of some
    sections replaces those and keeps the others (each section says which run it came from)."""
    try:
        data = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return {}, []
    runs = data.get("runs") or [
        {k: data.get(k) for k in ("command", "scale", "minutes")}
        | {"sections": sorted(data.get("results", {}))}
    ]
    return data.get("results", {}), runs


def _run_line(r: dict) -> str:
    sections = dict.fromkeys(TITLES[s].split(".")[0] for s in TITLES if s in r["sections"])
    when = r.get("date", "earlier")
    minutes = round(r["minutes"], 1)
    return f"`{r['command']}` (scale `{r['scale']}`, {minutes} min, {when}): sections {', '.join(sections)}"


def write(results: dict, out: Path, command: str, scale: str, minutes: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    kept, runs = _previous(out)
    kept = {k: v for k, v in kept.items() if k not in results and k in TITLES}
    runs = [r | {"sections": [s for s in r["sections"] if s in kept]} for r in runs]
    date = time.strftime("%Y-%m-%d", time.gmtime())
    runs = [r for r in runs if r["sections"]] + [
        {
            "command": command,
            "scale": scale,
            "minutes": round(minutes, 1),
            "date": date,
            "sections": sorted(results),
        }
    ]
    results = {k: (kept | results)[k] for k in TITLES if k in kept | results}
    images = plots(results, out / "plots")
    (out / "results.json").write_text(
        json.dumps({"machine": info, "runs": runs, "results": results}, indent=2)
    )
    goals = [g | {"section": TITLES[k]} for k, v in results.items() for g in v.get("goals", [])]
    md = [
        "# Trunkline benchmark results\n",
        "Runs: "
        + "; ".join(_run_line(r) for r in runs)
        + f". Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}, torch {info['torch']}. "
        "Every comparison ran side by side in one run, A/B rounds interleaved; numbers are medians "
        "and ratios, and absolute times vary ±30-50% between runs on these shared machines.\n",
        "## Goals\n",
        table(
            [
                {
                    "section": g["section"],
                    "goal": g["goal"],
                    "measured": g["value"],
                    "target": g["target"],
                    "met": "yes" if g["met"] else "**no**",
                }
                for g in goals
            ]
        ),
    ]
    for key, title in TITLES.items():
        if key not in results:
            continue
        extra = {
            k: v for k, v in results[key].items() if k not in ("rows", "goals", "frontier", "plot", "plots")
        }
        tables = {k: v for k, v in extra.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        extra = {
            k: v
            for k, v in extra.items()
            if k not in tables and (not isinstance(v, (list, dict)) or len(str(v)) < 300)
        }
        md.append(f"## {title}\n")
        if extra:
            md.append(", ".join(f"{k}: {v}" for k, v in extra.items()) + "\n")
        md.append(table(results[key]["rows"]))
        for name, rows in tables.items():
            md.append(f"{name.replace('_', ' ')}:\n")
            md.append(table(rows))
        plot = images.get(key.removesuffix("_http"))
        if plot and not key.endswith("_http"):
            md.append(f"![{key}](plots/{plot})\n")
        if "frontier" in results[key]:
            md.append("Every route of every task on the held-out split (the accuracy-vs-FLOPs frontier):\n")
            md.append(table(results[key]["frontier"]))
        if "plot" in results[key]:
            md.append(f"![{key}]({results[key]['plot']})\n")
        for plot in results[key].get("plots", []):
            md.append(f"![{key}]({plot})\n")
    flames = sorted((out / "flamegraphs").glob("*.svg")) if (out / "flamegraphs").is_dir() else []
    if flames:
        md.append("## Flame graphs of the server at saturation (`python -m bench.flamegraph`)\n")
        md.append("\n".join(f"- [{f.stem}](flamegraphs/{f.name})" for f in flames) + "\n")
    path = out / "RESULTS.md"
    path.write_text("\n".join(md))
    return path
