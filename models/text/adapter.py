"""The text family's model adapter: task-routed encoders on a pretrained BERT-class base
(models.text_model), served through `models.adapter.ModelAdapter`.

Inputs are UTF-8 texts: v1 `{"text": "..."}`, v2 a BYTES tensor [N] in JSON (strings) or in
the binary extension (each element a 4-byte little-endian length, then its bytes, as
Triton's client writes it). Texts are tokenized in the batch, on the compute thread; rows
of similar length run together so that padding stays small.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from models.adapter import InputError, ModelAdapter, Tensor
from models.checkpoint import CheckpointError, load_tables
from models.config import TaskSpec
from models.routes import Route
from models.text.model import (
    TextConfig,
    TextRoutedModel,
    check_base,
    full_flops,
    full_route,
    load_tokenizer,
    request_flops,
    trunk_flops,
)

# tokenizing runs on the compute thread beside torch: no thread pool of its own
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_PADDING = 0.2  # a length group pads at most this fraction of its real tokens


@dataclass
class Texts:
    """Tokenized texts: per instance its token ids ([CLS] ... [SEP]) and whether it was cut."""

    ids: list[np.ndarray] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


def load_checkpoint(path: Path) -> tuple[TextRoutedModel, dict[str, list[dict]]]:
    """(model in eval mode, route tables): the base (hash checked), then the stored deltas."""
    missing = [f for f in ("model.safetensors", "config.json", "routes.json") if not (path / f).is_file()]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {missing}")
    try:
        cfg = TextConfig.model_validate_json((path / "config.json").read_text())
    except ValidationError as e:
        raise CheckpointError(f"{path / 'config.json'} is invalid: {e}") from None
    tables = load_tables(path, cfg)
    try:
        delta = load_file(path / "model.safetensors")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path / 'model.safetensors'} is unreadable: {e}") from None
    base = load_file(check_base(cfg.base))
    model = TextRoutedModel(cfg)
    expected = model.delta_state()
    absent, extra = sorted(set(expected) - set(delta)), sorted(set(delta) - set(expected))
    if absent or extra:
        raise CheckpointError(
            f"{path / 'model.safetensors'} does not match config.json: "
            f"missing tensors {absent[:5]}, unexpected tensors {extra[:5]}"
        )
    for name, tensor in delta.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{path / 'model.safetensors'}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
    orders = {k: v for k, v in delta.items() if "_order_" in k}
    model.load_state_dict(orders, strict=False)  # the base is permuted by them
    model.load_base(base)
    model.load_state_dict(delta, strict=False)
    _load_added_tasks(model, tables, path / TASKS_DIR)
    return model.eval().requires_grad_(False), tables


TASKS_DIR = "tasks"  # tasks added to a trained model: NAME.json + NAME.safetensors each
REMOVED = "removed.json"  # tasks no longer offered


def _load_added_tasks(model: TextRoutedModel, tables: dict, folder: Path) -> None:
    if not folder.is_dir():
        return
    for meta in sorted(folder.glob("*.json")):
        if meta.name == REMOVED:
            continue
        try:
            info = json.loads(meta.read_text())
            spec = TaskSpec.model_validate(info["spec"])
            rows = info["routes"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{meta} is not an added task's description: {e}") from None
        if spec.name != meta.stem:
            raise CheckpointError(f"{meta} describes task {spec.name!r}; the file must be named after it")
        added = model.add_task(spec)
        weights = meta.with_suffix(".safetensors")
        try:
            state = load_file(weights)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{weights} is unreadable: {e}") from None
        try:
            added.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"{weights} does not match {meta.name}: {e}") from None
        tables[spec.name] = rows
    removed_file = folder / REMOVED
    if removed_file.is_file():
        removed = set(json.loads(removed_file.read_text()))
        model.without_tasks(removed)
        for name in removed:
            tables.pop(name, None)
    for name, rows in tables.items():
        for row in rows:
            try:
                Route.parse(row["id"]).check(model.cfg)
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{folder}: route table of task {name!r}: {e}") from None


class TextAdapter(ModelAdapter):
    adapter_api = 1
    family = "text"
    input_name = "text"
    instance_schema = {
        "type": "object",
        "properties": {"text": {"type": "string", "pattern": "\\S", "description": "UTF-8 text, not blank"}},
        "required": ["text"],
        "additionalProperties": False,
    }

    def __init__(self, path: Path, name: str, version: str) -> None:
        super().__init__(path, name, version)
        self.model, tables = load_checkpoint(path)
        self.cfg = self.model.cfg
        self.spec = self.cfg.input
        self._tasks = {t.name: t for t in self.cfg.tasks}
        self.tokenizer = load_tokenizer(self.cfg.base)
        self.cls, self.sep = self.tokenizer.token_to_id("[CLS]"), self.tokenizer.token_to_id("[SEP]")
        self._tables = self._published(tables)
        self._flops: dict[tuple, tuple[int, int]] = {}  # (routes, tokens) -> (route's, full route's)

    @property
    def tasks(self) -> dict[str, TaskSpec]:
        return self._tasks

    @property
    def route_rows(self) -> dict[str, list[dict]]:
        return self._tables

    def input_metadata(self) -> dict:
        return {
            "name": "text",
            "datatype": "BYTES",
            "formats": ["UTF-8 string"],
            "max_chars": self.spec.max_chars,
            "max_tokens": self.spec.max_tokens,
            "base": f"{self.cfg.base.package} {self.cfg.base.version}",
        }

    def tensor_inputs(self) -> list[dict]:
        return [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    def experts(self, task: str, k: int) -> list[list[int]]:
        return self.model.experts(task, k)

    # -- FLOPs: route tables at the reference length, receipts at the request's ---------
    def request_flops(self, routes: dict[str, Route]) -> int:
        return request_flops(self.cfg, routes, self.cfg.reference_tokens)

    def full_flops(self, tasks: list[str]) -> int:
        return full_flops(self.cfg, tasks, self.cfg.reference_tokens)

    def flops_fraction(self, routes: dict[str, Route]) -> float:
        """The largest fraction over token lengths (attention grows with the square of the
        length, the rest linearly): a route within a budget stays within it at any length."""
        lengths = sorted({2, 4, 8, 16, 32, 64, self.spec.max_tokens})
        tasks = list(routes)
        return max(request_flops(self.cfg, routes, n) / full_flops(self.cfg, tasks, n) for n in lengths)

    def trunk_flops(self, route: Route) -> int:
        return trunk_flops(self.cfg, route, self.cfg.reference_tokens)

    def row_flops(self, decoded: Texts, routes: dict[str, Route], trunk: bool = True) -> np.ndarray:
        route = next(iter(routes.values()))
        out = []
        for n in (len(ids) for ids in decoded.ids):
            flops = self._flops_at(routes, n)[0]
            out.append(flops - (0 if trunk else trunk_flops(self.cfg, route, n)))
        return np.asarray(out, np.float64)

    def row_full_flops(self, decoded: Texts, tasks: list[str]) -> np.ndarray:
        full = full_route(self.cfg)
        return np.asarray(
            [self._flops_at({t: full for t in tasks}, len(ids))[0] for ids in decoded.ids], np.float64
        )

    def labelled(self, split: str) -> dict[str, tuple[Texts, np.ndarray]]:
        """Validation: the rows route tables were built on (the recipe's `val_rows` first
        rows of the validation split); test: the whole held-out split (sha1 mod 5 == 0).
        Bundled tasks only: an added task's rows are in the CSV it was added from."""
        from models.text.data import LOADERS, load_task
        from models.text.train import TextRecipe

        if split not in ("validation", "test"):
            raise ValueError(f"unknown split {split!r}, expected 'validation' or 'test'")
        file = self.path / "recipe.json"
        recipe = json.loads(file.read_text()) if file.is_file() else {}
        rows = recipe.get("val_rows", TextRecipe.val_rows) if split == "validation" else None
        out = {}
        for name in self.tasks:
            if name not in LOADERS:  # an added task: its data is the user's CSV, not packaged
                continue
            data = load_task(name).split(split)
            texts, targets = data.texts[:rows], data.targets[:rows]
            out[name] = (self.tokenize(texts), np.asarray(targets))
        return out

    def take(self, decoded: Texts, rows: np.ndarray) -> Texts:
        return Texts([decoded.ids[i] for i in rows], [decoded.truncated[i] for i in rows])

    def _published(self, tables: dict[str, list[dict]]) -> dict[str, list[dict]]:
        """Route tables with the fraction budgets compare against (`flops_fraction`)."""
        return {
            task: [
                row | {"flops_fraction": round(self.flops_fraction({task: Route.parse(row["id"])}), 4)}
                for row in rows
            ]
            for task, rows in tables.items()
        }

    def describe(self, texts: Texts, routes: dict[str, Route]) -> dict:
        """The receipt's part that depends on the texts: tokens per instance, whether any was
        truncated, and FLOPs per sample (mean over instances) at their own token lengths."""
        lengths = [len(ids) for ids in texts.ids]
        counted = [self._flops_at(routes, n) for n in lengths]
        flops, full = np.mean([c[0] for c in counted]), np.mean([c[1] for c in counted])
        return {
            "tokens": lengths,
            "truncated": any(texts.truncated),
            "flops": int(flops),
            "flops_fraction": round(float(flops / full), 4),
        }

    def _flops_at(self, routes: dict[str, Route], tokens: int) -> tuple[int, int]:
        key = (tuple(routes.items()), tokens)
        counted = self._flops.get(key)
        if counted is None:
            if len(self._flops) > 4096:  # bounded: routes x lengths seen
                self._flops.clear()
            counted = self._flops[key] = (
                request_flops(self.cfg, routes, tokens),
                full_flops(self.cfg, list(routes), tokens),
            )
        return counted

    # -- decoding ---------------------------------------------------------------------
    def _check(self, text: str, field_name: str) -> str:
        if not text.strip():
            raise InputError(field_name, "must be a non-empty text")
        if len(text) > self.spec.max_chars:
            raise InputError(
                field_name, f"is {len(text)} characters long; the limit is {self.spec.max_chars}"
            )
        return text

    def tokenize(self, texts: list[str]) -> Texts:
        out, limit = Texts(), self.spec.max_tokens
        for enc in self.tokenizer.encode_batch(texts):
            ids = enc.ids
            cut = len(ids) > limit
            if cut:
                ids = ids[: limit - 1] + [self.sep]
            out.ids.append(np.asarray(ids, np.int64))
            out.truncated.append(cut)
        return out

    def decode_instance(self, value: object, field: str) -> Texts:
        if not isinstance(value, str):
            raise InputError(field, f"must be a string (UTF-8 text), got {type(value).__name__}")
        return self.tokenize([self._check(value, field)])

    def decode_tensor(self, tensor: Tensor, field: str) -> Texts:
        """BYTES [N] (or [N, 1]): JSON strings, or the binary extension's length-prefixed elements."""
        if tensor.datatype != "BYTES":
            raise InputError(f"{field}.datatype", f"text datatype must be BYTES, got {tensor.datatype}")
        shape = list(tensor.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
            raise InputError(f"{field}.shape", f"text shape must be [N] or [N, 1], got {tensor.shape}")
        n = shape[0]
        if tensor.raw is not None:
            texts = [
                self._utf8(b, f"{field}.{i}") for i, b in enumerate(_length_prefixed(tensor.raw, n, field))
            ]
        else:
            data = tensor.data
            if isinstance(data, list) and len(data) == n and all(isinstance(x, list) for x in data):
                data = [x[0] if len(x) == 1 else x for x in data]  # [[s], [s]] for shape [N, 1]
            if not isinstance(data, list) or len(data) != n:
                got = len(data) if isinstance(data, list) else type(data).__name__
                raise InputError(
                    f"{field}.data", f"must hold {n} strings for shape {tensor.shape}, got {got}"
                )
            bad = next((i for i, x in enumerate(data) if not isinstance(x, str)), None)
            if bad is not None:
                raise InputError(f"{field}.data.{bad}", f"must be a string, got {type(data[bad]).__name__}")
            texts = data
        return self.tokenize([self._check(t, f"{field}.data.{i}") for i, t in enumerate(texts)])

    def _utf8(self, raw: bytes, field: str) -> str:
        try:
            return bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(field, f"is not valid UTF-8 (byte {e.start})") from None

    def join(self, decoded: list[Texts]) -> Texts:
        out = Texts()
        for t in decoded:
            out.ids += t.ids
            out.truncated += t.truncated
        return out

    def batches(self, inputs: list[Texts]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Rows grouped by length, longest first; a group grows while its padding stays
        within MAX_PADDING of its real tokens. Each group is one int64 batch [B, 2, T]."""
        rows = [ids for t in inputs for ids in t.ids]
        lengths = np.array([len(r) for r in rows])
        order = np.argsort(-lengths, kind="stable")
        groups, current, real = [], [], 0
        for i in order:
            if current and lengths[current[0]] * (len(current) + 1) > (1 + MAX_PADDING) * (real + lengths[i]):
                groups.append(current)
                current, real = [], 0
            current.append(i)
            real += lengths[i]
        groups.append(current)
        return [(np.asarray(g), pad([rows[i] for i in g])) for g in groups]

    def stack(self, inputs: list[Texts]) -> np.ndarray:
        return pad([ids for t in inputs for ids in t.ids])

    def example_batch(self, n: int) -> np.ndarray:
        rng = np.random.default_rng(0)
        T = self.cfg.reference_tokens
        ids = rng.integers(1000, self.cfg.vocab_size, (n, T))
        ids[:, 0], ids[:, -1] = self.cls, self.sep
        return pad(list(ids))

    # -- what backends run ------------------------------------------------------------
    def trunk_module(self, route: Route) -> nn.Module:
        return self.model.extract_trunk(route)

    def path_module(self, task: str, route: Route) -> nn.Module:
        return self.model.extract_path(task, route)

    def export_trunk(self, route: Route, out: Path) -> Path:
        batch = torch.from_numpy(self.example_batch(2))
        return _export(
            self.model.extract_trunk(route),
            (batch,),
            ["text"],
            out,
            {0: "batch", 1: "seq"},
            shared={"module.embeddings.word.weight": "word-embeddings.bin"},
        )

    def export_path(self, task: str, route: Route, out: Path) -> Path:
        batch = torch.from_numpy(self.example_batch(2))
        tokens = self.model.extract_trunk(route)(batch)
        return _export(
            self.model.extract_path(task, route), (tokens, batch), ["tokens", "text"], out, {0: "batch"}
        )


def pad(rows: list[np.ndarray]) -> np.ndarray:
    """Token id rows -> int64 [B, 2, T]: ids, then the attention mask (1 real, 0 padding)."""
    T = max(len(r) for r in rows)
    batch = np.zeros((len(rows), 2, T), np.int64)
    for i, r in enumerate(rows):
        batch[i, 0, : len(r)] = r
        batch[i, 1, : len(r)] = 1
    return batch


def _length_prefixed(raw: bytes | memoryview, n: int, field: str) -> list[memoryview]:
    """The binary extension's BYTES elements: each a 4-byte little-endian length, then the bytes."""
    view, out, offset = memoryview(raw), [], 0
    for i in range(n):
        if offset + 4 > len(view):
            raise InputError(
                f"{field}.parameters.binary_data_size",
                f"binary data ends before element {i} of {n} "
                "(each element: a 4-byte little-endian length, then its bytes)",
            )
        (size,) = struct.unpack_from("<I", view, offset)
        offset += 4
        if offset + size > len(view):
            raise InputError(
                f"{field}.parameters.binary_data_size",
                f"element {i} says {size} bytes; only {len(view) - offset} remain",
            )
        out.append(view[offset : offset + size])
        offset += size
    if offset != len(view):
        raise InputError(
            f"{field}.parameters.binary_data_size",
            f"{len(view) - offset} bytes left after the {n} elements of shape [{n}]",
        )
    return out


def _export(
    module: nn.Module, args: tuple, names: list[str], out: Path, output: dict, shared: dict | None = None
) -> Path:
    """ONNX with dynamic batch and sequence axes (the text batch is [B, 2, T], tokens [B, T, D])."""
    from models.export import export_graph

    axes = tuple({0: "batch", 1: "seq"} if n == "tokens" else {0: "batch", 2: "seq"} for n in names)
    return export_graph(module, args, names, out, axes, output, shared)
