"""Step 2 of docs/adapters.md: the network, what a route extracts from it, and its FLOPs.

The trunk standardises the features, embeds them and runs `depth` residual MLP blocks; a
route's width keeps a prefix of each block's neurons (sandwich training makes every prefix a
working network). Each task owns a gate over one shared mixture of experts (Trunkline's
`models.layers.TaskExperts`: the path is the task's top-k experts, merged into one MLP) and a
head whose hidden layer is slimmable too. `extract_*` copy the slices a route selects into
ordinary modules: a smaller route holds and runs fewer weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.kinds import kind
from models.layers import Mlp, TaskExperts
from models.routes import Route
from trunkline_tabular.config import TabularConfig


class Head(nn.Module):
    """dim -> hidden (GELU) -> classes; slimmable by its hidden neurons."""

    def __init__(self, dim: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        m = hidden or self.fc1.out_features
        h = F.gelu(F.linear(x, self.fc1.weight[:m], self.fc1.bias[:m]))
        return F.linear(h, self.fc2.weight[:, :m], self.fc2.bias)

    @torch.no_grad()
    def slice(self, hidden: int) -> Head:
        small = Head(self.fc1.in_features, hidden, self.fc2.out_features)
        small.fc1.weight.copy_(self.fc1.weight[:hidden])
        small.fc1.bias.copy_(self.fc1.bias[:hidden])
        small.fc2.weight.copy_(self.fc2.weight[:, :hidden])
        small.fc2.bias.copy_(self.fc2.bias)
        return small


class Trunk(nn.Module):
    """Raw features [B, F] -> trunk features [B, dim] (what a route's trunk module is)."""

    def __init__(self, cfg: TabularConfig, hidden: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(cfg.mean))
        self.register_buffer("std", torch.tensor(cfg.std))
        self.embed = nn.Linear(len(cfg.features), cfg.dim)
        self.norms = nn.ModuleList(nn.LayerNorm(cfg.dim) for _ in range(cfg.depth))
        self.blocks = nn.ModuleList(Mlp(cfg.dim, hidden) for _ in range(cfg.depth))

    def forward(self, features: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        z = self.embed((features - self.mean) / self.std)
        for norm, block in zip(self.norms, self.blocks):
            z = z + block(norm(z), hidden)
        return z


class Path(nn.Module):
    """(trunk features, raw features) -> one task's probabilities (the features are unused:
    every family's path takes the batch too, for decoders that look at the input)."""

    def __init__(self, kind_name: str, norm: nn.LayerNorm, experts: nn.Module, head: Head) -> None:
        super().__init__()
        self.kind = kind(kind_name)
        self.norm, self.experts, self.head = norm, experts, head

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.kind.activate(self.head(tokens + self.experts(self.norm(tokens))))


class TabularRoutedModel(nn.Module):
    def __init__(self, cfg: TabularConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.task_index = {name: i for i, name in enumerate(cfg.task_names)}
        self.trunk = Trunk(cfg, cfg.hidden)
        self.norms = nn.ModuleDict({t.name: nn.LayerNorm(cfg.dim) for t in cfg.tasks})
        self.experts = TaskExperts(cfg.dim, cfg.num_experts, cfg.expert_hidden, len(cfg.tasks))
        self.heads = nn.ModuleDict(
            {t.name: Head(cfg.dim, t.decoder_hidden, t.num_classes) for t in cfg.tasks}
        )

    def hidden(self, route: Route) -> int:
        return round(self.cfg.hidden * route.width)

    def head_hidden(self, task: str, route: Route) -> int:
        return max(1, round(self.cfg.task(task).decoder_hidden * route.decoder_width))

    def forward(self, features: torch.Tensor, routes: dict[str, Route]) -> dict[str, torch.Tensor]:
        """Logits per task through the routes (sharing one trunk width), on the full weights:
        what training runs."""
        route = next(iter(routes.values()))
        z = self.trunk(features, self.hidden(route))
        out = {}
        for task, r in routes.items():
            t = self.task_index[task]
            y = z + self.experts(self.norms[task](z), t, r.experts)
            out[task] = self.heads[task](y, self.head_hidden(task, r))
        return out

    def experts_for(self, task: str, k: int) -> list[list[int]]:
        return [self.experts.experts_for(self.task_index[task], k)]

    @torch.no_grad()
    def extract_trunk(self, width: float) -> Trunk:
        hidden = round(self.cfg.hidden * width)
        small = Trunk(self.cfg, hidden)
        small.embed.load_state_dict(self.trunk.embed.state_dict())
        small.norms.load_state_dict(self.trunk.norms.state_dict())
        small.blocks = nn.ModuleList(block.slice(hidden) for block in self.trunk.blocks)
        return small.eval().requires_grad_(False)

    @torch.no_grad()
    def extract_path(self, task: str, route: Route) -> Path:
        route.check(self.cfg)
        experts = self.experts.slice(self.task_index[task], route.experts)
        head = self.heads[task].slice(self.head_hidden(task, route))
        norm = nn.LayerNorm(self.cfg.dim)
        norm.load_state_dict(self.norms[task].state_dict())
        return Path(self.cfg.task(task).kind, norm, experts, head).eval().requires_grad_(False)


# -- FLOPs: 2 per multiply-add of every linear, per row (norms and activations left out) ------
def trunk_flops(cfg: TabularConfig, route: Route) -> int:
    hidden = round(cfg.hidden * route.width)
    return 2 * len(cfg.features) * cfg.dim + cfg.depth * 2 * (2 * cfg.dim * hidden)


def path_flops(cfg: TabularConfig, task: str, route: Route) -> int:
    spec = cfg.task(task)
    head = max(1, round(spec.decoder_hidden * route.decoder_width))
    experts = 2 * (2 * cfg.dim * route.experts * cfg.expert_hidden)
    return experts + 2 * (cfg.dim * head + head * spec.num_classes)


def request_flops(cfg: TabularConfig, routes: dict[str, Route]) -> int:
    """The trunk once, then each task's path."""
    route = next(iter(routes.values()))
    return trunk_flops(cfg, route) + sum(path_flops(cfg, t, r) for t, r in routes.items())


def full_route(cfg: TabularConfig) -> Route:
    s = cfg.routes
    return Route(max(s.widths), max(s.experts), max(s.decoder_widths))


def all_routes(cfg: TabularConfig) -> list[Route]:
    s = cfg.routes
    return sorted(Route(w, k, d) for w in s.widths for k in s.experts for d in s.decoder_widths)
