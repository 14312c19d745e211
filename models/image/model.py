"""The task-routed model: shared trunk, task zone of gated experts, slimmable decoders."""

from __future__ import annotations

import torch
from torch import nn

from models.image.config import ModelConfig
from models.image.decoders import build_decoder
from models.image.trunk import RouteTrunk, Trunk
from models.kinds import kind
from models.layers import Block, MoeBlock, RouteBlock
from models.routes import Route


class TaskPath(nn.Module):
    """One task's dense path after the trunk: task-zone blocks, then its decoder."""

    def __init__(self, kind_name: str, blocks: list[RouteBlock], decoder: nn.Module) -> None:
        super().__init__()
        self.kind = kind(kind_name)
        self.blocks = nn.ModuleList(blocks)
        self.decoder = decoder

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.kind.activate(self.decoder(tokens, image))


class RouteModule(nn.Module):
    """What `extract()` returns: an ordinary module that runs exactly one route.

    Its weights are copies of slices of the full model, so it holds and computes only
    what the route selects. The trunk runs once; each task forks into its own path.
    """

    def __init__(self, trunk: RouteTrunk, paths: dict[str, TaskPath], routes: dict[str, Route]):
        super().__init__()
        self.trunk = trunk
        self.paths = nn.ModuleDict(paths)
        self.routes = routes

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.trunk(image)
        return {task: path(tokens, image) for task, path in self.paths.items()}


class TaskRoutedModel(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.task_index = {name: i for i, name in enumerate(cfg.task_names)}
        self.trunk = Trunk.from_config(cfg)
        self.zone = nn.ModuleList(
            MoeBlock(cfg.dim, cfg.heads, cfg.head_dim, cfg.num_experts, cfg.expert_hidden, len(cfg.tasks))
            for _ in range(cfg.task_depth)
        )
        self.decoders = nn.ModuleDict({t.name: build_decoder(cfg, t) for t in cfg.tasks})

    # -- running a route inside the full model (training, reference) --------------------
    def forward_trunk(self, image: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        return self.trunk(image, width)

    def forward_task(
        self, tokens: torch.Tensor, image: torch.Tensor, task: str, route: Route
    ) -> torch.Tensor:
        """Logits of one task's path at `route`, from trunk tokens."""
        t, heads = self.task_index[task], round(self.cfg.heads * route.width)
        for block in self.zone:
            tokens = block(tokens, t, route.experts, heads)
        return self.decoders[task](tokens, image, route.decoder_width)

    def forward(self, image: torch.Tensor, tasks: list[str], route: Route) -> dict[str, torch.Tensor]:
        tokens = self.forward_trunk(image, route.width)
        return {t: self.forward_task(tokens, image, t, route) for t in tasks}

    @torch.no_grad()
    def predict(self, image: torch.Tensor, tasks: list[str], route: Route) -> dict[str, torch.Tensor]:
        logits = self(image, tasks, route)
        return {t: kind(self.cfg.task(t).kind).activate(v) for t, v in logits.items()}

    # -- subnetworks --------------------------------------------------------------------
    def experts(self, task: str, k: int) -> list[list[int]]:
        """The experts a task's path uses at k, per task-zone block."""
        return [block.experts.experts_for(self.task_index[task], k) for block in self.zone]

    @torch.no_grad()
    def extract_trunk(self, width: float) -> RouteTrunk:
        return self.trunk.slice(width).eval().requires_grad_(False)

    @torch.no_grad()
    def extract_path(self, task: str, route: Route) -> TaskPath:
        route.check(self.cfg)
        t, heads = self.task_index[task], round(self.cfg.heads * route.width)
        blocks = [b.slice(t, route.experts, heads) for b in self.zone]
        decoder = self.decoders[task].slice(route.decoder_width)
        path = TaskPath(self.cfg.task(task).kind, blocks, decoder)
        return path.eval().requires_grad_(False)

    def extract(self, routes: dict[str, Route] | Route, tasks: list[str] | None = None) -> RouteModule:
        """An ordinary module holding only the weights that `routes` select.

        `routes` maps task -> route (all with the same trunk width, which runs once), or is
        one route applied to every task in `tasks` (default: all tasks).
        """
        if isinstance(routes, Route):
            routes = {t: routes for t in (tasks or self.cfg.task_names)}
        widths = {r.width for r in routes.values()}
        if len(widths) != 1:
            raise ValueError(f"routes of one request must share the trunk width, got {widths}")
        paths = {task: self.extract_path(task, route) for task, route in routes.items()}
        return RouteModule(self.extract_trunk(widths.pop()), paths, dict(routes))

    @torch.no_grad()
    def reorder_by_importance(self) -> None:
        """Permute heads, neurons and channels so that every narrower width is a prefix."""
        self.trunk.stem.reorder_()
        for block in list(self.trunk.blocks) + list(self.zone):
            block.attn.reorder_()
            if isinstance(block, Block):
                block.mlp.reorder_()
        for decoder in self.decoders.values():
            decoder.reorder_()

    def balance_loss(self) -> torch.Tensor:
        return sum(block.experts.balance_loss() for block in self.zone) / len(self.zone)
