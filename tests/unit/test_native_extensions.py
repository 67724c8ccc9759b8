"""The C hot paths are required: built by the install, loaded by their modules, never silently replaced.

A build that cannot compile fails (setup.py with a compiler that fails); a module whose extension does not
load refuses to import unless NETSONDE_ALLOW_SLOW_PATH=1, and then says that it runs the Python path.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# (extension, the module that loads it, the attribute that is None on the Python path)
EXTENSIONS = [
    ("netsonde.flow._fastpath", "netsonde.flow.table", "_fastpath"),
    ("netsonde.flow.sflow._fastsflow", "netsonde.flow.sflow.collector", "_scan"),
    ("netsonde.flow_enricher._fastflow", "netsonde.flow_enricher.pipeline", "_fastflow"),
]

# Runs in a fresh interpreter: makes one extension unloadable, then imports the module that uses it.
BLOCK_AND_IMPORT = """
import importlib, sys
blocked, user, attr = sys.argv[1:4]

class Block:
    def find_spec(self, name, path=None, target=None):
        if name == blocked:
            raise ImportError(f"{name} blocked by the test")
        return None

sys.meta_path.insert(0, Block())
module = importlib.import_module(user)
print("python-path" if getattr(module, attr) is None else "c-path")
"""


@pytest.mark.parametrize("ext,user,attr", EXTENSIONS)
def test_extension_is_built_and_used(ext: str, user: str, attr: str) -> None:
    assert str(importlib.import_module(ext).__file__).endswith(".so")
    assert getattr(importlib.import_module(user), attr) is not None


@pytest.mark.parametrize("ext,user,attr", EXTENSIONS)
def test_missing_extension_fails_the_import_unless_allowed(ext: str, user: str, attr: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NETSONDE_ALLOW_SLOW_PATH"}
    argv = [sys.executable, "-c", BLOCK_AND_IMPORT, ext, user, attr]
    refused = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert f"the C extension {ext} is not built or does not load" in refused.stderr
    assert "NETSONDE_ALLOW_SLOW_PATH=1" in refused.stderr

    allowed = subprocess.run(
        argv, env=dict(env, NETSONDE_ALLOW_SLOW_PATH="1"), capture_output=True, text=True, timeout=60
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.strip() == "python-path"
    assert f"{ext} is not built" in allowed.stderr and "pure-Python path" in allowed.stderr


@pytest.mark.parametrize("package", ["libs/flow", "services/flow-enricher"])
def test_a_build_that_cannot_compile_fails(package: str, tmp_path: Path) -> None:
    src = tmp_path / "pkg"
    shutil.copytree(ROOT / package, src, ignore=shutil.ignore_patterns("*.so", "*.egg-info", "__pycache__"))
    env = dict(os.environ, CC="false", LDSHARED="false")
    res = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(tmp_path / "out")],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0, (
        f"the build of {package} succeeded without a compiler:\n{res.stdout}{res.stderr}"
    )
    assert not list((tmp_path / "out").rglob("*.so"))
