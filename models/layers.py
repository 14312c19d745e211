"""Slimmable building blocks.

Every layer holds its full weights, runs at a narrower width by using a prefix of its
channels (heads, neurons, experts), and hands out that prefix via `slice()` as a plain
fixed-size layer (`RouteBlock`, `FusedAttention`) with what can be folded into its weights
folded: q, k and v as one GEMM, the attention scale in q, LayerScale in the projections.
A sliced layer equals the full layer run at the sliced width (to float rounding), which is
what `extract()` relies on.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn


def _copy_linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


@torch.no_grad()
def reorder_hidden_(fc1: nn.Linear, fc2: nn.Linear) -> None:
    """Sort the hidden units between fc1 and fc2 by importance, |row j of fc1| * |column j
    of fc2|, so that every narrower hidden width is a prefix."""
    order = (fc1.weight.norm(dim=1) * fc2.weight.norm(dim=0)).argsort(descending=True)
    fc1.weight.copy_(fc1.weight[order])
    fc1.bias.copy_(fc1.bias[order])
    fc2.weight.copy_(fc2.weight[:, order])


class Attention(nn.Module):
    """Multi-head self-attention; slimmable by number of heads."""

    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.proj = nn.Linear(inner, dim)

    def _qkv_params(self, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        if heads == self.num_heads:
            return self.qkv.weight, self.qkv.bias
        inner, n = self.num_heads * self.head_dim, heads * self.head_dim
        rows = [slice(i * inner, i * inner + n) for i in range(3)]
        weight = torch.cat([self.qkv.weight[r] for r in rows])
        bias = torch.cat([self.qkv.bias[r] for r in rows])
        return weight, bias

    def forward(self, x: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        heads = heads or self.num_heads
        B, N, _ = x.shape
        n = heads * self.head_dim
        weight, bias = self._qkv_params(heads)
        qkv = F.linear(x, weight, bias).reshape(B, N, 3, heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, n)
        return F.linear(out, self.proj.weight[:, :n], self.proj.bias)

    def fused(self, heads: int, scale: torch.Tensor | None = None) -> FusedAttention:
        """The first `heads` heads as a FusedAttention, its output multiplied by `scale`."""
        weight, bias = self._qkv_params(heads)
        n = heads * self.head_dim
        out_weight, out_bias = _scaled(self.proj.weight[:, :n], self.proj.bias, scale)
        return FusedAttention.of(weight, bias, out_weight, out_bias, heads)

    @torch.no_grad()
    def reorder_(self) -> None:
        """Sort heads by importance so that every head count is a prefix."""
        H, d = self.num_heads, self.head_dim
        w = self.qkv.weight.view(3, H, d, -1)
        score = w.pow(2).sum(dim=(0, 2, 3)).sqrt()
        score = score * self.proj.weight.view(-1, H, d).pow(2).sum(dim=(0, 2)).sqrt()
        order = score.argsort(descending=True)
        self.qkv.weight.copy_(w[:, order].reshape_as(self.qkv.weight))
        self.qkv.bias.copy_(self.qkv.bias.view(3, H, d)[:, order].reshape(-1))
        proj = self.proj.weight.view(-1, H, d)[:, order]
        self.proj.weight.copy_(proj.reshape_as(self.proj.weight))


class Mlp(nn.Module):
    """Two-layer GELU MLP; slimmable by number of hidden neurons."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
        if hidden is None:
            return self.fc2(F.gelu(self.fc1(x)))
        m = hidden
        h = F.gelu(F.linear(x, self.fc1.weight[:m], self.fc1.bias[:m]))
        return F.linear(h, self.fc2.weight[:, :m], self.fc2.bias)

    def slice(self, hidden: int, scale: torch.Tensor | None = None) -> Mlp:
        """The first `hidden` neurons as a plain Mlp, its output multiplied by `scale`."""
        small = Mlp(self.fc1.in_features, hidden)
        small.fc1 = _copy_linear(self.fc1.weight[:hidden], self.fc1.bias[:hidden])
        small.fc2 = _copy_linear(*_scaled(self.fc2.weight[:, :hidden], self.fc2.bias, scale))
        return small

    def reorder_(self) -> None:
        reorder_hidden_(self.fc1, self.fc2)


class TaskExperts(nn.Module):
    """Mixture-of-experts MLP with one gate per task.

    Routing depends on (task, k) only, never on the tokens: a task's path is the k experts
    its gate ranks highest, weighted by the gate's softmax over those k. So the path is
    one dense MLP, the experts' hidden layers concatenated with the gate folded into fc2.
    """

    def __init__(self, dim: int, num_experts: int, hidden: int, num_tasks: int) -> None:
        super().__init__()
        self.num_experts, self.hidden = num_experts, hidden
        bound1, bound2 = 1 / math.sqrt(dim), 1 / math.sqrt(hidden)
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, dim).uniform_(-bound1, bound1))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(num_experts, dim, hidden).uniform_(-bound2, bound2))
        self.b2 = nn.Parameter(torch.zeros(num_experts, dim))
        self.gate = nn.Parameter(torch.randn(num_tasks, num_experts))

    def experts_for(self, task: int, k: int) -> list[int]:
        return self.gate[task].topk(k).indices.tolist()

    def merged(self, task: int, k: int) -> tuple[torch.Tensor, ...]:
        """The task's k-expert path as one MLP: (fc1.w, fc1.b, fc2.w, fc2.b)."""
        idx = self.gate[task].topk(k).indices
        g = self.gate[task, idx].softmax(dim=0)
        D = self.w1.shape[2]
        w1 = self.w1[idx].reshape(k * self.hidden, D)
        b1 = self.b1[idx].reshape(-1)
        w2 = (self.w2[idx] * g[:, None, None]).permute(1, 0, 2).reshape(D, k * self.hidden)
        b2 = (self.b2[idx] * g[:, None]).sum(dim=0)
        return w1, b1, w2, b2

    def forward(self, x: torch.Tensor, task: int, k: int) -> torch.Tensor:
        w1, b1, w2, b2 = self.merged(task, k)
        return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)

    def slice(self, task: int, k: int, scale: torch.Tensor | None = None) -> Mlp:
        w1, b1, w2, b2 = self.merged(task, k)
        small = Mlp(self.w1.shape[2], k * self.hidden)
        small.fc1 = _copy_linear(w1, b1)
        small.fc2 = _copy_linear(*_scaled(w2, b2, scale))
        return small

    def balance_loss(self) -> torch.Tensor:
        """Low entropy per task (few experts each), high entropy of the mean (all used)."""
        p = self.gate.softmax(dim=-1)
        per_task = -(p * p.clamp_min(1e-9).log()).sum(-1).mean()
        mean = p.mean(0)
        overall = -(mean * mean.clamp_min(1e-9).log()).sum()
        return per_task - overall


LAYER_SCALE = 0.1  # residual branches start small (CaiT's LayerScale): the stem's features lead early


class Block(nn.Module):
    """Pre-LN transformer block with a dense MLP; slimmable by heads and neurons."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, mlp_hidden)
        self.gamma1 = nn.Parameter(torch.full((dim,), LAYER_SCALE))
        self.gamma2 = nn.Parameter(torch.full((dim,), LAYER_SCALE))

    def forward(self, x: torch.Tensor, heads: int | None = None, hidden: int | None = None):
        x = x + self.gamma1 * self.attn(self.norm1(x), heads)
        return x + self.gamma2 * self.mlp(self.norm2(x), hidden)

    @torch.no_grad()
    def slice(self, heads: int, hidden: int) -> RouteBlock:
        attn = self.attn.fused(heads, self.gamma1)
        return RouteBlock(self.norm1, attn, self.norm2, self.mlp.slice(hidden, self.gamma2))


class MoeBlock(nn.Module):
    """Pre-LN transformer block whose MLP is a task-gated mixture of experts."""

    def __init__(
        self, dim: int, heads: int, head_dim: int, num_experts: int, hidden: int, tasks: int
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.experts = TaskExperts(dim, num_experts, hidden, tasks)
        self.gamma1 = nn.Parameter(torch.full((dim,), LAYER_SCALE))
        self.gamma2 = nn.Parameter(torch.full((dim,), LAYER_SCALE))

    def forward(self, x: torch.Tensor, task: int, k: int, heads: int | None = None):
        x = x + self.gamma1 * self.attn(self.norm1(x), heads)
        return x + self.gamma2 * self.experts(self.norm2(x), task, k)

    @torch.no_grad()
    def slice(self, task: int, k: int, heads: int) -> RouteBlock:
        attn = self.attn.fused(heads, self.gamma1)
        return RouteBlock(self.norm1, attn, self.norm2, self.experts.slice(task, k, self.gamma2))


def _scaled(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None):
    """A linear layer's (weight, bias) with its output multiplied by `scale` (per channel)."""
    if scale is None:
        return weight, bias
    return weight * scale[:, None], bias * scale


class _ReshapeKept(torch.autograd.Function):
    """ONNX Reshape's own semantics, where a 0 keeps the input's dim: exported as one Reshape of
    a constant shape. torch's reshape of a dim it reads at run time exports as Shape, Gather,
    Slice, Concat and Reshape, ~7 us each in onnxruntime at batch 1 here."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])

    @staticmethod
    def symbolic(g, x, shape):
        return g.op("Reshape", x, g.op("Constant", value_t=torch.tensor(shape, dtype=torch.int64)))


def reshape_kept(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """`x` reshaped to `shape`, a 0 keeping x's dim at that index (ONNX Reshape)."""
    if torch.onnx.is_in_onnx_export():
        return _ReshapeKept.apply(x, shape)
    return x.reshape([x.shape[i] if s == 0 else s for i, s in enumerate(shape)])


class FusedAttention(nn.Module):
    """Self-attention at fixed heads, as extraction hands it to the backends: q, k and v as one
    GEMM whose q rows carry the 1/sqrt(head_dim) scale, heads split without a squeeze, and no
    read of a tensor's shape (the ONNX exporter turns those into runtime shape arithmetic).
    `bias`: an additive attention mask broadcast over heads and queries ([B, 1, 1, T]), or None.
    """

    def __init__(self, qkv: nn.Linear, out: nn.Linear, heads: int) -> None:
        super().__init__()
        self.qkv, self.out, self.heads = qkv, out, heads
        self.head_dim = qkv.out_features // (3 * heads)

    @classmethod
    @torch.no_grad()
    def of(
        cls,
        qkv_weight: torch.Tensor,
        qkv_bias: torch.Tensor,
        out_weight: torch.Tensor,
        out_bias: torch.Tensor,
        heads: int,
    ) -> FusedAttention:
        """From a q|k|v projection stacked by rows (unscaled) and an output projection."""
        n = qkv_weight.shape[0] // 3
        scale = torch.ones(3 * n)
        scale[:n] = (n // heads) ** -0.5
        qkv = _copy_linear(*_scaled(qkv_weight, qkv_bias, scale))
        return cls(qkv, _copy_linear(out_weight, out_bias), heads)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`bias`: the additive mask ([B, 1, 1, T]) that `mask` ([B, T], 1 real) makes, or None;
        eager adds the bias, an ONNX export hands the mask to onnxruntime's fused Attention."""
        if torch.onnx.is_in_onnx_export():
            return self.out(_OrtAttention.apply(x, self.qkv.weight, self.qkv.bias, mask, self.heads))
        return self.out(self.attend(self.qkv(x), bias))

    def attend(self, qkv: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """[B, N, 3 * heads * head_dim] projections -> [B, N, heads * head_dim] attention."""
        qkv = reshape_kept(qkv, (0, -1, 3 * self.heads, self.head_dim)).transpose(1, 2)
        q, k, v = qkv.split(self.heads, dim=1)  # [B, heads, N, head_dim] each
        scores = q @ k.transpose(-1, -2)
        if bias is not None:
            scores = scores + bias
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2)
        return reshape_kept(out, (0, -1, self.heads * self.head_dim))


class _OrtAttention(torch.autograd.Function):
    """Exported as onnxruntime's Attention (com.microsoft): the q|k|v GEMM, the split into heads,
    the masked softmax attention and the merge of heads in one node, where the standard ops take
    ~12 nodes per layer (~7 us each at batch 1 here). The scale is in q's weights already."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, heads: int) -> torch.Tensor:
        n = weight.shape[0] // 3
        shape = (*x.shape[:-1], n)
        return x.new_zeros(shape)  # traced for its shape only: export runs no eager attention

    @staticmethod
    def symbolic(g, x, weight, bias, mask, heads: int):
        inputs = [x, g.op("Transpose", weight, perm_i=[1, 0]), bias]
        if not _is_none(mask):
            inputs.append(g.op("Cast", mask, to_i=6))  # int32 [B, T]: 1 attends, 0 is padding
        out = g.op("com.microsoft::Attention", *inputs, num_heads_i=heads, scale_f=1.0)
        sizes = x.type().varyingSizes()  # [B, N, heads * head_dim]; None where dynamic
        return out.setType(x.type().with_sizes([*sizes[:-1], weight.type().sizes()[0] // 3]))


def _is_none(value) -> bool:
    return value is None or (hasattr(value, "node") and value.node().mustBeNone())


class RouteBlock(nn.Module):
    """A pre-LN transformer block at fixed dims (LayerScale folded into its projections):
    what a Block or MoeBlock slices into."""

    def __init__(self, norm1: nn.LayerNorm, attn: FusedAttention, norm2: nn.LayerNorm, mlp: Mlp) -> None:
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = copy.deepcopy(norm1), attn, copy.deepcopy(norm2), mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))
