"""PSNR, SSIM and the bicubic baseline, in numpy/scikit-image, on images in target (SIM) units.

Why these definitions:
- ``data_range`` is the TARGET's range (max - min of the SIM image) unless given. Output and
  target are never min-max stretched separately (the original code did, which hides intensity
  errors and makes its numbers incomparable with W2S's).
- SSIM uses the settings of Wang et al. (2004): Gaussian window sigma 1.5, population
  covariance, K1 = 0.01, K2 = 0.03 (``skimage.metrics.structural_similarity`` with
  ``gaussian_weights=True, use_sample_covariance=False``).
- Bicubic: Keys cubic convolution with a = -0.5 (the kernel of MATLAB's ``imresize``, PIL and
  ``tf.image.resize(method="bicubic")``), half-pixel-centre alignment (output pixel i samples
  input coordinate (i + 0.5) / 2 - 0.5) and half-sample symmetric borders, implemented here in
  numpy so the baseline does not depend on a library's version.
"""
from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

from w2sr.core.metrics import as_2d as _as_2d, psnr, target_range  # noqa: F401 - re-exported
from w2sr.core.normalization import Normalization


def ssim(prediction: np.ndarray, target: np.ndarray, data_range: float | None = None) -> float:
    """Mean SSIM (Wang et al. 2004 settings); data_range defaults to the target's range."""
    p, t = _as_2d(prediction, "prediction"), _as_2d(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    dr = target_range(t) if data_range is None else float(data_range)
    return float(structural_similarity(t, p, data_range=dr, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def _keys_weights(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Weights of taps at offsets -1, 0, 1, 2 for a fractional position t in [0, 1)."""
    def k(x):
        x = np.abs(x)
        return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                        np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))
    t = np.asarray(t, dtype=np.float64)[..., None]
    return k(t - np.arange(-1, 3, dtype=np.float64))


def _resize_axis(a: np.ndarray, axis: int, scale: int) -> np.ndarray:
    n = a.shape[axis]
    coords = (np.arange(n * scale) + 0.5) / scale - 0.5
    base = np.floor(coords).astype(int)
    w = _keys_weights(coords - base)                       # (n*scale, 4)
    pad = 2
    padded = np.pad(np.moveaxis(a, axis, 0), [(pad, pad)] + [(0, 0)] * (a.ndim - 1), mode="symmetric")
    idx = base[:, None] + np.arange(-1, 3)[None, :] + pad  # (n*scale, 4)
    out = np.einsum("ok,ok...->o...", w, padded[idx])
    return np.moveaxis(out, 0, axis)


def bicubic_upscale(image: np.ndarray, scale: int = 2) -> np.ndarray:
    """Keys (a=-0.5) bicubic upsampling of a 2-D image by an integer factor, float32."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"bicubic_upscale expects a 2-D image, got shape {a.shape}")
    return _resize_axis(_resize_axis(a, 0, scale), 1, scale).astype(np.float32)


def bicubic_baseline(lr: np.ndarray, norm: Normalization, scale: int = 2) -> np.ndarray:
    """The bicubic baseline in output units: the "network" that only upsamples.

    LR (raw units) -> the model's input normalisation -> bicubic x2 -> the model's output map. In fixed
    mode bicubic weights sum to 1, so this equals rescaling the bicubic image from input to target
    statistics; in percentile mode it is the bicubic image of the percentile-scaled input.
    """
    return norm.output(bicubic_upscale(norm.input(lr), scale))


def image_metrics(prediction: np.ndarray, target: np.ndarray, data_range: float | None = None) -> dict:
    """{"psnr", "ssim", "data_range"} of one image against its target."""
    dr = target_range(target) if data_range is None else float(data_range)
    return {"psnr": psnr(prediction, target, dr), "ssim": ssim(prediction, target, dr), "data_range": dr}
