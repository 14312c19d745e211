"""Safe loading: a pickle in a model folder never runs; model names that climb out of the
repository never reach a file outside it; a checkpoint whose recorded base sha256 is wrong
fails with a clear error and the server goes on serving."""

from __future__ import annotations

import http.client
import json
import pickle
import shutil
from pathlib import Path

import httpx

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
