"""End-to-end comparisons over HTTP: budget scaling and fan-out through the server, Trunkline
against its peers, overload with and without degradation, and resident memory.

Load always comes from a separate process (`bench.http_load.load`) on 127.0.0.1, bounded in
count and time; A/B runs are interleaved round by round and medians are reported.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import numpy as np
import orjson

from bench.common import percentile
from bench.http_load import load, png, start_server, summarise
from bench.model_level import TIERS, goal
from bench.overhead import in_process_ms
from bench.peers.envs import ROOT, installed, python_for
from bench.scale import Scale
from server.settings import Settings

TASKS = ["count", "presence", "sum", "segment"]
PEERS = ["litserve", "ray", "fastapi"]


def body(images: np.ndarray, task: str | list[str], tier: str, **extra) -> bytes:
    key = "tasks" if isinstance(task, list) else "task"
    return orjson.dumps(
        {
            key: task,
            "budget": tier,
            "inputs": [{"image": png(i)} for i in images],
            "mask_format": "png",
            **extra,
        }
    )


def mixed(
    images: np.ndarray, n: int, tiers: list[str], per_request: int = 1, **extra
) -> list[tuple[str, bytes]]:
    """`n` requests of `per_request` images cycling through every task and the given tiers."""
    out = []
    for i in range(n):
        task, tier = TASKS[i % 4], tiers[(i // 4) % len(tiers)]
        start = (i * per_request) % (len(images) - per_request + 1)
        out.append((f"{task}/{tier}", body(images[start : start + per_request], task, tier, **extra)))
    return out


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextmanager
def trunkline(port: int, threads: int, scale: Scale):
    extra = {"batch_buckets": "[1,8]", "calibration_rounds": "1"} if scale.name == "tiny" else {}
    proc = start_server(Settings().backend, port, threads, **extra)  # the default backend
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@contextmanager
def peer(name: str, port: int, scale: Scale, probe: bytes, *args: str):
    python = python_for(name, own_env=scale.own_envs)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [python, "-m", f"bench.peers.{name}_app", str(port), *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready_post(proc, f"{url}/predict", probe)
        yield proc, url
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def wait_ready_post(proc: subprocess.Popen, url: str, probe: bytes, timeout: float = 600) -> None:
    """Peers have no common readiness endpoint: ready when a real request answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode} before it was ready")
        try:
            if (
                httpx.post(
                    url, content=probe, headers={"content-type": "application/json"}, timeout=30
                ).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def http_budget(url: str, images: np.ndarray, scale: Scale, threads: int) -> dict:
    """Per task and tier: batch-1 p50 over HTTP (tiers interleaved request by request) and
    batch-64 throughput (one 64-image request per tier, interleaved), against the same route
    run in-process on the same 64 images."""
    rows, goals = [], []
    for task in TASKS:
        n = scale.http_requests
        seq = [(t, body(images[i][None], task, t)) for i in range(n) for t in TIERS]
        res = load(url, seq, 1, 600, limit=len(seq))
        p50 = {t: statistics.median(r[0] for r in res if r[4] == t and r[1] == 200) for t in TIERS}
        big = [(t, body(images[:64], task, t)) for _ in range(max(2, scale.rounds // 2)) for t in TIERS]
        res64 = load(url, big, 1, 600, limit=len(big))
        ms64 = {t: statistics.median(r[0] for r in res64 if r[4] == t and r[1] == 200) for t in TIERS}
        for t in TIERS:
            bare = statistics.median(in_process_ms(task, t, images[:64], threads, max(3, scale.rounds // 2)))
            rows.append(
                {
                    "task": task,
                    "tier": t,
                    "batch1_p50_ms": round(p50[t], 2),
                    "batch64_request_ms": round(ms64[t], 1),
                    "batch64_images_per_s": round(64_000 / ms64[t], 1),
                    "in_process_images_per_s": round(64_000 / bare, 1),
                    "http_vs_in_process": round(bare / ms64[t], 3),
                }
            )
        goals.append(goal(f"{task}: low/max end-to-end p50 at batch 1", p50["low"] / p50["max"], 0.5))
    goals.append(
        goal(
            "HTTP throughput / in-process throughput at batch 64 (median of tasks and tiers)",
            statistics.median(r["http_vs_in_process"] for r in rows),
            0.7,
            at_most=False,
        )
    )
    return {"rows": rows, "goals": goals}


def http_fan_out(url: str, images: np.ndarray, scale: Scale) -> dict:
    """One 4-task request vs the four single-task requests it replaces (batch 1, max)."""
    seq = []
    for i in range(scale.http_requests):
        seq.append(("fan-out", body(images[i][None], TASKS, "max")))
        seq += [(f"single/{i}", body(images[i][None], t, "max")) for t in TASKS]
    res = load(url, seq, 1, 600, limit=len(seq))
    fan = statistics.median(r[0] for r in res if r[4] == "fan-out")
    four = statistics.median(
        sum(r[0] for r in res if r[4] == f"single/{i}") for i in range(scale.http_requests)
    )
    return {
        "rows": [
            {
                "fan_out_p50_ms": round(fan, 2),
                "four_requests_p50_ms": round(four, 2),
                "ratio": round(fan / four, 4),
            }
        ],
        "goals": [goal("fan-out vs four requests (end-to-end, batch 1)", fan / four, 0.6)],
    }


def peers(url: str, images: np.ndarray, scale: Scale, threads: int, base_port: int) -> dict:
    """Same mixed-task, mixed-tier traffic against Trunkline and each peer, interleaved."""
    traffic = mixed(images, 256, TIERS)
    probe = traffic[0][1]
    targets = {"trunkline": (url, "/v1/predict")}
    with _peers_running(scale, probe, threads, base_port) as running:
        targets |= {name: (u, "/predict") for name, u in running.items()}
        sat: dict[str, list[dict]] = {k: [] for k in targets}
        for r in range(scale.load_rounds):
            for name in _rotate(list(targets), r):
                u, path = targets[name]
                sat[name].append(
                    summarise(load(u, traffic, scale.concurrency, scale.duration_s, path=path), 0.5)
                )
        best_peer = max(
            (statistics.median(s["throughput_rps"] for s in sat[p]) for p in running), default=0.0
        )
        rate = max(1.0, 0.5 * best_peer)
        fixed: dict[str, list[dict]] = {k: [] for k in targets}
        for r in range(scale.load_rounds):
            for name in _rotate(list(targets), r):
                u, path = targets[name]
                res = load(u, traffic, 256, scale.duration_s, path=path, rate=rate)
                fixed[name].append(summarise(res, 0.5))
    rows = []
    for name in targets:
        s, f = sat[name], fixed[name]
        rows.append(
            {
                "server": name,
                "saturated_rps": round(statistics.median(x["throughput_rps"] for x in s), 1),
                "saturated_p50_ms": round(statistics.median(x["p50_ms"] for x in s), 1),
                "saturated_p99_ms": round(statistics.median(x["p99_ms"] for x in s), 1),
                "errors": sum(x["errors"] for x in s + f),
                "fixed_load_rps": round(rate, 1),
                "fixed_p50_ms": round(statistics.median(x["p50_ms"] for x in f), 1),
                "fixed_p99_ms": round(statistics.median(x["p99_ms"] for x in f), 1),
            }
        )
    ours = rows[0]
    others = rows[1:]
    goals = []
    if others:
        best = max(others, key=lambda r: r["saturated_rps"])
        goals.append(
            goal(
                f"throughput vs best peer ({best['server']})",
                ours["saturated_rps"] / best["saturated_rps"],
                1.5,
                at_most=False,
            )
        )
        low_p99 = min(others, key=lambda r: r["fixed_p99_ms"])
        goals.append(
            goal(
                f"p99 at {rate:.0f} req/s vs best peer ({low_p99['server']})",
                ours["fixed_p99_ms"] / low_p99["fixed_p99_ms"],
                0.7,
            )
        )
    return {"rows": rows, "goals": goals, "peers_skipped": [p for p in PEERS if p not in targets]}


@contextmanager
def _peers_running(scale: Scale, probe: bytes, threads: int, base_port: int):
    with ExitStack() as stack:
        running = {}
        for i, name in enumerate(PEERS):
            if not scale.own_envs and not installed(name):
                print(f"[bench] peer {name} skipped: not installed here (tiny run)", flush=True)
                continue
            _, u = stack.enter_context(peer(name, base_port + i, scale, probe, "--threads", str(threads)))
            running[name] = u
        yield running


def _rotate(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def overload(url: str, images: np.ndarray, scale: Scale, timeout_ms: float = 250.0) -> dict:
    """Offered load 2x the capacity at `max`, with and without degradation to `low`, for
    one-image requests and for 16-image requests.

    Degradation buys compute: it can absorb 2x load only where compute is what saturates.
    One-image requests of this small model are partly bound by request handling, which a
    cheaper route does not make cheaper, and the load generator shares the two cores: their
    ceiling is the smaller of capacity at `low` / (2 x capacity at `max`) and what an arm
    sending everything at `low` gets answered in time under the same load."""
    rows, goals, capacity, ceilings = [], [], {}, {}
    for per_request in (1, 16):
        n = 256 if per_request == 1 else 64
        cap = {}
        for tier in ("max", "low"):
            closed = load(url, mixed(images, n, [tier], per_request), scale.concurrency, scale.duration_s)
            cap[tier] = summarise(closed, 0.5)["throughput_rps"]
        capacity[per_request] = {tier: round(v, 1) for tier, v in cap.items()}
        rate = 2 * cap["max"]
        ceilings[per_request] = round(min(1.0, cap["low"] / rate), 3)
        extra = {"timeout_ms": timeout_ms}
        arms = {
            "degradation (min_budget low)": mixed(images, n, ["max"], per_request, min_budget="low", **extra),
            "no degradation": mixed(images, n, ["max"], per_request, **extra),
            # the ceiling of degradation: everything at `low` from the start, same load
            "all at low": mixed(images, n, ["low"], per_request, **extra),
        }
        runs: dict[str, list] = {k: [] for k in arms}
        for r in range(scale.load_rounds):
            for name in _rotate(list(arms), r):
                runs[name].append(load(url, arms[name], 512, scale.duration_s, rate=rate))
        for name, rounds in runs.items():
            rows.append(
                _overload_row(name, per_request, rate, [x for run in rounds for x in run], timeout_ms)
            )
        degraded = rows[-3]
        ceilings[per_request] = min(ceilings[per_request], rows[-1]["answered_within_timeout"])
        target = 0.95 if per_request == 16 else 0.85
        goals.append(
            goal(
                f"{per_request}-image requests at 2x: answered within the timeout with degradation "
                f"(ceiling {ceilings[per_request]})",
                degraded["answered_within_timeout"],
                target,
                at_most=False,
            )
        )
        goals.append(goal(f"{per_request}-image requests at 2x: answered late", degraded["answered_late"], 0))
        if degraded["shed_p99_ms"] is not None:
            goals.append(
                goal(f"{per_request}-image requests at 2x: shed p99 (ms)", degraded["shed_p99_ms"], 5.0)
            )
    return {
        "rows": rows,
        "goals": goals,
        "capacity_rps": capacity,
        "ceiling": ceilings,
        "timeout_ms": timeout_ms,
    }


def _overload_row(arm: str, per_request: int, rate: float, res: list, timeout_ms: float) -> dict:
    ok = [x for x in res if x[1] == 200 and x[0] <= timeout_ms]
    shed = sorted(x[0] for x in res if x[1] in (503, 429))
    return {
        "images_per_request": per_request,
        "arm": arm,
        "offered_rps": round(rate, 1),
        "requests": len(res),
        "answered_within_timeout": round(len(ok) / len(res), 4),
        "answered_late": round(sum(1 for x in res if x[1] == 200 and x[0] > timeout_ms) / len(res), 4),
        "shed_503_429": round(len(shed) / len(res), 4),
        "shed_with_retry_after": round(
            sum(1 for x in res if x[1] in (503, 429) and x[7]) / max(1, len(shed)), 4
        ),
        "other": sum(1 for x in res if x[1] not in (200, 503, 429)),
        "shed_p50_ms": round(percentile(shed, 50), 1) if shed else None,
        "shed_p99_ms": round(percentile(shed, 99), 1) if shed else None,
        "degraded_share": round(sum(1 for x in ok if x[5] is not None and x[5] < 0.999) / max(1, len(ok)), 4),
        "p50_ms": round(percentile([x[0] for x in res], 50), 1),
        "p99_ms": round(percentile([x[0] for x in res], 99), 1),
    }


def memory(images: np.ndarray, scale: Scale, threads: int, base_port: int) -> dict:
    """Resident memory: one fresh Trunkline server with every task and route vs four fresh
    single-task servers (the plain FastAPI peer hosting one task each), all warmed with the
    same 64-image requests on every tier (activation memory grows with the batch size)."""
    with trunkline(base_port + 4, threads, scale) as (proc, url):
        for t in TASKS:
            for tier in TIERS:
                httpx.post(
                    f"{url}/v1/predict",
                    content=body(images[:64], t, tier),
                    headers={"content-type": "application/json"},
                    timeout=60,
                )
        ours = rss_mib(proc.pid)
    singles = {}
    with ExitStack() as stack:
        for i, task in enumerate(TASKS):
            probe = body(images[:2], task, "max")
            proc, u = stack.enter_context(
                peer("fastapi", base_port + i, scale, probe, "--tasks", task, "--threads", str(threads))
            )
            for tier in TIERS:
                httpx.post(
                    f"{u}/predict",
                    content=body(images[:64], task, tier),
                    headers={"content-type": "application/json"},
                    timeout=60,
                )
            singles[task] = rss_mib(proc.pid)
    total = sum(singles.values())
    rows = [{"server": "trunkline, all tasks and routes", "rss_mib": round(ours, 1)}]
    rows += [{"server": f"single-task server: {t}", "rss_mib": round(v, 1)} for t, v in singles.items()]
    rows.append({"server": "four single-task servers, total", "rss_mib": round(total, 1)})
    return {"rows": rows, "goals": [goal("one server vs four single-task servers (RSS)", ours / total, 0.4)]}
