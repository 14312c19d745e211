"""The GPU path: batch 1 and 64, low vs max, both families, both backends, device `cuda`.

    python -m bench gpu --quick      # on a machine with a GPU, onnxruntime-gpu and CUDA torch

Where there is no GPU the section says so and measures nothing (each backend's own check, as
the server makes it at start: server.backends.check_device).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.fast_routes import FAMILIES, low_and_max, one_input, route_fn
from bench.model_level import goal
from bench.scale import Scale
from models.adapter import load_adapter
from server.backends import DeviceUnavailable, build_backend, check_device
from server.settings import Settings

BACKENDS = ["torch", "onnxruntime"]


def _ms(fn, n: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def gpu(scale: Scale) -> dict:
    usable, missing = [], {}
    for backend in BACKENDS:
        try:
            check_device(backend, "cuda")
            usable.append(backend)
        except DeviceUnavailable as e:
            missing[backend] = str(e)
    import torch

    if not usable:
        rows = [
            {"backend": b, "CUDA devices seen": torch.cuda.device_count(), "why not": why}
            for b, why in missing.items()
        ]
        return {
            "gpu": "none on this machine: nothing measured (no GPU was lent to this task)",
            "container": "CI's smoke builds the CPU image only: the GPU variant "
            "(--build-arg VARIANT=gpu) needs a CUDA runtime base image, and this machine reaches "
            "PyPI, Debian and npm only, no container registry",
            "rows": rows,
            "goals": [],
        }

    onnx_dir = Path.home() / ".cache" / "trunkline" / "onnx-cuda"
    settings = Settings(device="cuda", onnx_dir=onnx_dir)
    rows, goals = [], []
    for name, task in FAMILIES.items():
        adapter = load_adapter(name)
        low, full = low_and_max(adapter, task)
        fraction = adapter.flops_fraction({task: low})
        for backend in usable:
            be = build_backend(backend, adapter, settings, {task: [low, full]})
            for n in (1, 64):
                batch = one_input(adapter, n)
                ms = {r.id: _ms(route_fn(be, task, r, batch), 20 * scale.rounds) for r in (low, full)}
                rows.append(
                    {
                        "model": name,
                        "backend": backend,
                        "batch": n,
                        "low ms": round(ms[low.id], 3),
                        "max ms": round(ms[full.id], 3),
                        "low/max": round(ms[low.id] / ms[full.id], 3),
                        "low FLOPs fraction": round(fraction, 3),
                    }
                )
                if n == 1:
                    ratio = ms[low.id] / ms[full.id] / fraction
                    goals.append(
                        goal(f"{name} on {backend}, GPU batch 1: low/max time / FLOPs fraction", ratio, 1.4)
                    )
            be.close()
    return {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda",
        "missing": missing,
        "rows": rows,
        "goals": goals,
    }
