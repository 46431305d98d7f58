"""PSNR/SSIM on target units with the target's data range, and the bicubic baseline."""
from __future__ import annotations

import numpy as np
import pytest

from w2sr.core.normalization import Normalization
from training import metrics


def test_psnr_known_value():
    target = np.zeros((8, 8), np.float32)
    target[0, 0] = 10.0                          # data range 10
    pred = target + 1.0                          # MSE 1
    assert metrics.psnr(pred, target) == pytest.approx(20.0, abs=1e-9)   # 10 log10(100 / 1)
    assert metrics.psnr(pred, target, data_range=1.0) == pytest.approx(0.0, abs=1e-9)


def test_psnr_uses_target_range_not_minmax_stretch():
    """An output at half the intensity is penalised; a min-max stretch would call it perfect."""
    rng = np.random.default_rng(0)
    target = rng.random((32, 32)) * 100 + 50
    pred = target / 2
    value = metrics.psnr(pred, target)
    mse = np.mean((target - pred) ** 2)
    rng_t = target.max() - target.min()
    assert value == pytest.approx(10 * np.log10(rng_t**2 / mse), rel=1e-9)
    assert value < 10
    # the original defect: stretching each image to [0, 1] makes them identical
    stretch = lambda a: (a - a.min()) / (a.max() - a.min())  # noqa: E731
    np.testing.assert_allclose(stretch(pred), stretch(target), atol=1e-12)
    assert metrics.ssim(pred, target) < 0.9


def test_ssim_known_values():
    rng = np.random.default_rng(1)
    target = rng.random((64, 64))
    assert metrics.ssim(target, target) == pytest.approx(1.0)
    # a constant prediction at the target mean: SSIM is (C1-term) * C2 / (sigma^2 + C2) per window
    flat = np.full_like(target, target.mean())
    assert 0 <= metrics.ssim(flat, target) < 0.05
    # SSIM is not invariant to an offset of the prediction (luminance term)
    shifted = metrics.ssim(target + 0.5, target)
    assert shifted < 0.9
    # matches the Wang et al. formula on a single global window (large uniform-like image check)
    from skimage.metrics import structural_similarity
    ref = structural_similarity(target, target + 0.1, data_range=1.0, gaussian_weights=True,
                                sigma=1.5, use_sample_covariance=False)
    assert metrics.ssim(target + 0.1, target) == pytest.approx(ref)


def test_metric_errors():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4)), np.zeros((4, 4)))           # constant target
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((4, 4)), np.eye(8))                  # shapes differ


def test_bicubic_keys_kernel():
    # constant and linear images are reproduced (cubic convolution is exact to 2nd order)
    const = np.full((5, 7), 3.0)
    np.testing.assert_allclose(metrics.bicubic_upscale(const), 3.0, rtol=1e-6)
    ramp = np.add.outer(np.arange(10.0), 2 * np.arange(12.0))
    up = metrics.bicubic_upscale(ramp)
    assert up.shape == (20, 24)
    yy, xx = np.meshgrid((np.arange(20) + 0.5) / 2 - 0.5, (np.arange(24) + 0.5) / 2 - 0.5, indexing="ij")
    np.testing.assert_allclose(up[3:-3, 3:-3], (yy + 2 * xx)[3:-3, 3:-3], atol=1e-4)
    # Keys a=-0.5 weights at the two 2x phases
    np.testing.assert_allclose(metrics._keys_weights(np.array([0.75]))[0],
                               [-0.0234375, 0.2265625, 0.8671875, -0.0703125])


def test_bicubic_matches_tensorflow_away_from_borders():
    tf = pytest.importorskip("tensorflow", reason="cross-check against tf.image.resize bicubic")
    a = np.random.default_rng(2).random((13, 17)).astype(np.float32)
    ours = metrics.bicubic_upscale(a)
    theirs = tf.image.resize(a[None, :, :, None], (26, 34), method="bicubic").numpy()[0, :, :, 0]
    np.testing.assert_allclose(ours[3:-3, 3:-3], theirs[3:-3, 3:-3], atol=1e-5)


def test_bicubic_baseline_goes_through_the_normalisation():
    lr = np.random.default_rng(3).random((8, 8)).astype(np.float32) * 1000
    fixed = Normalization(mode="fixed", input_mean=500.0, input_std=100.0, target_mean=2.0, target_std=4.0)
    out = metrics.bicubic_baseline(lr, fixed)
    z = (metrics.bicubic_upscale(lr) - 500.0) / (100.0 + 1e-6)
    np.testing.assert_allclose(out, z * 4.0 + 2.0, rtol=1e-4, atol=1e-3)
    # percentile mode: the bicubic image of the input scaled by its own percentiles, not mapped back
    lo, hi = np.sort(lr.ravel())[[int(64 * 0.01), int(64 * 0.998)]]
    np.testing.assert_allclose(metrics.bicubic_baseline(lr, Normalization()),
                               metrics.bicubic_upscale((lr - lo) / (hi - lo + 1e-6)), rtol=1e-5, atol=1e-5)


def test_the_one_psnr_equals_scikit_image_and_is_what_training_uses():
    from skimage.metrics import peak_signal_noise_ratio

    from training import metrics
    from w2sr.core import metrics as core

    rng = np.random.default_rng(5)
    target = rng.uniform(0, 3, (40, 30))
    pred = target + rng.normal(0, 0.05, target.shape)
    assert metrics.psnr is core.psnr
    assert core.psnr(pred, target) == pytest.approx(peak_signal_noise_ratio(target, pred, data_range=np.ptp(target)))
    assert core.psnr(target, target) == float("inf")
