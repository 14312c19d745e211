"""models/ is layered: the shared parts import no family (families are plug-ins found through
entry points), and no family imports another."""

import subprocess
import sys

SHARED = ["adapter", "calibrate", "checkpoint", "config", "export", "kinds", "layers", "losses", "routes"]


def test_the_shared_modules_import_alone():
    code = (
        "import sys\n"
        + "".join(f"import models.{m}\n" for m in SHARED)
        + "print(sorted(m for m in sys.modules if m.startswith(('models.image', 'models.text'))))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_no_family_imports_another():
    for family, other in (("image", "text"), ("text", "image")):
        code = (
            f"import sys, pkgutil, importlib, models.{family} as f\n"
            f"for m in pkgutil.iter_modules(f.__path__): importlib.import_module(f.__name__ + '.' + m.name)\n"
            f"print(sorted(m for m in sys.modules if m.startswith('models.{other}')))"
        )
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert run.stdout.strip() == "[]", family
