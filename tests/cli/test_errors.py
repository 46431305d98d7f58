"""Bad command lines and bad bundles give one line naming the file and what is wrong, exit code 2, no
traceback, and leave nothing behind (the cases of the reliability review, issue 11)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.fixtures.rdf_edit import edit_rdf
from tests.fixtures.tiny_model import write_bundle
from w2sr.cli import main as cli


def one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture()
def image(tmp_path) -> Path:
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, np.random.default_rng(0).normal(100, 20, (40, 40)).astype(np.float32))
    return path


def test_predict_on_a_zipped_bundle_says_unzip_it(tmp_path, image, capsys):
    b = write_bundle(tmp_path / "bundle")
    shutil.make_archive(str(tmp_path / "bundle_pkg"), "zip", b)
    assert cli(["predict", str(tmp_path / "bundle_pkg.zip"), str(image), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert "bundle_pkg.zip: a zipped bundle; unzip it" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text,expect", [
    ("inputs: [oops\n  name: x", "not valid YAML (line"),
    ("inputs: [oops]\noutputs: [oops]\n", "not a w2sr bundle rdf"),
    ("- just\n- a list\n", "expected a YAML mapping"),
])
def test_broken_rdf_is_one_line(tmp_path, image, capsys, text, expect):
    b = write_bundle(tmp_path / "bundle")
    (b / "rdf.yaml").write_text(text)
    assert cli(["predict", str(b), str(image), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert str(b / "rdf.yaml") in line and expect in line


def test_bad_thread_count_is_refused(tmp_path, image, capsys):
    b = write_bundle(tmp_path / "bundle")
    assert cli(["predict", str(b), str(image), "--out", str(tmp_path / "out"), "--threads", "-1"]) == 2
    assert "--threads must be a positive number" in one_error_line(capsys)


def test_a_predict_that_wrote_nothing_leaves_no_out_folder(tmp_path):
    b = write_bundle(tmp_path / "bundle")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.tif").write_bytes(b"not a tiff")
    assert cli(["predict", str(b), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert not (tmp_path / "out").exists()


def test_demo_with_a_missing_config_is_one_line(tmp_path, capsys):
    assert cli(["demo", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "b"),
                "--run-dir", str(tmp_path / "run")]) == 2
    assert "config file not found" in one_error_line(capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("command", ["train", "simulate", "demo"])
def test_a_config_that_is_not_yaml_is_one_line_with_its_line_and_column(tmp_path, capsys, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [oops\nroot: x\n")
    args = {"train": ["--run-dir", str(tmp_path / "run")], "simulate": ["--out", str(tmp_path / "d")],
            "demo": ["--out", str(tmp_path / "b"), "--run-dir", str(tmp_path / "r")]}[command]
    assert cli([command, "--config", str(bad), *args]) == 2
    line = one_error_line(capsys)
    assert line == f"error: {bad}: not valid YAML (line 2, column 5): expected ',' or ']', but got ':'"
    assert not (tmp_path / "run").exists() and not (tmp_path / "b").exists()


def test_simulate_takes_packaged_config_names_like_train(tmp_path):
    out = tmp_path / "sim"
    assert cli(["simulate", "--config", "tiny", "--out", str(out), "--n-fovs", "2", "--size", "32"]) == 0
    assert any(out.rglob("*.npy")) or any(out.rglob("*.png"))


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_resume_without_a_run_to_resume_is_refused(tmp_path, capsys, state):
    run = tmp_path / "run"
    if state == "empty":
        run.mkdir()
    assert cli(["train", "--config", "tiny", "--run-dir", str(run), "--resume"]) == 2
    assert "nothing to resume" in one_error_line(capsys)
    assert (run.exists() and not any(run.iterdir())) if state == "empty" else not run.exists()


def test_rdf_yaml_edits_do_not_matter_for_the_one_line_rule(tmp_path, image, capsys):
    """A valid YAML rdf with a wrong weights entry: still one line naming the problem."""
    b = edit_rdf(write_bundle(tmp_path / "bundle"), lambda doc: doc["weights"]["onnx"].update(source="gone.onnx"))
    assert cli(["predict", str(b), str(image), "--out", str(tmp_path / "out")]) == 2
    assert "gone.onnx: weights named in the rdf are missing" in one_error_line(capsys)


@pytest.mark.parametrize("fault", ["enospc", "short write"])
def test_a_full_disk_stops_the_batch_at_the_first_file_in_one_line(tmp_path, capsys, monkeypatch, fault):
    import errno

    b = write_bundle(tmp_path / "bundle")
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, np.full((40, 40), 100, np.float32))
    calls = []

    def full_disk(path, *args, **kwargs):
        calls.append(path)
        Path(path).write_bytes(b"\0" * 100)  # a partial write, as a full disk leaves it
        if fault == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise OSError("262144 requested and 76712 written")

    monkeypatch.setattr(tifffile, "imwrite", full_disk)  # w2sr.predict.output imports it in its functions
    out = tmp_path / "out"
    assert cli(["predict", str(b), str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--out", str(out),
                "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "no space left on the device; stopped at" in line and "a.tif" in line
    assert len(calls) == 1  # b.tif was not attempted
    assert not out.exists() or not any(out.iterdir())  # no partial output left


def test_an_output_folder_that_cannot_be_created_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    b = write_bundle(tmp_path / "bundle")
    tifffile.imwrite(tmp_path / "a.tif", np.full((40, 40), 100, np.float32))
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "out":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert cli(["predict", str(b), str(tmp_path / "a.tif"), "--out", str(tmp_path / "out")]) == 2
    assert "cannot create the output folder (Read-only file system)" in one_error_line(capsys)


def test_export_onto_a_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import tempfile

    from tests.fixtures.runs import make_run

    run = make_run(tmp_path / "run")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert cli(["export", str(run), "--out", str(tmp_path / "bundle"), "--quick"]) == 2
    line = one_error_line(capsys)
    assert "cannot write the bundle there (read-only file system)" in line
    assert not (tmp_path / "bundle").exists()


def test_train_onto_a_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if self.name == "run":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert cli(["train", "--config", "tiny", "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err  # the tiny config simulates its data first (progress bars)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "run: read-only file system" in errors[0] and "--resume" in errors[0]


def test_an_empty_out_is_refused(tmp_path, image, capsys):
    b = write_bundle(tmp_path / "bundle")
    assert cli(["predict", str(b), str(image), "--out", ""]) == 2
    assert "--out is empty" in one_error_line(capsys)


def test_a_negative_halo_in_the_rdf_is_named_when_the_bundle_is_read(tmp_path, image, capsys):
    b = edit_rdf(write_bundle(tmp_path / "bundle"), lambda doc: doc["outputs"][0].update(halo=[0, -5, -5, 0]))
    assert cli(["predict", str(b), str(image), "--out", str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert str(b / "rdf.yaml") in line and "output halo -5" in line


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["predict", "b", "a.tif", "--out", "x", "--format", "jpeg"])
    assert stop.value.code == 2
    line = one_error_line(capsys)
    assert "w2sr predict: argument --format: invalid choice: 'jpeg'" in line and "--help" in line


def test_validation_errors_carry_no_pydantic_boilerplate(tmp_path, capsys):
    assert cli(["simulate", "--out", str(tmp_path / "sim"), "--n-fovs", "0"]) == 2
    line = one_error_line(capsys)
    assert "n_fovs: Input should be greater than or equal to 2" in line and "pydantic" not in line


def test_outputs_beyond_classic_tiffs_4_gib_are_written_as_bigtiff(tmp_path, image, monkeypatch, caplog):
    import logging

    from w2sr.predict import output as predict_output

    b = write_bundle(tmp_path / "bundle")
    monkeypatch.setattr(predict_output, "CLASSIC_TIFF_LIMIT", 1000)  # a 40x40 input stands for a huge one
    with caplog.at_level(logging.WARNING, logger="w2sr.predict"):
        assert cli(["predict", str(b), str(image), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "a_sr.tif") as tif:
        assert tif.is_bigtiff and tif.asarray().shape == (80, 80)
    assert "beyond classic TIFF's 4 GiB: writing a BigTIFF" in caplog.text
