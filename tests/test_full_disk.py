"""A disk that fills up midway: on a real, tiny tmpfs (mounted for the test, so it needs root),
predict, export and train each stop with one line naming the folder, keep what was already complete,
and leave no temporary files behind (issue 11). The monkeypatched variants in test_cli_errors.py
cover the same messages on machines where mounting is not allowed."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.fixtures.tiny_model import write_bundle
from w2sr.cli import main as cli


@pytest.fixture()
def small_disk(tmp_path):
    """Mount a tmpfs of a given size in KiB; unmounted (and so emptied) after the test."""
    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"this machine refuses to mount a tmpfs: {done.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


def errors_of(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors, err
    return errors


def all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_predict_stops_at_the_first_file_that_does_not_fit(tmp_path, small_disk, capsys):
    bundle = write_bundle(tmp_path / "bundle")
    images = []
    for name in ("a", "b", "c"):
        images.append(tmp_path / f"{name}.tif")
        tifffile.imwrite(images[-1], np.random.default_rng(0).normal(100, 20, (128, 128)).astype(np.float32))
    before = [p.read_bytes() for p in images]
    disk = small_disk(400)  # one 256x256 float32 output (256 KiB) fits, the second does not
    out = disk / "out"
    code = cli(["predict", str(bundle), *map(str, images), "--out", str(out), "--no-progress"])
    assert code == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and f"{out}: no space left on the device; stopped at" in errors[0], errors
    assert all_files(disk) == ["out", "out/a_sr.tif"]  # no temp file of b, c never attempted
    assert tifffile.imread(out / "a_sr.tif").shape == (256, 256)
    assert [p.read_bytes() for p in images] == before


def test_export_onto_a_full_disk_leaves_nothing_and_keeps_the_old_bundle(tiny_run, small_disk, capsys):
    disk = small_disk(256)
    old = disk / "bundle"
    old.mkdir()
    older = "name: an older bundle\nconfig: {w2sr: {}}\n"  # what w2sr export recognises as its own
    (old / "rdf.yaml").write_text(older)
    code = cli(["export", str(tiny_run), "--out", str(old), "--force", "--quick"])
    assert code == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and f"{disk}: no space left on the device while building the bundle" in errors[0], errors
    assert all_files(disk) == ["bundle", "bundle/rdf.yaml"]  # no staging folder left
    assert (old / "rdf.yaml").read_text() == older


def test_train_on_a_full_disk_stops_in_one_line_and_resumes_cleanly(tmp_path, small_disk, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tiny config simulates its data under ./data/tiny
    disk = small_disk(300)  # the config and metrics fit; the first checkpoint does not
    run = disk / "run"
    assert cli(["train", "--config", "tiny", "--run-dir", str(run)]) == 2
    errors = errors_of(capsys)
    assert len(errors) == 1 and f"{run}: no space left on the device" in errors[0] and "--resume" in errors[0], errors
    leftovers = [p for p in all_files(disk) if p.endswith("_temp")]
    assert leftovers, "TensorFlow's unfinished checkpoint folder should be there until the next run"
    # with room again, --resume clears TensorFlow's unfinished checkpoint and finishes the run
    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    assert cli(["train", "--config", "tiny", "--run-dir", str(run), "--resume"]) == 0
    assert not [p for p in all_files(disk) if p.endswith("_temp")]
    assert (run / "generator.keras").is_file() and (run / "DONE").is_file()
