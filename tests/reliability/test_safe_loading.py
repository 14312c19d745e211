"""Safe loading: a pickle in a model folder never runs; model names that climb out of the
repository never reach a file outside it; a checkpoint whose recorded base sha256 is wrong
fails with a clear error and the server goes on serving; an ONNX graph whose external data
lies outside its folder is refused before onnxruntime opens it."""

from __future__ import annotations

import http.client
import json
import pickle
import shutil
from pathlib import Path

import httpx
import onnx

from models.checkpoint import BUNDLED


class Sentinel:
    """Unpickling it runs a command that writes a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.path}",)


CLIMBS = [
    "..",
    "../outside",
    "%2e%2e",
    "%2e%2e%2foutside",
    "..%2foutside",
    "%2E%2E%2Foutside",
    "a%2Fb",
    "....//outside",
    "%252e%252e%252foutside",
    "outside%00",
]


def _send(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=b'{"inputs": []}', headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_pickles_never_run_and_names_never_leave_the_repository(tmp_path, serve, figure):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    shutil.copytree(BUNDLED / "mnist-scenes", repo / "scenes")
    shutil.copytree(BUNDLED / "mnist-scenes", outside)  # a valid model next to the repository
    sentinel = tmp_path / "pwned"
    for name in ("model.pt", "pytorch_model.bin", "weights.pkl", "model.ckpt"):
        (repo / "scenes" / name).write_bytes(pickle.dumps(Sentinel(sentinel)))
    bad_text = repo / "text"
    shutil.copytree(BUNDLED / "text-tasks", bad_text)
    config = json.loads((bad_text / "config.json").read_text())
    config["base"]["sha256"] = "0" * 64
    (bad_text / "config.json").write_text(json.dumps(config))
    server = serve(
        TRUNKLINE_MODEL_REPOSITORY=str(repo),
        TRUNKLINE_MODEL_CONTROL_MODE="explicit",
        TRUNKLINE_MODEL="",
    )
    url = server.url
    r = httpx.post(f"{url}/v2/repository/models/scenes/load", timeout=300)
    assert r.status_code == 200, r.text
    assert not sentinel.exists()
    statuses = {}
    for name in CLIMBS:
        for method, path in (
            ("POST", f"/v2/repository/models/{name}/load"),
            ("POST", f"/v2/repository/models/{name}/unload"),
            ("GET", f"/v2/models/{name}"),
            ("POST", f"/v2/models/{name}/infer"),
        ):
            status = _send(server.port, method, path)  # the path as written: httpx would resolve ".."
            statuses[status] = statuses.get(status, 0) + 1
            assert status in (400, 404, 405, 422), (method, path, status)
    index = httpx.post(f"{url}/v2/repository/index", timeout=30).json()
    assert {m["name"] for m in index} == {"scenes", "text"}  # nothing from outside
    r = httpx.post(f"{url}/v2/repository/models/text/load", timeout=300)
    assert r.status_code == 400 and "sha256" in r.json()["error"], r.text
    assert not sentinel.exists()
    figure("climbing names x routes, statuses", statuses)
    figure("wrong base sha256", r.json()["error"][:160])


def _graph_reading(out: Path, location: str) -> None:
    """A one-node ONNX graph whose weight is kept in the external file `location`."""
    weight = onnx.helper.make_tensor("w", onnx.TensorProto.FLOAT, [4], [0.0] * 4)
    weight.ClearField("float_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    image = onnx.helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, None)
    output = onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, None)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Add", ["image", "w"], ["output"])], "g", [image], [output], [weight]
    )
    out.write_bytes(onnx.helper.make_model(graph).SerializeToString())


def test_onnx_external_data_outside_the_graph_folder_is_refused(tmp_path, onnx_server, serve, figure):
    from server.backends.onnx import check_external_data

    # the model's graphs as the onnx_server fixture exported them, and a copy named "hostile"
    # (same files, same fingerprint) whose cached graphs read a file outside their folder
    (healthy,) = onnx_server.onnx_dir.glob("mnist-scenes-*")
    hostile = onnx_server.onnx_dir / healthy.name.replace("mnist-scenes", "hostile", 1)
    hostile.mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00" * 16)
    (hostile / "link.bin").symlink_to(secret)
    locations = {"climb": f"../../{tmp_path.name}/secret.bin", "absolute": str(secret), "symlink": "link.bin"}

    def plant(location: str) -> None:
        for graph in healthy.glob("*.onnx"):
            _graph_reading(hostile / graph.name, location)

    repo = tmp_path / "repo"
    shutil.copytree(BUNDLED / "mnist-scenes", repo / "hostile")
    plant(locations["climb"])
    server = serve(
        TRUNKLINE_BACKEND="onnxruntime",
        TRUNKLINE_ONNX_DIR=str(onnx_server.onnx_dir),
        TRUNKLINE_MODEL_REPOSITORY=str(repo),
        TRUNKLINE_MODEL_CONTROL_MODE="explicit",
    )
    errors = {}
    index = {m["name"]: m for m in httpx.post(f"{server.url}/v2/repository/index", timeout=30).json()}
    assert index["hostile"]["state"] == "UNAVAILABLE" and "outside" in index["hostile"]["reason"], index
    errors["climb (at start)"] = index["hostile"]["reason"]
    for kind in ("absolute", "symlink"):
        plant(locations[kind])
        r = httpx.post(f"{server.url}/v2/repository/models/hostile/load", timeout=300)
        assert r.status_code == 400 and "outside the graph's folder" in r.json()["error"], r.text
        errors[kind] = r.json()["error"]
    # the check refuses only what leaves the folder: data beside the graph is fine
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "weights.bin").write_bytes(b"\x00" * 16)
    _graph_reading(inside / "g.onnx", "weights.bin")
    check_external_data(inside / "g.onnx")
    figure("ONNX external data outside the folder", {k: v[-90:] for k, v in errors.items()})
