"""What `pip install` puts on a user's machine: a non-editable install must export bundles that
carry the Fiji macros, so the macros travel as package data (issue 10)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from tests.fixtures import REPO

ROOT = REPO  # the repository root


def test_the_wheel_carries_the_fiji_macros_and_the_configs(tmp_path):
    # built from a copy of the tracked files: the build leaves nothing in the working tree
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "bundle", "data", "build", "dist", "__pycache__", "*.egg-info", ".pytest_cache"))
    # built the way pip builds it for a user (isolated, the [build-system] requirements)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-q", "-w", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    [wheel] = tmp_path.glob("w2sr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    macros = {p.name for p in (ROOT / "fiji_macros").glob("*.ijm")}
    assert macros and {f"fiji_macros/{m}" for m in macros} <= names
    assert "training/configs/demo.yaml" in names and "export/engine_scripts/run_onnx.py" in names
    assert not any(n.startswith("fiji_macros/runner/") for n in names)  # the test stand-in stays out


def test_the_exporter_finds_the_installed_macros():
    from export.assets import fiji_macros

    assert sorted(p.name for p in fiji_macros()) == sorted(p.name for p in (ROOT / "fiji_macros").glob("*.ijm"))
