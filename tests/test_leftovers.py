"""A killed run leaves nothing behind once the next run of the same command starts: temporary files
and staging folders carry their process's PID and are swept when that process is gone; a folder swap
cut in half is completed; subprocesses die with their parent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.fixtures.tiny_model import write_bundle
from w2sr.core.files import atomic_path, recover_replaced_dir, sweep_stale, temp_prefix
from w2sr.cli import main as cli
from tests.fixtures import REPO


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_names_carry_the_pid_and_only_dead_ones_are_swept(tmp_path):
    with atomic_path(tmp_path / "out.tif") as tmp:
        assert tmp.name.startswith(temp_prefix("out.tif")) and str(os.getpid()) in tmp.name
        tmp.write_bytes(b"x")
    assert (tmp_path / "out.tif").read_bytes() == b"x" and not tmp.exists()
    dead = dead_pid()
    stale_file = tmp_path / f".img.001.tif.w2sr{dead}.abc.tif.tmp"
    stale_dir = tmp_path / f".bundle.staging.w2sr{dead}-xyz"
    live_file = tmp_path / f"{temp_prefix('img.tif')}abc.tif.tmp"
    user_file = tmp_path / ".hidden_notes.txt"
    for f in (stale_file, live_file, user_file):
        f.write_text("x")
    stale_dir.mkdir()
    (stale_dir / "rdf.yaml").write_text("x")
    removed = sweep_stale(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert live_file.exists() and user_file.exists() and (tmp_path / "out.tif").exists()


def test_interrupted_folder_swap_is_completed(tmp_path):
    target, old = tmp_path / "bundle", tmp_path / ".bundle.old"
    old.mkdir()
    (old / "rdf.yaml").write_text("old")
    recover_replaced_dir(target)  # killed between the two renames: the old bundle comes back
    assert (target / "rdf.yaml").read_text() == "old" and not old.exists()
    old.mkdir()
    recover_replaced_dir(target)  # killed after the swap, before the clean-up
    assert target.exists() and not old.exists()


def test_predict_sweeps_the_temporary_files_of_a_killed_run(tmp_path):
    bundle = write_bundle(tmp_path / "bundle")
    tifffile.imwrite(tmp_path / "a.tif", np.full((40, 40), 100, np.float32))
    out = tmp_path / "out"
    out.mkdir()
    dead = dead_pid()
    leftovers = [out / f".a_sr.tif.w2sr{dead}.k3j.tif.tmp", out / f".a_sr.tif.w2sr{dead}.q9z.npy"]
    for f in leftovers:
        f.write_bytes(b"\0" * 1024)
    assert cli(["predict", str(bundle), str(tmp_path / "a.tif"), "--out", str(out), "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_sr.tif"]


def test_export_sweeps_dead_staging_folders_and_restores_a_half_swapped_bundle(tmp_path):
    """No model is needed to see it: the exporter tidies up before it reads the run."""
    from export.bundle import export_bundle
    from w2sr.core.errors import UserError

    dead = dead_pid()
    stale = tmp_path / f".bundle.staging.w2sr{dead}-abcd"
    stale.mkdir()
    (stale / "weights.onnx").write_bytes(b"\0" * 1024)
    old = tmp_path / ".bundle.old"
    old.mkdir()
    (old / "rdf.yaml").write_text("name: previous\n")
    with pytest.raises(UserError, match="run folder"):
        export_bundle(tmp_path / "no-such-run", tmp_path / "bundle")
    assert not stale.exists()
    assert (tmp_path / "bundle" / "rdf.yaml").read_text() == "name: previous\n" and not old.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_subprocesses_die_with_their_parent(tmp_path):
    pid_file = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from w2sr.core.proc import die_with_parent
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], preexec_fn=die_with_parent)
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """)], cwd=REPO)
    deadline = time.time() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline, "the parent never started its child"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        # a zombie is gone for our purpose: it no longer runs
        try:
            if Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
                return
        except OSError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    pytest.fail("the child outlived its killed parent")


def test_scratch_folders_of_killed_runs_are_removed_from_the_temp_folder_by_the_next_command(tmp_path, monkeypatch):
    """SavedModel unzips, bioimageio test copies and engine jobs live in the system's temp folder: a
    kill -9 leaves them there; any next w2sr command removes those whose process is gone."""
    import tempfile

    from w2sr.core.files import scratch_dir
    from w2sr.cli import main as cli

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with scratch_dir("savedmodel") as mine:
        assert Path(mine).parent == tmp_path and f"w2sr{os.getpid()}" in Path(mine).name
    dead = tmp_path / f".w2sr-bioimageio.scratch.w2sr{dead_pid()}-k3j2"
    (dead / "bundle").mkdir(parents=True)
    running = scratch_dir("engines")  # this process's own, in use: kept
    alive = Path(running.name)
    other = tmp_path / "w2sr-not-ours"
    other.mkdir()
    assert cli(["check-data", str(tmp_path / "no-such-data")]) == 2
    assert not dead.exists() and alive.exists() and other.exists()
    running.cleanup()
