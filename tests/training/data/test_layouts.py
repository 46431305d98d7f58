"""Reading the three W2S layouts (fixtures written by the simulator, plus a handwritten raw stack)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from training.config import DataConfig, SimulatorConfig
from training.data.layouts import AVG_FRAMES, detect_layout, load_pairs, load_split
from training.data.simulator import simulate_dataset
from w2sr.core.errors import DataError


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("layouts")
    out = {}
    for layout, extra in (("npy", {}), ("png", {}), ("raw", {"n_frames": 400})):
        cfg = SimulatorConfig(n_fovs=3, lr_size=32, channels=2, layout=layout, seed=1, **extra)
        out[layout] = simulate_dataset(cfg, base / layout)
    return out


@pytest.mark.parametrize("layout", ["npy", "png", "raw"])
def test_detects_each_layout(sets, layout):
    assert detect_layout(sets[layout]) == layout


def test_detect_rejects_empty_missing_and_mixed(tmp_path, sets):
    with pytest.raises(DataError, match="does not exist"):
        detect_layout(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no W2S layout"):
        detect_layout(tmp_path / "empty")
    mixed = tmp_path / "mixed"
    shutil.copytree(sets["npy"], mixed)
    shutil.copytree(sets["raw"] / "Image001", mixed / "Image001")
    with pytest.raises(DataError, match="several W2S layouts"):
        detect_layout(mixed)


def test_npy_pairs_are_the_files_as_float32(sets):
    root = sets["npy"]
    pairs = load_pairs(root, "auto", 4, channels=[1], fovs=[2, 3], npy_as_counts=False)
    assert [(p.name, p.fov, p.channel) for p in pairs] == [("002_1", 2, 1), ("003_1", 3, 1)]
    p = pairs[0]
    assert p.lr_source == root / "avg4" / "002_1.npy" and p.hr_source == root / "sim" / "002_1.npy"
    assert p.lr.dtype == np.float32 and p.hr.dtype == np.float32
    np.testing.assert_array_equal(p.lr, np.load(root / "avg4" / "002_1.npy"))
    np.testing.assert_array_equal(p.hr, np.load(root / "sim" / "002_1.npy"))
    assert p.hr.shape == (64, 64)


def test_npy_pairs_come_back_in_camera_counts_by_default(sets):
    """The normalized release is z-scored with the W2S constants; by default it is read as counts,
    so a model trained on it (and its bundle) takes raw widefield images."""
    from training.config import W2S_RAW_MEAN, W2S_RAW_STD

    root = sets["npy"]
    (p,) = load_pairs(root, "auto", 4, channels=[1], fovs=[2])
    z = np.load(root / "avg4" / "002_1.npy")
    np.testing.assert_allclose(p.lr, z * W2S_RAW_STD + W2S_RAW_MEAN, rtol=1e-6)
    assert 50 < float(p.lr.mean()) < 400  # counts, not z-scores


def test_none_means_everything_present(sets):
    pairs = load_pairs(sets["npy"], "npy", 1)
    assert sorted((p.fov, p.channel) for p in pairs) == [(f, c) for f in (1, 2, 3) for c in (0, 1)]


def test_png_pairs_from_both_splits_or_one(sets):
    root = sets["png"]
    both = load_pairs(root, "png", 16, channels=[0])
    assert [p.fov for p in both] == [1, 2, 3]
    assert both[2].lr_source == root / "test" / "avg16" / "003_0.png"
    assert both[0].lr.dtype == np.float32 and 0 <= both[0].lr.min() and both[0].lr.max() <= 255
    assert both[0].lr.max() > 0 and both[0].hr.shape == (64, 64)
    train = load_pairs(root, "png", 16, channels=[0], split="train")
    assert [p.fov for p in train] == [1, 2]
    with pytest.raises(DataError, match="FOV 3 absent"):
        load_pairs(root, "png", 16, channels=[0], fovs=[3], split="train")


def test_raw_avg_levels_use_the_authors_frames(sets):
    root = sets["raw"]
    stack = np.load(root / "Image002" / "wf_channel1.npy")
    for level in (1, 16, 400):
        (pair,) = load_pairs(root, "raw", level, channels=[1], fovs=[2])
        a, b = AVG_FRAMES[level]
        np.testing.assert_allclose(pair.lr, stack[a:b].astype(np.float64).mean(0), rtol=1e-6)
        assert pair.lr_source == root / "Image002" / "wf_channel1.npy"
        assert pair.hr.shape == (64, 64)


def _handwritten_raw(root, n_frames):
    """Frame k holds the value k everywhere plus a fixed pattern, so every average is known exactly."""
    d = root / "Image007"
    d.mkdir(parents=True)
    pattern = np.arange(8 * 8, dtype=np.uint16).reshape(8, 8)
    frames = np.arange(n_frames, dtype=np.uint16)[:, None, None] * 100 + pattern
    np.save(d / "wf_channel0.npy", frames)
    np.save(d / "sim_channel0.npy", np.ones((16, 16), np.float32))
    return pattern.astype(np.float64)


def test_handwritten_raw_stack_gives_exact_frame_averages(tmp_path):
    pattern = _handwritten_raw(tmp_path, 400)
    expected_frame_mean = {1: 249, 2: 0.5, 4: 1.5, 8: 3.5, 16: 7.5, 400: 199.5}
    for level, k in expected_frame_mean.items():
        (pair,) = load_pairs(tmp_path, "raw", level)
        assert (pair.fov, pair.channel, pair.name) == (7, 0, "007_0")
        np.testing.assert_array_equal(pair.lr, (pattern + 100 * k).astype(np.float32))


def test_raw_with_too_few_frames_names_file_and_need(tmp_path):
    _handwritten_raw(tmp_path, 16)
    (pair,) = load_pairs(tmp_path, "raw", 16)              # frames 0-15: fine
    assert float(pair.lr[0, 0]) == 750.0
    with pytest.raises(DataError, match=r"wf_channel0\.npy: has 16 frames, avg1 needs at least 250"):
        load_pairs(tmp_path, "raw", 1)


def test_load_split_follows_the_data_config(sets):
    cfg = DataConfig(root=sets["npy"], layout="auto", noise_level=2, channels=[0],
                     train_fovs=[1, 2], val_fovs=[2], test_fovs=[3])
    assert [p.fov for p in load_split(cfg, "train")] == [1]
    assert [p.fov for p in load_split(cfg, "val")] == [2]
    assert [p.fov for p in load_split(cfg, "test")] == [3]
