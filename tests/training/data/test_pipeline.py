"""Patches, normalisation and the augmented tf.data pipeline (pairing, per-sample/per-epoch randomness)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from w2sr.core.normalization import postprocess, preprocess
from training.config import DataConfig, NormalizationConfig, SimulatorConfig
from training.data.layouts import ImagePair, load_pairs
from training.data.pipeline import (
    PatchSource,
    compute_normalization,
    count_batches_per_epoch,
    make_train_dataset,
    normalize_pair,
    patch_grid,
    patch_index,
)
from training.data.simulator import simulate_dataset
from w2sr.core.errors import DataError

tf = pytest.importorskip("tensorflow", reason="the training pipeline is tf.data")

#: normalisation that leaves values unchanged (preprocess divides by std + 1e-6), so patches can be
#: traced back to the image they came from
IDENTITY = NormalizationConfig(input_mean=0.0, input_std=1.0 - 1e-6, target_mean=0.0, target_std=1.0)


def _cfg(**kw) -> DataConfig:
    return DataConfig(root=Path("unused"), train_fovs=[1, 2, 3, 4], val_fovs=[4], test_fovs=[5], **kw)


def _pair(i: int, lr: np.ndarray, hr: np.ndarray) -> ImagePair:
    return ImagePair(f"{i:03d}_0", i, 0, lr.astype(np.float32), hr.astype(np.float32), Path(f"lr{i}"), Path(f"hr{i}"))


def _unique_pairs(n_images=4, size=256):
    """LR with all-distinct values; HR = its exact 2x nearest-neighbour upsampling."""
    pairs = []
    for i in range(n_images):
        lr = (np.arange(size * size, dtype=np.float64) + i * size * size).reshape(size, size)
        pairs.append(_pair(i + 1, lr, np.repeat(np.repeat(lr, 2, 0), 2, 1)))
    return pairs


# ------------------------------------------------------------------ patch grid
def test_225_patches_per_512_image():
    grid = patch_grid(512, 512, 64, 0.5, "shift")
    assert len(grid) == 225 and grid[0] == (0, 0) and grid[-1] == (448, 448)
    assert len(patch_grid(512, 512, 64, 0.5, "crop")) == 225
    pairs = [_pair(1, np.zeros((512, 512)), np.zeros((1024, 1024)))]
    assert count_batches_per_epoch(pairs, _cfg(), 16) == 225 // 16


def test_unaligned_sizes_shift_or_crop():
    # 100 px, patch 64, stride 32: starts 0, 32 (ends at 96); 4 px remain
    assert sorted({y for y, _ in patch_grid(100, 64, 64, 0.5, "crop")}) == [0, 32]
    assert sorted({y for y, _ in patch_grid(100, 64, 64, 0.5, "shift")}) == [0, 32, 36]
    assert patch_grid(100, 64, 64, 0.5, "shift")[-1] == (36, 0)
    assert len(patch_grid(64, 64, 64, 0.0, "shift")) == 1
    with pytest.raises(DataError, match="smaller than the 64x64"):
        patch_grid(63, 128, 64, 0.5)
    with pytest.raises(DataError, match="lr7"):
        patch_index([_pair(7, np.zeros((32, 32)), np.zeros((64, 64)))], _cfg())


# ------------------------------------------------------------------ normalisation
def test_normalization_statistics_and_formulas():
    rng = np.random.default_rng(0)
    pairs = [_pair(i, rng.normal(150, 60, (32, 32)), rng.normal(160, 70, (64, 64))) for i in range(3)]
    norm = compute_normalization(pairs)
    all_lr = np.concatenate([p.lr.ravel() for p in pairs]).astype(np.float64)
    all_hr = np.concatenate([p.hr.ravel() for p in pairs]).astype(np.float64)
    assert norm.input_mean == pytest.approx(all_lr.mean()) and norm.input_std == pytest.approx(all_lr.std())
    assert norm.target_mean == pytest.approx(all_hr.mean()) and norm.target_std == pytest.approx(all_hr.std())
    lr_n, hr_n = normalize_pair(pairs[0], norm)
    np.testing.assert_array_equal(lr_n, preprocess(pairs[0].lr, norm.input_mean, norm.input_std))
    # the network output is mapped to SIM units by the bundle's postprocessing: inverse of training's
    np.testing.assert_allclose(postprocess(hr_n, norm.target_mean, norm.target_std), pairs[0].hr, rtol=1e-5)
    with pytest.raises(DataError, match="all widefield pixels are equal"):
        compute_normalization([_pair(1, np.ones((8, 8)), np.ones((16, 16)))])
    with pytest.raises(ValueError, match="not set"):
        normalize_pair(pairs[0], NormalizationConfig(mode="fixed"))


def test_whole_images_are_normalised_like_training():
    pairs = _unique_pairs(1, 64)
    norm = compute_normalization(pairs)
    lr, hr = normalize_pair(pairs[0], norm)
    assert lr.shape == (64, 64) and hr.shape == (128, 128)
    assert abs(float(lr.mean())) < 1e-3 and abs(float(hr.std()) - 1) < 1e-3
    # percentile mode: input and target each scaled by their own 1st / 99.8th percentiles
    lr, hr = normalize_pair(pairs[0], NormalizationConfig())
    for scaled in (lr, hr):
        assert np.mean(scaled < 0) == pytest.approx(0.01, abs=2e-3)
        assert np.mean(scaled > 1) == pytest.approx(0.002, abs=2e-3)


def test_percentile_mode_names_the_file_whose_percentiles_coincide():
    flat = np.zeros((32, 32), np.float32)
    flat[0, 0] = 1.0  # constant but for one pixel: the 1st and 99.8th percentiles are both 0
    pair = _pair(3, flat, np.random.default_rng(0).random((64, 64)))
    with pytest.raises(DataError, match=r"lr3.*percentiles are equal"):
        normalize_pair(pair, NormalizationConfig())


# ------------------------------------------------------------------ tf.data
def _dihedral(x):
    """The 8 results of (maybe hflip, maybe vflip, maybe rot90) in a fixed order; index 0 = identity."""
    out = []
    for rot in (False, True):
        for v in (False, True):
            for h in (False, True):
                y = x[:, ::-1] if h else x
                y = y[::-1, :] if v else y
                out.append(np.rot90(y) if rot else y)
    return out


def _epoch(pairs, seed, epoch, cfg=None, batch=8):
    ds = make_train_dataset(pairs, cfg or _cfg(), IDENTITY, batch, seed, epoch)
    lrs, hrs = zip(*[(lr.numpy(), hr.numpy()) for lr, hr in ds])
    return np.concatenate(lrs), np.concatenate(hrs)


def _transforms(pairs, lrs):
    """For each sample: (patch id = its original top-left value, which of the 8 transforms was applied)."""
    size = pairs[0].lr.shape[0]
    images = np.stack([p.lr for p in pairs])
    result = {}
    for patch in lrs[..., 0]:
        v = int(patch.min())
        i, y, x = v // (size * size), (v % (size * size)) // size, v % size
        original = images[i, y:y + 64, x:x + 64]
        (t,) = [k for k, cand in enumerate(_dihedral(original)) if np.array_equal(cand, patch)]
        result[v] = t
    return result


@pytest.fixture(scope="module")
def unique():
    pairs = _unique_pairs()
    return pairs, _epoch(pairs, seed=5, epoch=0)


def test_batches_shapes_and_count(unique):
    pairs, _ = unique
    ds = make_train_dataset(pairs, _cfg(), IDENTITY, 8, seed=5, epoch=0)
    assert ds.element_spec[0].shape.as_list() == [8, 64, 64, 1]
    assert ds.element_spec[1].shape.as_list() == [8, 128, 128, 1]
    assert ds.element_spec[0].dtype == tf.float32 and ds.element_spec[1].dtype == tf.float32
    n = count_batches_per_epoch(pairs, _cfg(), 8)
    assert n == 4 * 49 // 8 == sum(1 for _ in ds)


def test_lr_hr_stay_paired_under_shuffle_and_augmentation(unique):
    pairs, (lrs, hrs) = unique
    for lr, hr in zip(lrs[..., 0], hrs[..., 0]):
        # HR was the 2x nearest upsampling of LR: any identical transform keeps this exact
        np.testing.assert_allclose(hr[::2, ::2], lr, rtol=1e-6)
        np.testing.assert_allclose(hr[1::2, 1::2], lr, rtol=1e-6)


def test_transforms_differ_across_samples_and_follow_the_report_odds(unique):
    pairs, (lrs, _) = unique
    t = _transforms(pairs, lrs)
    assert len(t) == len(lrs) == 192  # every sample is a distinct patch (no repeats within an epoch)
    counts = np.bincount(list(t.values()), minlength=8)
    assert (counts > 0).sum() >= 7
    # P(unchanged) = 0.5 + 0.5 / 8 = 0.5625
    assert 0.42 < counts[0] / len(t) < 0.71


def test_same_seed_and_epoch_rebuild_identically_other_epoch_differs(unique):
    pairs, (lrs, hrs) = unique
    lrs2, hrs2 = _epoch(pairs, seed=5, epoch=0)
    np.testing.assert_array_equal(lrs, lrs2)
    np.testing.assert_array_equal(hrs, hrs2)
    lrs3, _ = _epoch(pairs, seed=5, epoch=1)
    assert not np.array_equal(lrs[:, 0, 0, 0], lrs3[:, 0, 0, 0])           # order reshuffled
    t0, t1 = _transforms(pairs, lrs), _transforms(pairs, lrs3)
    common = set(t0) & set(t1)
    assert len(common) > 150
    assert np.mean([t0[k] == t1[k] for k in common]) < 0.75                 # transforms redrawn
    lrs4, _ = _epoch(pairs, seed=6, epoch=0)
    assert not np.array_equal(lrs, lrs4)


def test_resume_by_skipping_done_batches(unique):
    pairs, (lrs, _) = unique
    source = PatchSource(pairs, _cfg(), IDENTITY)   # built once, reused for every epoch of a run
    assert source.batches_per_epoch(8) == 24
    rest = np.concatenate([lr.numpy() for lr, _ in source.dataset(8, seed=5, epoch=0).skip(10)])
    np.testing.assert_array_equal(rest, lrs[80:])


def test_no_augmentation_when_disabled(unique):
    pairs, _ = unique
    lrs, _ = _epoch(pairs, seed=5, epoch=0, cfg=_cfg(augment=False))
    assert set(_transforms(pairs, lrs).values()) == {0}


def test_end_to_end_from_simulated_files(tmp_path):
    root = simulate_dataset(SimulatorConfig(n_fovs=2, lr_size=64, layout="npy"), tmp_path / "sim")
    pairs = load_pairs(root, "npy", 1, [0], [1, 2])
    norm = compute_normalization(pairs)
    ds = make_train_dataset(pairs, _cfg(overlap=0.0), norm, 2, seed=0, epoch=0)
    (lr, hr), = list(ds)
    assert lr.shape == (2, 64, 64, 1) and hr.shape == (2, 128, 128, 1)
    # one 64x64 patch per image: the whole image, normalised with the training statistics
    assert abs(float(tf.reduce_mean(lr))) < 0.05 and abs(float(tf.reduce_mean(hr))) < 0.05
    with pytest.raises(DataError, match="fewer than one batch"):
        make_train_dataset(pairs, _cfg(overlap=0.0), norm, 3, seed=0, epoch=0)
