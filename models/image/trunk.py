"""The shared encoder: an input stem, then pre-LN transformer blocks, all slimmable by width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.image.config import ModelConfig
from models.layers import Block, RouteBlock, reshape_kept


class ConvStem(nn.Module):
    """Image to tokens: 3x3 convs with GELU between them, the last one projecting to `dim`.

    `strides` (one per conv) multiply to the token stride. Slimmable by its hidden
    channels, so that a narrow route pays a narrow stem.
    """

    def __init__(self, in_ch: int, channels: list[int], dim: int, strides: list[int], tokens: int) -> None:
        super().__init__()
        sizes = [in_ch, *channels, dim]
        n = len(sizes) - 1
        self.strides = list(strides)
        self.convs = nn.ModuleList(
            nn.Conv2d(sizes[i], sizes[i + 1], 3, stride=self.strides[i], padding=1) for i in range(n)
        )
        # tokens leave the stem normalised: conv outputs are tiny at init, and attention
        # would otherwise wash out the spatial signal in the residual stream
        self.norm = nn.LayerNorm(dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def channels(self, width: float) -> list[int]:
        """Channels after each conv at `width`; the last (the model width) never shrinks."""
        hidden = [max(1, round(c.out_channels * width)) for c in self.convs[:-1]]
        return [*hidden, self.convs[-1].out_channels]

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        last = len(self.convs) - 1
        if width == 1.0:  # a sliced stem: its own convs as they are
            for i, conv in enumerate(self.convs):
                x = F.gelu(conv(x)) if i < last else conv(x)
        else:
            c_in = self.convs[0].in_channels
            for i, (conv, c_out) in enumerate(zip(self.convs, self.channels(width))):
                x = F.conv2d(x, conv.weight[:c_out, :c_in], conv.bias[:c_out], self.strides[i], 1)
                x = F.gelu(x) if i < last else x
                c_in = c_out
        tokens = reshape_kept(x, (0, self.convs[-1].out_channels, -1)).transpose(1, 2)
        return self.norm(tokens) + self.pos

    def slice(self, width: float) -> ConvStem:
        sizes = self.channels(width)
        small = ConvStem(self.convs[0].in_channels, sizes[:-1], sizes[-1], self.strides, self.pos.shape[1])
        c_in = self.convs[0].in_channels
        with torch.no_grad():
            for conv, new, c_out in zip(self.convs, small.convs, sizes):
                new.weight.copy_(conv.weight[:c_out, :c_in])
                new.bias.copy_(conv.bias[:c_out])
                c_in = c_out
            small.pos.copy_(self.pos)
        small.norm.load_state_dict(self.norm.state_dict())
        return small

    @torch.no_grad()
    def reorder_(self) -> None:
        """Sort hidden channels by importance so that every width is a prefix."""
        for conv, nxt in zip(self.convs[:-1], self.convs[1:]):
            score = conv.weight.flatten(1).norm(dim=1) * nxt.weight.transpose(0, 1).flatten(1).norm(dim=1)
            order = score.argsort(descending=True)
            conv.weight.copy_(conv.weight[order])
            conv.bias.copy_(conv.bias[order])
            nxt.weight.copy_(nxt.weight[:, order])


STEMS = {"conv": ConvStem}


def build_stem(cfg: ModelConfig) -> nn.Module:
    if cfg.stem.kind not in STEMS:
        raise ValueError(f"unknown stem kind {cfg.stem.kind!r}; known: {sorted(STEMS)}")
    tokens = cfg.grid[0] * cfg.grid[1]
    return ConvStem(cfg.input.channels, list(cfg.stem.channels), cfg.dim, list(cfg.stem.strides), tokens)


class Trunk(nn.Module):
    """Stem + dense transformer blocks, shared by every task."""

    def __init__(self, stem: nn.Module, blocks: list[Block]) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> Trunk:
        blocks = [Block(cfg.dim, cfg.heads, cfg.head_dim, cfg.mlp_hidden) for _ in range(cfg.trunk_depth)]
        return cls(build_stem(cfg), blocks)

    def forward(self, x: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        heads, hidden = self.dims(width)
        x = self.stem(x, width)
        for block in self.blocks:
            x = block(x, heads, hidden)
        return x

    def dims(self, width: float) -> tuple[int, int]:
        attn, mlp = self.blocks[0].attn, self.blocks[0].mlp
        return round(attn.num_heads * width), round(mlp.fc1.out_features * width)

    def slice(self, width: float) -> RouteTrunk:
        heads, hidden = self.dims(width)
        return RouteTrunk(self.stem.slice(width), [b.slice(heads, hidden) for b in self.blocks])


class RouteTrunk(nn.Module):
    """A trunk at one width, as extraction hands it out: the stem, then fixed-size blocks."""

    def __init__(self, stem: nn.Module, blocks: list[RouteBlock]) -> None:
        super().__init__()
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x
