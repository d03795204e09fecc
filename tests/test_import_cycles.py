"""Every module of `diffusers_mixgrpo` imports on its own, as the first module of the package to load: no import cycle
inside `src/` (a cycle shows as an ImportError / AttributeError for the module that starts it), and every name in a
module's `__all__` (the packages' lazy exports included) resolves."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# One interpreter; before each module, every `diffusers_mixgrpo` module is dropped from `sys.modules`, so the module
# is imported first, as in a fresh interpreter (the third-party libraries stay loaded: seconds instead of minutes).
_IMPORT_EACH_ALONE = """
import importlib, pkgutil, sys, traceback
import diffusers_mixgrpo
names = [m.name for m in pkgutil.walk_packages(diffusers_mixgrpo.__path__, "diffusers_mixgrpo.")]
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "diffusers_mixgrpo" or m.startswith("diffusers_mixgrpo.")]:
        del sys.modules[loaded]
    try:
        module = importlib.import_module(name)
        for public in getattr(module, "__all__", ()):  # the lazy exports of a package resolve too
            getattr(module, public)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-3))
print(len(names), "modules")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_alone():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_ALONE], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert int(out.stdout.split()[0]) > 50  # walk_packages found the package's modules
