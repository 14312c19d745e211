"""The image family's analytic FLOPs.

FLOPs count 2 per multiply-add of every linear, convolution and attention matmul, per
sample; norms, activations and additions are left out (they are <1% here).
"""

from __future__ import annotations

from models.image.config import ModelConfig
from models.image.decoders import HEADS
from models.routes import Route


def full_route(cfg: ModelConfig) -> Route:
    s = cfg.routes
    return Route(max(s.widths), max(s.experts), max(s.decoder_widths))


def all_routes(cfg: ModelConfig) -> list[Route]:
    s = cfg.routes
    return sorted(Route(w, k, d) for w in s.widths for k in s.experts for d in s.decoder_widths)


def _block_flops(cfg: ModelConfig, heads: int, hidden: int) -> int:
    N, D, inner = cfg.grid[0] * cfg.grid[1], cfg.dim, heads * cfg.head_dim
    attn = N * D * 3 * inner + 2 * N * N * inner + N * inner * D
    return 2 * (attn + 2 * N * D * hidden)


def trunk_flops(cfg: ModelConfig, width: float) -> int:
    sizes = [cfg.input.channels, *(max(1, round(c * width)) for c in cfg.stem.channels), cfg.dim]
    H, W, stem = cfg.input.height, cfg.input.width, 0
    for i, s in enumerate(cfg.stem.strides):
        H, W = H // s, W // s
        stem += H * W * sizes[i] * sizes[i + 1] * 9  # 3x3 convolutions
    heads, hidden = round(cfg.heads * width), round(cfg.mlp_hidden * width)
    return 2 * stem + cfg.trunk_depth * _block_flops(cfg, heads, hidden)


def task_flops(cfg: ModelConfig, task: str, route: Route) -> int:
    """FLOPs of one task's path after the trunk: task-zone blocks and decoder."""
    spec = cfg.task(task)
    heads = round(cfg.heads * route.width)
    zone = cfg.task_depth * _block_flops(cfg, heads, route.experts * cfg.expert_hidden)
    hid = max(1, round(spec.decoder_hidden * route.decoder_width))
    return zone + 2 * HEADS[spec.kind].flops(cfg, spec, hid)


def request_flops(cfg: ModelConfig, width: float, routes: dict[str, Route]) -> int:
    """FLOPs per sample of a (multi-)task request: trunk once, then each task's path."""
    return trunk_flops(cfg, width) + sum(task_flops(cfg, t, r) for t, r in routes.items())


def full_flops(cfg: ModelConfig, tasks: list[str]) -> int:
    full = full_route(cfg)
    return request_flops(cfg, full.width, {t: full for t in tasks})


class ConfigFlops:
    """The FLOPs model of a config, in the form routing asks for (`routing.FlopsModel`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        self.cfg = cfg

    def request_flops(self, routes: dict[str, Route]) -> int:
        return request_flops(self.cfg, next(iter(routes.values())).width, routes)

    def full_flops(self, tasks: list[str]) -> int:
        return full_flops(self.cfg, tasks)
