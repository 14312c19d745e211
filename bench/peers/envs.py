"""Throwaway virtual environments for the peers, so that they never touch the project's own.

Each peer gets `build/bench-venvs/<peer>` with torch (the same CPU build as the project) and
its framework; `models` comes from this checkout through PYTHONPATH. A venv is reused while its
requirements are unchanged; `rm -rf build/bench-venvs` throws them all away.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / "build" / "bench-venvs"
COMMON = ["torch==2.13.0", "numpy", "safetensors", "pydantic", "pillow", "tqdm"]
FRAMEWORKS = {
    "fastapi": ["fastapi", "uvicorn[standard]"],
    "litserve": ["litserve"],
    "ray": ["ray[serve]"],
}


def python_for(peer: str, own_env: bool = True) -> str:
    """The interpreter that runs `peer`: its own venv (made on first use), or this one."""
    if not own_env:
        return sys.executable
    packages = COMMON + FRAMEWORKS[peer]
    venv = VENVS / peer
    stamp = venv / ".requirements"
    digest = hashlib.sha256(" ".join(packages).encode()).hexdigest()
    python = venv / "bin" / "python"
    if stamp.exists() and stamp.read_text() == digest and python.exists():
        return str(python)
    print(f"[bench] making the {peer} venv at {venv} (once; reused afterwards)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)  # CPU build first: see pyproject.toml
    subprocess.run(pip + packages, check=True)
    stamp.write_text(digest)
    return str(python)


def installed(peer: str) -> bool:
    """Whether this interpreter can run `peer` without a venv of its own (tiny runs)."""
    module = {"fastapi": "fastapi", "litserve": "litserve", "ray": "ray.serve"}[peer]
    try:
        __import__(module)
    except ImportError:
        return False
    return True
