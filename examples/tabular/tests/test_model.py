"""Step 7 of docs/adapters.md: the family's own checks, no server."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from trunkline_tabular import data
from trunkline_tabular.adapter import TabularAdapter
from trunkline_tabular.model import all_routes

from models.adapter import InputError, Tensor, installed, load_adapter
from models.kinds import kind
from models.routes import Route

CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "penguins"


@pytest.fixture(scope="module")
def adapter() -> TabularAdapter:
    return load_adapter(CHECKPOINT)


def test_the_family_is_installed_as_a_plug_in():
    family = installed()["tabular"]
    assert family.adapter is TabularAdapter and family.package == "trunkline-tabular" and family.error is None


def test_each_task_has_a_frontier_of_three_routes_or_more(adapter):
    for task, rows in adapter.route_rows.items():
        flops = [row["flops"] for row in rows]
        assert len(set(flops)) >= 3 and flops == sorted(flops), task
        assert rows[-1]["flops_fraction"] == 1.0


@pytest.mark.parametrize("route", all_routes(load_adapter(CHECKPOINT).cfg), ids=lambda r: r.id)
def test_flops_are_what_torch_counts(adapter, route):
    x = torch.from_numpy(adapter.example_batch(1))
    trunk, counted = adapter.trunk_module(route), 0
    with FlopCounterMode(display=False) as counter:
        tokens = trunk(x)
    counted += counter.get_total_flops()
    for task in adapter.tasks:
        with FlopCounterMode(display=False) as counter:
            adapter.path_module(task, route)(tokens, x)
        assert adapter.request_flops({task: route}) == counted + counter.get_total_flops()


@pytest.mark.parametrize("route", all_routes(load_adapter(CHECKPOINT).cfg), ids=lambda r: r.id)
def test_an_extracted_route_computes_what_the_full_network_does(adapter, route):
    x = torch.from_numpy(data.load("test").features)
    with torch.inference_mode():
        full = adapter.model(x, {t: route for t in adapter.tasks})
        tokens = adapter.trunk_module(route)(x)
        for task, spec in adapter.tasks.items():
            small = adapter.path_module(task, route)(tokens, x)
            torch.testing.assert_close(small, kind(spec.kind).activate(full[task]), atol=1e-5, rtol=1e-5)


def test_smaller_routes_hold_fewer_weights(adapter):
    sizes = [
        sum(p.numel() for p in adapter.path_module("sex", Route.parse(r["id"])).parameters())
        for r in adapter.route_rows["sex"]
    ]
    assert sizes[0] < sizes[-1]


def test_exported_graphs_equal_torch(adapter, tmp_path):
    x = adapter.example_batch(5)
    for route in (Route.parse(adapter.route_rows["island"][0]["id"]), Route(1.0, 4, 1.0)):
        trunk = ort.InferenceSession(str(adapter.export_trunk(route, tmp_path / f"t-{route.id}.onnx")))
        path = ort.InferenceSession(
            str(adapter.export_path("island", route, tmp_path / f"p-{route.id}.onnx"))
        )
        tokens = trunk.run(None, {"features": x})[0]
        # the exporter drops an input a graph never reads (a path's features): feed what it declares
        feeds = {"tokens": tokens, "features": x}
        got = path.run(None, {i.name: feeds[i.name] for i in path.get_inputs()})[0]
        with torch.inference_mode():
            t = torch.from_numpy(x)
            want = adapter.path_module("island", route)(adapter.trunk_module(route)(t), t).numpy()
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize(
    "value, says",
    [
        ([39.1, 18.7, 181], "a list of 4 numbers"),
        ([39.1, True, 181, 3750], "only numbers"),
        ([39.1, "18.7", 181, 3750], "only numbers"),
        ([39.1, float("nan"), 181, 3750], "finite"),
        ({"bill_length_mm": 39.1}, "missing"),
        ("39.1,18.7,181,3750", "a list of 4 numbers"),
    ],
)
def test_bad_instances_are_refused_naming_the_field(adapter, value, says):
    with pytest.raises(InputError, match=says) as e:
        adapter.decode_instance(value, "inputs.0.features")
    assert e.value.field == "inputs.0.features"


def test_instances_by_name_and_by_position_agree(adapter):
    named = dict(zip(adapter.cfg.features, [39.1, 18.7, 181, 3750]))
    np.testing.assert_array_equal(
        adapter.decode_instance(named, "f"), adapter.decode_instance([39.1, 18.7, 181, 3750], "f")
    )


def test_tensors_json_and_binary(adapter):
    x = np.array([[39.1, 18.7, 181, 3750], [46.5, 14.4, 217, 4900]], np.float32)
    by_json = adapter.decode_tensor(Tensor("features", "FP32", [2, 4], data=x.tolist()), "inputs.0")
    by_raw = adapter.decode_tensor(Tensor("features", "FP32", [2, 4], raw=x.tobytes()), "inputs.0")
    np.testing.assert_array_equal(by_json, by_raw)
    for tensor, field in (
        (Tensor("features", "INT64", [2, 4], data=x.tolist()), "inputs.0.datatype"),
        (Tensor("features", "FP32", [2, 3], data=x.tolist()), "inputs.0.shape"),
        (Tensor("features", "FP32", [2, 4], raw=x.tobytes()[:-4]), "inputs.0.parameters.binary_data_size"),
        (Tensor("features", "FP32", [2, 4], data=[1.0] * 7), "inputs.0.data"),
    ):
        with pytest.raises(InputError) as e:
            adapter.decode_tensor(tensor, "inputs.0")
        assert e.value.field == field


def test_trunkline_families_lists_three():
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "families", "--json"], capture_output=True, text=True, check=True
    )
    found = {f["family"]: f for f in json.loads(run.stdout)["families"]}
    assert {"image", "text", "tabular"} <= set(found)
    assert found["tabular"]["package"] == "trunkline-tabular" and found["tabular"]["error"] is None
