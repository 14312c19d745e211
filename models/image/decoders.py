"""Slimmable task decoders: a pooled MLP head for (multi-label) classification and a
per-token pixel-shuffle head for dense outputs. Slimmable by hidden width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.config import TaskSpec
from models.image.config import ModelConfig
from models.layers import _copy_linear, reorder_hidden_


class _HiddenMlpHead(nn.Module):
    """Shared machinery: LayerNorm, fc1 (slimmable hidden), GELU, fc2."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def hidden_for(self, width: float) -> int:
        return max(1, round(self.fc1.out_features * width))

    def _mlp(self, x: torch.Tensor, width: float) -> torch.Tensor:
        m = self.hidden_for(width)
        h = F.gelu(F.linear(x, self.fc1.weight[:m], self.fc1.bias[:m]))
        return F.linear(h, self.fc2.weight[:, :m], self.fc2.bias)

    def _copy_into(self, small: _HiddenMlpHead, width: float) -> _HiddenMlpHead:
        m = self.hidden_for(width)
        small.norm.load_state_dict(self.norm.state_dict())
        small.fc1 = _copy_linear(self.fc1.weight[:m], self.fc1.bias[:m])
        small.fc2 = _copy_linear(self.fc2.weight[:, :m], self.fc2.bias)
        return small

    def reorder_(self) -> None:
        reorder_hidden_(self.fc1, self.fc2)


class ClassificationHead(_HiddenMlpHead):
    """Mean-pooled tokens -> logits [B, C]. Serves single- and multi-label tasks."""

    def __init__(self, dim: int, hidden: int, num_classes: int) -> None:
        super().__init__(dim, hidden, num_classes)

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, width: float = 1.0):
        return self._mlp(self.norm(tokens).mean(dim=1), width)

    @classmethod
    def build(cls, cfg: ModelConfig, task: TaskSpec) -> ClassificationHead:
        return cls(cfg.dim, task.decoder_hidden, task.num_classes)

    @staticmethod
    def flops(cfg: ModelConfig, task: TaskSpec, hidden: int) -> int:
        """Multiply-adds per sample of the head at `hidden` neurons (pooling left out)."""
        return cfg.dim * hidden + hidden * task.num_classes

    def slice(self, width: float) -> ClassificationHead:
        small = ClassificationHead(self.fc1.in_features, self.hidden_for(width), self.fc2.out_features)
        return self._copy_into(small, width)


class DenseHead(_HiddenMlpHead):
    """Tokens -> per-pixel logits [B, C, H, W].

    Each token predicts its stride x stride patch (pixel shuffle); a per-class affine term
    of the raw pixel intensity is added, a one-pixel skip connection that lets the head
    draw exact digit outlines while the tokens say which digit it is.
    """

    def __init__(self, dim: int, hidden: int, num_classes: int, stride: int, grid: tuple[int, int]):
        super().__init__(dim, hidden, num_classes + num_classes * stride * stride)
        self.num_classes, self.stride, self.grid = num_classes, stride, grid
        # Prior for class 0 (background): dark pixels are background, bright ones are not.
        self.pixel_scale = nn.Parameter(torch.zeros(num_classes))
        self.pixel_bias = nn.Parameter(torch.zeros(num_classes))
        with torch.no_grad():
            self.pixel_scale[0], self.pixel_bias[0] = -10.0, 5.0

    def forward(self, tokens: torch.Tensor, image: torch.Tensor, width: float = 1.0):
        B = tokens.shape[0]
        (gh, gw), s, C = self.grid, self.stride, self.num_classes
        x = self._mlp(self.norm(tokens), width).reshape(B, gh, gw, C + C * s * s)
        # a per-token class score shared by its whole patch, plus a per-pixel refinement:
        # summed in the MLP's own layout [B, gh, gw, C, s, s], then one copy to [B, C, H, W]
        patch = (x[..., :C] + self.pixel_bias)[..., None, None]
        fine = x[..., C:].reshape(B, gh, gw, C, s, s)
        logits = (fine + patch).permute(0, 3, 1, 4, 2, 5).reshape(B, C, gh * s, gw * s)
        return torch.addcmul(logits, image, self.pixel_scale[:, None, None])

    @classmethod
    def build(cls, cfg: ModelConfig, task: TaskSpec) -> DenseHead:
        return cls(cfg.dim, task.decoder_hidden, task.num_classes, cfg.stem.stride, cfg.grid)

    @staticmethod
    def flops(cfg: ModelConfig, task: TaskSpec, hidden: int) -> int:
        N, s2 = cfg.grid[0] * cfg.grid[1], cfg.stem.stride**2
        return N * (cfg.dim * hidden + hidden * task.num_classes * (1 + s2))

    def slice(self, width: float) -> DenseHead:
        small = DenseHead(
            self.fc1.in_features, self.hidden_for(width), self.num_classes, self.stride, self.grid
        )
        with torch.no_grad():
            small.pixel_scale.copy_(self.pixel_scale)
            small.pixel_bias.copy_(self.pixel_bias)
        return self._copy_into(small, width)


# the head class of each task kind this (image) family serves
HEADS: dict[str, type[_HiddenMlpHead]] = {
    "classification": ClassificationHead,
    "multilabel": ClassificationHead,
    "dense": DenseHead,
}


def build_decoder(cfg: ModelConfig, task: TaskSpec) -> nn.Module:
    return HEADS[task.kind].build(cfg, task)
