"""What every peer shares: the routes it serves and the request/response codec.

A peer does what serving a multi-task model usually looks like: one extracted module per
(task, budget tier), each run on its own batch. No shared trunk across tasks, no load-aware
routing; batching is the peer framework's own.
"""

from __future__ import annotations

import argparse
import base64
import io
from collections import defaultdict

import numpy as np
import torch
from PIL import Image

from models.image import checkpoint
from models.routes import Route

# the FLOPs-fraction ceiling of each tier; `min` is the smallest route
TIER_CEILING = {"min": 0.0, "low": 0.25, "medium": 0.5, "high": 0.75, "max": 1.0}


def parse_args() -> argparse.Namespace:
    """The command line every peer takes: `python -m bench.peers.<peer>_app PORT [options]`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--tasks", default="", help="comma-separated tasks to host (default: all)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--wait-ms", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    return args


class PeerModel:
    """The tier routes of the hosted tasks, extracted once, and how to run them on a batch."""

    def __init__(self, model: str = "mnist-scenes", tasks: list[str] | None = None, threads: int = 2):
        torch.set_num_threads(threads)
        full, tables = checkpoint.load(model)
        cfg = full.cfg
        self.shape = (cfg.input.height, cfg.input.width)
        self.kinds = {t.name: t.kind for t in cfg.tasks}
        self.choice: dict[tuple[str, str], str] = {}
        self.modules: dict[str, torch.nn.Module] = {}
        for task, rows in tables.items():
            if tasks and task not in tasks:
                continue
            for tier, ceiling in TIER_CEILING.items():
                within = [r for r in rows if r["flops_fraction"] <= ceiling + 1e-9] or rows[:1]
                best = max(within, key=lambda r: (r["score"], r["flops"]))
                key = f"{task}:{best['id']}"
                self.choice[(task, tier)] = key
                if key not in self.modules:
                    self.modules[key] = full.extract({task: Route.parse(best["id"])}).eval()
        del full

    def decode(self, body: dict) -> tuple[str, np.ndarray]:
        """Request body -> (module key, float32 images [n, 1, H, W] in [0, 1])."""
        key = self.choice[(body["task"], body.get("budget", "max"))]
        images = []
        for item in body["inputs"]:
            img = Image.open(io.BytesIO(base64.b64decode(item["image"]))).convert("L")
            images.append(np.asarray(img, dtype=np.float32) / 255)
        return key, np.stack(images)[:, None]

    def run(self, key: str, images: np.ndarray) -> list[dict]:
        """One module on a batch -> one output dict per image."""
        task = key.split(":")[0]
        kind = self.kinds[task]
        with torch.inference_mode():
            probs = self.modules[key](torch.from_numpy(images))[task].numpy()  # probabilities
        return [encode(kind, p) for p in probs]

    def run_mixed(self, items: list[tuple[str, np.ndarray]]) -> list[list[dict]]:
        """A batch of requests of any tasks: one forward per module key, answers in order."""
        groups: dict[str, list[int]] = defaultdict(list)
        for i, (key, _) in enumerate(items):
            groups[key].append(i)
        answers: list[list[dict]] = [[] for _ in items]
        for key, idx in groups.items():
            sizes = [len(items[i][1]) for i in idx]
            outs = self.run(key, np.concatenate([items[i][1] for i in idx]))
            start = 0
            for i, n in zip(idx, sizes):
                answers[i] = outs[start : start + n]
                start += n
        return answers


def encode(kind: str, probs: np.ndarray) -> dict:
    if kind == "classification":
        return {"index": int(probs.argmax()), "scores": probs.tolist()}
    if kind == "multilabel":
        return {"labels": np.flatnonzero(probs > 0.5).tolist(), "scores": probs.tolist()}
    buf = io.BytesIO()
    Image.fromarray(probs.argmax(0).astype(np.uint8)).save(buf, format="PNG")
    return {"mask": base64.b64encode(buf.getvalue()).decode()}
