"""The README's examples run as written, in the environment its set-up command makes.

`make serve VENV=.venv-readme` builds a venv with the package alone (no dev or data extra: what a
new user has after `make serve`) and serves the bundled models from it, as the README says, on
free ports. Every bash block then runs in a folder where `.venv` is that venv and `examples/` the
repository's, its `pip install` lines first (they are how an example says what it needs), and every
Python block runs with that venv's interpreter: an example that needs something the set-up command
does not install, and does not say so, fails here.
"""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import orjson
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-readme"
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, flags=re.S)
# commands that start or deploy things: the fixture's `make serve` stands for them
SKIP = ("make ", "trunkline serve", "docker ", "kubectl ", "serve run")
INSTALL = re.compile(r"^\.venv/bin/pip install ")


class ReadmeServer:
    """`make serve` in the README's own venv, on free ports, in explicit control mode (for the
    repository example)."""

    def __init__(self, log: Path) -> None:
        self.port, self.grpc_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRUNKLINE_", "VIRTUAL_ENV"))}
        env.pop("PYTHONPATH", None)
        env.update(
            TRUNKLINE_PORT=str(self.port),
            TRUNKLINE_GRPC_PORT=str(self.grpc_port),
            TRUNKLINE_MODEL_CONTROL_MODE="explicit",
            TRUNKLINE_LOG_LEVEL="warning",
        )
        self.log = log
        self.proc = subprocess.Popen(
            ["make", "serve", f"VENV={VENV.name}"],
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server it starts: one group to stop
        )

    def wait_ready(self, timeout: float) -> None:
        """The venv's set-up (the first time: minutes) and the server's start."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"make serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"make serve was not ready in {timeout:.0f} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def localised(code: str, server: ReadmeServer) -> str:
    """The block against the test's server: its HTTP and gRPC ports for 8000 and 8001."""
    for port, own in ((8000, server.port), (8001, server.grpc_port)):
        code = code.replace(f"localhost:{port}", f"127.0.0.1:{own}").replace(
            f"127.0.0.1:{port}", f"127.0.0.1:{own}"
        )
    return code


def runnable(code: str) -> str:
    """The block without the commands that start things or install (they run in the fixture)."""
    return "\n".join(
        line
        for line in code.splitlines()
        if not any(cmd in line for cmd in SKIP) and not INSTALL.match(line)
    )


INSTALLS = [line for kind, b in BLOCKS if kind == "bash" for line in b.splitlines() if INSTALL.match(line)]
CURL_BLOCKS = [b for kind, b in BLOCKS if kind == "bash" and "curl" in runnable(b)]
PYTHON_BLOCKS = [b for kind, b in BLOCKS if kind == "python"]


@pytest.fixture(scope="module")
def readme(tmp_path_factory):
    """(server, a user's working folder): `.venv` and `examples/` as in a clone."""
    work = tmp_path_factory.mktemp("readme")
    (work / ".venv").symlink_to(VENV)
    (work / "examples").symlink_to(ROOT / "examples")
    server = ReadmeServer(work / "make-serve.log")
    try:
        server.wait_ready(timeout=1800)
        for line in INSTALLS:
            run = shell(line, work, timeout=900)
            assert run.returncode == 0, f"{line}\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
        yield server, work
    finally:
        server.stop()


def user_env() -> dict[str, str]:
    """A shell with nothing of the dev environment: the README's venv first on the PATH, so a bare
    `python3` is the one the set-up made."""
    return {"PATH": f"{VENV}/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


def shell(script: str, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + script],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=user_env(),
    )


def test_the_readme_has_examples():
    assert len(CURL_BLOCKS) >= 4 and len(PYTHON_BLOCKS) >= 2 and INSTALLS


@pytest.mark.parametrize("block", CURL_BLOCKS, ids=[f"bash{i}" for i in range(len(CURL_BLOCKS))])
def test_curl_examples(readme, block):
    server, work = readme
    script = localised(runnable(block), server).replace("curl -s ", "curl -sS --fail-with-body ")
    run = shell(script, work, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert '"error"' not in run.stdout, run.stdout[-2000:]


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[f"python{i}" for i in range(len(PYTHON_BLOCKS))])
def test_python_examples(readme, block):
    server, work = readme
    run = subprocess.run(
        [f"{VENV}/bin/python", "-c", localised(block, server)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        env=user_env(),
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_sample_answer_is_what_the_server_answers(readme):
    """The first example's printed answer (label and route) is what a real run gives."""
    server, work = readme
    (block,) = [b for b in CURL_BLOCKS if "scene-0.png" in b]
    answer = shell(localised(block, server), work, timeout=120)
    shown = README[README.index(block) + len(block) :]
    shown = shown[: shown.index("```\n", shown.index("```json"))]
    got = orjson.loads(answer.stdout)
    assert f'"label": "{got["outputs"][0]["sum"]["label"]}"' in shown
    assert f'"route": "{got["route"]["tasks"]["sum"]["route"]}"' in shown
