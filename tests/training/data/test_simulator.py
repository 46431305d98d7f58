"""The simulator: deterministic, W2S-like statistics and noise levels, and a real SR gap."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy.ndimage import zoom
from skimage.metrics import structural_similarity

from training.config import NOISE_LEVELS, W2S_RAW_MEAN, W2S_RAW_STD, SimulatorConfig
from training.data import simulator
from training.data.layouts import load_pairs
from training.data.simulator import simulate_dataset
from w2sr.cli import main
from w2sr.core.errors import UserError


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def npy_set(tmp_path_factory):
    cfg = SimulatorConfig(n_fovs=4, lr_size=64, seed=3, layout="npy")
    return simulate_dataset(cfg, tmp_path_factory.mktemp("sim") / "npy")


def test_npy_layout_has_every_level_and_sim(npy_set):
    for lvl in NOISE_LEVELS:
        names = sorted(p.name for p in (npy_set / f"avg{lvl}").iterdir())
        assert names == [f"{f:03d}_0.npy" for f in range(1, 5)]
    lr = np.load(npy_set / "avg1" / "001_0.npy")
    hr = np.load(npy_set / "sim" / "001_0.npy")
    assert lr.dtype == np.float32 and lr.shape == (64, 64)
    assert hr.dtype == np.float32 and hr.shape == (128, 128)
    record = json.loads((npy_set / simulator.MARKER).read_text())
    assert record["config"]["seed"] == 3


def test_same_seed_same_bytes_other_seed_differs(tmp_path, npy_set):
    again = simulate_dataset(SimulatorConfig(n_fovs=4, lr_size=64, seed=3, layout="npy"), tmp_path / "a")
    assert _files(again) == _files(npy_set)
    other = simulate_dataset(SimulatorConfig(n_fovs=4, lr_size=64, seed=4, layout="npy"), tmp_path / "b")
    assert not np.array_equal(np.load(other / "sim" / "001_0.npy"), np.load(npy_set / "sim" / "001_0.npy"))


def test_a_fov_does_not_depend_on_how_many_are_simulated(tmp_path, npy_set):
    fewer = simulate_dataset(SimulatorConfig(n_fovs=2, lr_size=64, seed=3, layout="npy"), tmp_path / "few")
    for sub in ("avg1", "avg400", "sim"):
        np.testing.assert_array_equal(np.load(fewer / sub / "002_0.npy"), np.load(npy_set / sub / "002_0.npy"))


def test_camera_like_counts_and_noise_falls_with_averaging(npy_set):
    counts = {lvl: np.stack([np.load(p) for p in sorted((npy_set / f"avg{lvl}").glob("*.npy"))]) * W2S_RAW_STD
              + W2S_RAW_MEAN for lvl in NOISE_LEVELS}
    # W2S raw captures: mean ~154, std ~66 counts
    assert 110 < counts[1].mean() < 200
    assert 25 < counts[1].std() < 110
    noise = {lvl: float(np.std(counts[lvl] - counts[400])) for lvl in (1, 4, 16)}
    assert noise[1] > 8  # avg1 is visibly noisy
    # std ~ 1/sqrt(N): 4x fewer frames -> 2x the noise (avg400 itself is not noise-free)
    assert 1.7 < noise[1] / noise[4] < 2.3
    assert 1.7 < noise[4] / noise[16] < 2.3


def _psnr(x, ref):
    rng = float(ref.max() - ref.min())
    return 10 * np.log10(rng**2 / float(np.mean((x - ref) ** 2)))


def test_cubic_upsampling_is_clearly_worse_than_the_target(npy_set):
    """Without this gap the benchmark would measure nothing: the target must hold lost detail."""
    rows = []
    for fov in range(1, 5):
        hr = np.load(npy_set / "sim" / f"{fov:03d}_0.npy").astype(np.float64)
        row = []
        for lvl in (1, 400):
            up = zoom(np.load(npy_set / f"avg{lvl}" / f"{fov:03d}_0.npy").astype(np.float64), 2, order=3)
            row += [_psnr(up, hr), structural_similarity(up, hr, data_range=float(hr.max() - hr.min()))]
        rows.append(row)
    psnr1, ssim1, psnr400, ssim400 = np.mean(rows, axis=0)
    assert psnr1 < 30                      # noisy widefield vs SIM: far from the target
    assert psnr400 < 40                    # even the clean widefield misses SIM detail
    assert psnr400 - psnr1 > 1.5           # and noise costs clearly more
    assert ssim400 - ssim1 > 0.15


def test_sim_target_holds_detail_beyond_the_widefield_cutoff():
    rng = np.random.default_rng(0)
    wf, sim = simulator.clean_pair(rng, 64, 0)
    assert sim.shape == (128, 128) and wf.shape == (64, 64)

    def power_above(img, cycles_per_px):
        spec = np.abs(np.fft.fft2(img - img.mean())) ** 2
        f = np.fft.fftfreq(img.shape[0])
        return spec[np.hypot(f[:, None], f[None, :]) > cycles_per_px].sum() / spec.sum()

    cutoff = simulator.WF_CUTOFF  # cycles per LR pixel = cutoff / 2 cycles per HR pixel
    assert power_above(wf, cutoff * 1.05) < 1e-9           # widefield: nothing past its OTF support
    assert power_above(sim, cutoff / 2 * 1.1) > 5e-3       # SIM: clear power there


def test_png_layout_splits_train_and_test(tmp_path):
    root = simulate_dataset(SimulatorConfig(n_fovs=3, lr_size=32, channels=2, layout="png"), tmp_path / "png")
    assert sorted(p.name for p in (root / "train" / "sim").iterdir()) == ["001_0.png", "001_1.png", "002_0.png", "002_1.png"]
    assert sorted(p.name for p in (root / "test" / "avg16").iterdir()) == ["003_0.png", "003_1.png"]
    pairs = load_pairs(root, "png", 1, [0, 1], [1, 3])
    assert all(p.lr.max() <= 255 and p.lr.min() >= 0 for p in pairs)
    assert all(p.hr.max() > 0 for p in pairs)


def test_raw_layout_writes_uint16_frame_stacks(tmp_path):
    root = simulate_dataset(SimulatorConfig(n_fovs=2, lr_size=32, layout="raw", n_frames=400), tmp_path / "raw")
    stack = np.load(root / "Image002" / "wf_channel0.npy")
    assert stack.dtype == np.uint16 and stack.shape == (400, 32, 32)
    assert np.load(root / "Image002" / "sim_channel0.npy").shape == (64, 64)
    # frames are independent noisy captures of one scene
    assert not np.array_equal(stack[0], stack[1])
    assert np.corrcoef(stack[:200].mean(0).ravel(), stack[200:].mean(0).ravel())[0, 1] > 0.95


def test_refuses_to_replace_foreign_folder_and_reuses_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(UserError, match="mine"):
        simulate_dataset(SimulatorConfig(n_fovs=2, lr_size=32), foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"

    cfg = SimulatorConfig(n_fovs=2, lr_size=32)
    root = simulate_dataset(cfg, tmp_path / "sim")
    stamp = (root / "sim" / "001_0.npy").stat().st_mtime_ns
    simulate_dataset(cfg, root)                       # same config: reused, untouched
    assert (root / "sim" / "001_0.npy").stat().st_mtime_ns == stamp
    simulate_dataset(SimulatorConfig(n_fovs=3, lr_size=32), root)   # other config: replaced
    assert (root / "sim" / "003_0.npy").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_demo_set_is_fast(tmp_path):
    """The demo simulates 24 FOVs at 256 px; it must stay well under 30 s on a 2-core machine."""
    t0 = time.perf_counter()
    simulate_dataset(SimulatorConfig(n_fovs=24, lr_size=256, layout="npy"), tmp_path / "demo")
    assert time.perf_counter() - t0 < 30


def test_cli_simulate_with_config_and_overrides(tmp_path, capsys):
    from training.config import packaged_config

    out = tmp_path / "cli"
    assert main(["simulate", "--config", str(packaged_config("tiny")), "--out", str(out), "--n-fovs", "3",
                 "--size", "32"]) == 0
    text = capsys.readouterr().out
    assert "3 W2S-like image pairs" in text and str(out.resolve()) in text
    assert sorted(p.name for p in (out / "sim").iterdir()) == ["001_0.npy", "002_0.npy", "003_0.npy"]
    assert main(["simulate", "--out", str(tmp_path / "bad"), "--size", "8"]) == 2
    assert "lr_size" in capsys.readouterr().err
