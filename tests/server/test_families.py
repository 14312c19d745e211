"""Families are plug-ins: a family built for another adapter API, a plug-in that fails at
import and a checkpoint whose family is not installed each give a clear error, in
`trunkline families` and at load, and the other models still serve."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from models.checkpoint import BUNDLED
from tests.conftest import RunningServer

PLUGINS = {  # family -> the module its entry point names
    "oldapi": "class Adapter(ModelAdapter):\n    adapter_api = 0\n    family = 'oldapi'\n",
    "broken": "raise ImportError('the plug-in needs libfoo')\n",
}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> Path:
    """A folder on the path holding two installed distributions (dist-info with entry points)."""
    site = tmp_path_factory.mktemp("site")
    for name, body in PLUGINS.items():
        (site / f"fam_{name}.py").write_text("from models.adapter import ModelAdapter\n" + body)
        info = site / f"fam_{name}-1.2.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fam-{name}\nVersion: 1.2\n")
        (info / "entry_points.txt").write_text(f"[trunkline.families]\n{name} = fam_{name}:Adapter\n")
    return site


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    """mnist-scenes beside three checkpoints whose families cannot serve."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(BUNDLED / "mnist-scenes", repo / "mnist-scenes")
    for name, family in (("old", "oldapi"), ("bad", "broken"), ("missing", "audio")):
        (repo / name).mkdir()
        (repo / name / "config.json").write_text(json.dumps({"name": name, "family": family}))
    return repo


def env(plugins: Path) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugins), root])}


def test_trunkline_families_reports_each_plug_in(plugins):
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "families", "--json"],
        env=env(plugins),
        capture_output=True,
        text=True,
        check=True,
    )
    found = {f["family"]: f for f in json.loads(run.stdout)["families"]}
    assert {"image", "text", "oldapi", "broken"} <= set(found)
    assert found["image"]["package"] == "trunkline" and found["image"]["error"] is None
    assert found["oldapi"]["package"] == "fam-oldapi" and found["oldapi"]["version"] == "1.2"
    assert "adapter API 0; this server has adapter API 1" in found["oldapi"]["error"]
    assert (
        "failed to import fam_broken:Adapter: ImportError: the plug-in needs libfoo"
        in found["broken"]["error"]
    )
    table = subprocess.run(
        [sys.executable, "-m", "server.cli", "families"], env=env(plugins), capture_output=True, text=True
    )
    assert table.returncode == 0 and "fam-broken 1.2" in table.stdout and "error:" in table.stdout


def test_the_other_models_serve(plugins, repository):
    server = RunningServer(
        "torch", TRUNKLINE_MODEL_REPOSITORY=str(repository), PYTHONPATH=env(plugins)["PYTHONPATH"]
    )
    try:
        server.wait_ready()
        models = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert models["mnist-scenes"]["state"] == "READY"
        reasons = {
            name: models[name]["state"] + " " + models[name].get("reason", "")
            for name in ("old", "bad", "missing")
        }
        assert (
            "UNAVAILABLE" in reasons["old"]
            and "adapter API 0; this server has adapter API 1" in reasons["old"]
        )
        assert "(fam-broken 1.2) cannot serve: failed to import" in reasons["bad"]
        assert "model family 'audio' is not installed" in reasons["missing"]
        assert "install the Python package that provides it" in reasons["missing"]
        image = [[0] * 56] * 56
        r = httpx.post(
            f"{server.url}/v1/predict",
            json={"model": "mnist-scenes", "task": "count", "inputs": [{"image": image}]},
        )
        assert r.status_code == 200, r.text
    finally:
        server.stop()
