"""Checkpoints load without running code and reject damage with a clear message."""

import json
import shutil

import pytest
import torch

from models.checkpoint import BUNDLED, CheckpointError
from models.image import checkpoint


@pytest.fixture
def ckpt(tmp_path, tiny_model):
    model, tables = tiny_model
    return checkpoint.save(model, tables, "# tiny\n", tmp_path / "ckpt")


def test_round_trip(ckpt, tiny_model):
    model, tables = tiny_model
    loaded, loaded_tables = checkpoint.load(ckpt)
    assert loaded_tables == tables
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_no_pickle_anywhere(ckpt):
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "card.md",
        "config.json",
        "model.safetensors",
        "routes.json",
    ]
    assert not (ckpt / "model.safetensors").read_bytes().startswith(b"\x80")  # no pickle protocol header


def test_missing_file(ckpt):
    (ckpt / "routes.json").unlink()
    with pytest.raises(CheckpointError, match=r"missing \['routes.json'\]"):
        checkpoint.load(ckpt)


def test_corrupt_weights(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors is unreadable"):
        checkpoint.load(ckpt)


def test_config_not_matching_weights(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["dim"] = cfg["dim"] * 2
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape .* config.json implies"):
        checkpoint.load(ckpt)


def test_config_with_unknown_field(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["trust_remote_code"] = True
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"(?s)config.json is invalid.*trust_remote_code"):
        checkpoint.load(ckpt)


def test_routes_for_wrong_tasks(ckpt):
    tables = json.loads((ckpt / "routes.json").read_text())
    tables["bogus"] = tables.pop("count")
    (ckpt / "routes.json").write_text(json.dumps(tables))
    with pytest.raises(CheckpointError, match="one route table per task"):
        checkpoint.load(ckpt)


def test_route_outside_route_space(ckpt):
    tables = json.loads((ckpt / "routes.json").read_text())
    tables["count"][0]["id"] = "w33-k1-d25"
    (ckpt / "routes.json").write_text(json.dumps(tables))
    with pytest.raises(CheckpointError, match="outside the model's route space"):
        checkpoint.load(ckpt)


def test_unknown_name(tmp_path):
    with pytest.raises(CheckpointError, match="no bundled model of that name"):
        checkpoint.load(tmp_path / "nope")


def test_bundled_found_by_name(tmp_path):
    path = checkpoint.resolve("mnist-scenes")
    assert path == BUNDLED / "mnist-scenes"
    copy = shutil.copytree(path, tmp_path / "copy")
    assert checkpoint.resolve(copy) == copy
