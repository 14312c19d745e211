"""The README's examples run as written (against a real server on another port): every curl
command must succeed, and the Python snippets must run."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, flags=re.S)
SKIP = ("make ", "trunkline serve", "docker ", "kubectl ", "serve run", "pip install")


@pytest.fixture(scope="module")
def readme_server():
    s = RunningServer("torch", TRUNKLINE_MODEL_CONTROL_MODE="explicit")
    s.wait_ready()
    yield s
    s.stop()


def localised(code: str, server: RunningServer) -> str:
    """The block against the test's server: its HTTP and gRPC ports for 8000 and 8001."""
    for port, own in ((8000, server.port), (8001, server.grpc_port)):
        code = code.replace(f"localhost:{port}", f"127.0.0.1:{own}").replace(
            f"127.0.0.1:{port}", f"127.0.0.1:{own}"
        )
    return re.sub(r"(\.venv/bin/)?\bpython3\b", sys.executable, code)


def runnable(code: str) -> str:
    """The block without the commands that set up or start things (they run elsewhere)."""
    return "\n".join(line for line in code.splitlines() if not any(cmd in line for cmd in SKIP))


CURL_BLOCKS = [b for kind, b in BLOCKS if kind == "bash" and "curl" in runnable(b)]
PYTHON_BLOCKS = [b for kind, b in BLOCKS if kind == "python"]


def test_the_readme_has_examples():
    assert len(CURL_BLOCKS) >= 4 and len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=[f"bash{i}" for i in range(len(CURL_BLOCKS))])
def test_curl_examples(readme_server, block, tmp_path):
    script = "set -euo pipefail\n" + localised(runnable(block), readme_server).replace(
        "curl -s ", "curl -sS --fail-with-body "
    )
    run = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert '"error"' not in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"python{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_examples(readme_server, block, tmp_path):
    from PIL import Image

    from models.data import make_scenes

    Image.fromarray(make_scenes(1, "test", seed=1).images[0]).save(tmp_path / "scene.png")
    run = subprocess.run(
        [sys.executable, "-c", localised(block, readme_server)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
