"""Bad data stops before training, with a message naming the file and the problem."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from training.config import SimulatorConfig
from training.data.checks import format_ranges
from training.data.layouts import check_pairs
from training.data.layouts import load_pairs
from training.data.simulator import simulate_dataset
from w2sr.cli import main
from w2sr.core.errors import DataError


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("checks")
    return {
        "npy": simulate_dataset(SimulatorConfig(n_fovs=3, lr_size=32, layout="npy"), base / "npy"),
        "png": simulate_dataset(SimulatorConfig(n_fovs=3, lr_size=32, layout="png"), base / "png"),
    }


@pytest.fixture
def npy(pristine, tmp_path):
    return shutil.copytree(pristine["npy"], tmp_path / "npy")


@pytest.fixture
def png(pristine, tmp_path):
    return shutil.copytree(pristine["png"], tmp_path / "png")


def test_pristine_data_passes(npy, png):
    assert len(check_pairs(npy, "npy", 1, [0], [1, 2, 3])) == 3
    assert len(check_pairs(png, "auto", 8)) == 3


def test_missing_folder(npy):
    shutil.rmtree(npy / "sim")
    with pytest.raises(DataError, match=r"npy/sim: folder missing"):
        load_pairs(npy, "npy", 1)


def test_missing_noise_level_folder(npy):
    shutil.rmtree(npy / "avg8")
    with pytest.raises(DataError, match=r"npy/avg8: folder missing"):
        load_pairs(npy, "npy", 8, [0], [1])


def test_input_without_target(npy):
    (npy / "sim" / "002_0.npy").unlink()
    with pytest.raises(DataError, match=r"avg1/002_0\.npy: no matching SIM target"):
        load_pairs(npy, "npy", 1, [0], [1, 2])


def test_target_without_input(png):
    (png / "train" / "avg2" / "001_0.png").unlink()
    with pytest.raises(DataError, match=r"train/sim/001_0\.png: no matching widefield input"):
        load_pairs(png, "png", 2)


def test_sim_not_exactly_twice_the_widefield(npy):
    np.save(npy / "sim" / "003_0.npy", np.zeros((63, 64), np.float32))
    with pytest.raises(DataError, match=r"sim/003_0\.npy: SIM target is 63x64, expected exactly 2x"):
        load_pairs(npy, "npy", 1)


def test_truncated_npy(npy):
    f = npy / "avg1" / "001_0.npy"
    f.write_bytes(f.read_bytes()[:300])
    with pytest.raises(DataError, match=r"avg1/001_0\.npy: unreadable"):
        load_pairs(npy, "npy", 1)


def test_not_an_npy_at_all(npy):
    (npy / "sim" / "002_0.npy").write_text("hello")
    with pytest.raises(DataError, match=r"sim/002_0\.npy: unreadable \.npy file \(no NumPy header\)"):
        load_pairs(npy, "npy", 1)


def test_corrupt_png(png):
    f = png / "test" / "sim" / "003_0.png"
    f.write_bytes(f.read_bytes()[:60])
    with pytest.raises(DataError, match=r"test/sim/003_0\.png: unreadable PNG"):
        load_pairs(png, "png", 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf(npy, bad):
    arr = np.load(npy / "avg1" / "002_0.npy")
    arr[3, 4] = bad
    np.save(npy / "avg1" / "002_0.npy", arr)
    with pytest.raises(DataError, match=r"avg1/002_0\.npy: 1 NaN/Inf values"):
        load_pairs(npy, "npy", 1)


def test_wrong_dimensionality_npy(npy):
    np.save(npy / "avg1" / "001_0.npy", np.zeros((2, 32, 32), np.float32))
    with pytest.raises(DataError, match=r"avg1/001_0\.npy: expected a 2-D grayscale image, got shape \(2, 32, 32\)"):
        load_pairs(npy, "npy", 1)


def test_rgb_png(png):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8), mode="RGB").save(png / "train" / "avg1" / "002_0.png")
    with pytest.raises(DataError, match=r"avg1/002_0\.png: expected a 2-D grayscale image.*mode RGB"):
        load_pairs(png, "png", 1)


def test_requested_fov_or_channel_absent(npy):
    with pytest.raises(DataError, match=r"FOV 9 absent \(no avg1/009_0\.npy\)"):
        load_pairs(npy, "npy", 1, [0], [1, 9])
    with pytest.raises(DataError, match=r"channel 2 absent"):
        load_pairs(npy, "npy", 1, [0, 2], [1])


def test_empty_layout_folders(tmp_path):
    for sub in ("avg1", "sim"):
        (tmp_path / sub).mkdir()
    with pytest.raises(DataError, match="no image files found"):
        load_pairs(tmp_path, "npy", 1)


def test_all_problems_are_collected_into_one_line(npy):
    (npy / "sim" / "001_0.npy").unlink()
    np.save(npy / "sim" / "002_0.npy", np.zeros((10, 10), np.float32))
    arr = np.load(npy / "avg1" / "003_0.npy")
    arr[0, 0] = np.nan
    np.save(npy / "avg1" / "003_0.npy", arr)
    with pytest.raises(DataError) as info:
        load_pairs(npy, "npy", 1)
    msg = str(info.value)
    assert "\n" not in msg
    assert "avg1/001_0.npy: no matching SIM target" in msg
    # structural problems stop the run before any pixels are read; fix them and the rest appear
    np.save(npy / "sim" / "001_0.npy", np.zeros((64, 64), np.float32))
    with pytest.raises(DataError) as info:
        load_pairs(npy, "npy", 1)
    assert "sim/002_0.npy: SIM target is 10x10" in str(info.value)
    np.save(npy / "sim" / "002_0.npy", np.zeros((64, 64), np.float32))
    np.save(npy / "sim" / "001_0.npy", np.full((64, 64), np.inf, np.float32))
    with pytest.raises(DataError) as info:
        load_pairs(npy, "npy", 1)
    msg = str(info.value)
    assert msg.startswith("2 data problems under") and "sim/001_0.npy: 4096 NaN/Inf" in msg
    assert "avg1/003_0.npy: 1 NaN/Inf" in msg


def test_cli_check_data_reports_summary_or_problem(npy, capsys):
    assert main(["check-data", str(npy), "--fovs", "1-3", "--channels", "0"]) == 0
    out = capsys.readouterr().out
    assert "npy layout" in out and "pairs:    3" in out and "32x32" in out and "64x64" in out
    (npy / "sim" / "002_0.npy").unlink()
    assert main(["check-data", str(npy)]) == 2
    assert "avg1/002_0.npy: no matching SIM target" in capsys.readouterr().err
    assert main(["check-data", str(npy / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_format_ranges():
    assert format_ranges([5, 1, 2, 3, 9, 10]) == "1-3,5,9-10"
