"""The console commands declared in setup.cfg (`mixgrpo-train`, `mixgrpo-eval`, `mixgrpo-toy-demo`) resolve to
callables and answer `--help` under their own name. Read from setup.cfg rather than the installed metadata, so the test
checks this checkout whichever copy of the package is installed."""

import configparser
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=", 1)) for line in lines)


def test_the_three_commands_are_declared():
    assert set(console_scripts()) == {"mixgrpo-train", "mixgrpo-eval", "mixgrpo-toy-demo"}


@pytest.mark.parametrize("command", sorted(console_scripts()))
def test_each_command_resolves_and_answers_help(command):
    module_name, attr = console_scripts()[command].split(":")
    assert callable(getattr(importlib.import_module(module_name), attr))
    # as the console script does: sys.argv[0] is the command's name, then `main()`
    code = f"import sys; sys.argv = [{command!r}, '--help']; from {module_name} import {attr}; {attr}()"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith(f"usage: {command} "), out.stdout[:200]
