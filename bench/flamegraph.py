"""A py-spy flame graph of a Trunkline server at saturation (mixed tasks and tiers, one-image
requests, 32 closed-loop connections), for bench/flamegraphs/.

    python -m bench.flamegraph bench/flamegraphs/after.svg
    python -m bench.flamegraph before.svg --source /path/to/an/older/checkout
    python -m bench.flamegraph bench/flamegraphs/torch.svg --backend torch

`--source` serves an older checkout of the project (put first on PYTHONPATH) under the same
load, for a before/after pair. py-spy must be installed (`pip install py-spy`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.http_load import load, summarise, wait_ready
from bench.serving import TIERS, mixed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", type=Path)
    parser.add_argument("--source", type=Path, help="serve this checkout instead of the installed one")
    parser.add_argument("--port", type=int, default=8390)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], help="TRUNKLINE_BACKEND")
    args = parser.parse_args()

    from models.image.data import make_scenes

    images = make_scenes(256, "test", seed=4242).images
    env = {
        **os.environ,
        "TRUNKLINE_PORT": str(args.port),
        "TRUNKLINE_GRPC_PORT": "0",
        "TRUNKLINE_LOG_LEVEL": "warning",
    }
    if args.backend:
        env["TRUNKLINE_BACKEND"] = args.backend
    cwd = None
    if args.source:
        env["PYTHONPATH"] = str(args.source.resolve())
        cwd = args.source
    server = subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, cwd=cwd)
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(server, f"{url}/v2/health/ready")
        traffic = mixed(images, 256, TIERS)
        load(url, traffic, 32, 3)  # warm
        args.out.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "py-spy"),
                "record",
                "-p",
                str(server.pid),
                "-d",
                str(int(args.seconds)),
                "-r",
                "200",
                "-o",
                str(args.out),
            ],
            stdout=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        stats = summarise(load(url, traffic, 32, args.seconds - 1), 0.5)
        spy.wait(timeout=120)
        rps, p50, p99 = stats["throughput_rps"], stats["p50_ms"], stats["p99_ms"]
        print(f"{args.out}: {rps:.0f} req/s, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
