"""PSNR, the one image metric every layer uses (training's evaluation, the exporter's fast-mode
report, the predictor's accuracy guard): 10 log10(peak^2 / MSE), the peak being the REFERENCE's
range (max - min), never each image stretched on its own."""
from __future__ import annotations

import numpy as np


def as_2d(image: np.ndarray, what: str) -> np.ndarray:
    """``image`` squeezed to one 2-D float64 plane, or a ValueError naming ``what``."""
    a = np.squeeze(np.asarray(image, dtype=np.float64))
    if a.ndim != 2:
        raise ValueError(f"{what} must be a single 2-D image, got shape {np.shape(image)}")
    return a


def target_range(target: np.ndarray) -> float:
    """The data range used for PSNR: max - min of the reference image."""
    t = np.asarray(target, dtype=np.float64)
    rng = float(t.max() - t.min())
    if not np.isfinite(rng) or rng <= 0:
        raise ValueError("target image is constant or not finite: PSNR/SSIM undefined")
    return rng


def psnr_of_mse(mse: float, peak: float) -> float:
    """10 log10(peak^2 / mse) in dB; infinite for a perfect match."""
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


def psnr(prediction: np.ndarray, target: np.ndarray, data_range: float | None = None) -> float:
    """PSNR in dB of ``prediction`` against ``target``; data_range defaults to the target's range."""
    p, t = as_2d(prediction, "prediction"), as_2d(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} differ in shape")
    dr = target_range(t) if data_range is None else float(data_range)
    return psnr_of_mse(float(np.mean((p - t) ** 2)), dr)
