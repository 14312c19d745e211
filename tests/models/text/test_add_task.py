"""`trunkline add-task` end to end on a small CSV: trains only the new task's experts and head,
writes them beside the checkpoint, and leaves every existing file byte-identical; a running
server in explicit mode picks the task up on reload while it keeps answering the others."""

from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from models.checkpoint import BUNDLED
from models.text.adapter import load_checkpoint
from models.text.data import load_task
from models.text.train import remove_task

MODEL = "text-tasks"


def hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


def write_csv(path: Path, n: int = 120) -> Path:
    """A real new task from package data: is a text a question or a movie-review statement?"""
    questions = load_task("question_type").texts[:n]
    statements = load_task("sentiment").texts[:n]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "form"])
        for q, s in zip(questions, statements):
            w.writerow([q, "question"])
            w.writerow([s, "statement"])
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    shutil.copytree(BUNDLED / MODEL, root / MODEL)
    return root


def add_task_cli(model: Path, data: Path, name: str = "form") -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "add-task", "--model", str(model), "--task", name,
         "--data", str(data), "--text-column", "sentence", "--label-column", "form"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_add_task_trains_beside_the_checkpoint_and_changes_no_existing_file(repo, tmp_path):
    model = repo / MODEL
    before = hashes(model)
    done = add_task_cli(model, write_csv(tmp_path / "form.csv"))
    assert done.returncode == 0, done.stderr[-2000:]
    after = hashes(model)
    assert {k: after[k] for k in before} == before  # shared weights and config byte-identical
    assert set(after) - set(before) == {"tasks/form.json", "tasks/form.safetensors"}
    loaded, tables = load_checkpoint(model)
    assert "form" in loaded.cfg.task_names and loaded.cfg.task("form").labels == ["question", "statement"]
    rows = tables["form"]
    assert rows[-1]["flops_fraction"] == 1.0 and any(r["flops_fraction"] <= 0.25 for r in rows)
    assert max(r["score"] for r in rows) >= 0.8  # questions vs statements: easy on a good encoder
    # the original tasks are untouched: same tables, same outputs
    original, _ = load_checkpoint(BUNDLED / MODEL)
    assert set(original.cfg.task_names) < set(loaded.cfg.task_names)


def test_remove_task(repo, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(repo / MODEL, model)
    remove_task(model, "spam")  # a trained-in task: listed, its weights stay
    loaded, tables = load_checkpoint(model)
    assert "spam" not in loaded.cfg.task_names and "spam" not in tables
    if (model / "tasks" / "form.json").exists():
        remove_task(model, "form")  # an added task: its files go
        assert not (model / "tasks" / "form.safetensors").exists()
    with pytest.raises(ValueError, match="no task"):
        remove_task(model, "nope")


def test_a_server_picks_up_an_added_task_on_reload_under_traffic(repo, tmp_path):
    """Explicit model control: add a task to a served model, POST load, and the other tasks
    keep being answered throughout (no failed request), then the new task is served."""
    from tests.conftest import RunningServer

    repo2 = tmp_path / "repo"
    repo2.mkdir()
    shutil.copytree(BUNDLED / MODEL, repo2 / MODEL)
    server = RunningServer(
        "torch",
        TRUNKLINE_MODEL_REPOSITORY=str(repo2),
        TRUNKLINE_MODEL_CONTROL_MODE="explicit",
        TRUNKLINE_BATCH_BUCKETS="[1,8]",
    )
    try:
        server.wait_ready()
        url = server.url
        statuses: list[int] = []
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    r = c.post(
                        f"{url}/v1/predict",
                        json={"model": MODEL, "task": "spam", "inputs": [{"text": "win a prize now"}]},
                    )
                    statuses.append(r.status_code)

        t = threading.Thread(target=traffic)
        t.start()
        try:
            done = add_task_cli(repo2 / MODEL, write_csv(tmp_path / "form.csv", 60))
            assert done.returncode == 0, done.stderr[-2000:]
            r = httpx.post(f"{url}/v2/repository/models/{MODEL}/load", timeout=600)
            assert r.status_code == 200, r.text
            time.sleep(0.5)
        finally:
            stop.set()
            t.join()
        assert statuses and set(statuses) == {200}, sorted(set(statuses))
        r = httpx.post(
            f"{url}/v1/predict",
            json={"model": MODEL, "task": "form", "inputs": [{"text": "Who wrote Hamlet ?"}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["form"]["label"] in ("question", "statement")
    finally:
        server.stop()
