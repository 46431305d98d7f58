"""The bundle's pre- and post-processing, in numpy, exactly as the rdf declares them.

Pre: ``zero_mean_unit_variance`` with fixed mean/std, ``(x - mean) / (std + eps)``.
Post: the affine map ``gain * y + offset`` with gain = target_std, offset = target_mean (in the rdf a
fixed ``zero_mean_unit_variance`` with mean = -offset/gain, std = 1/gain - eps; see export/rdf.py).
Both are ops DeepImageJ 3 (JDLL) implements; training applies the same two functions to its data,
so Python, the bundle and Fiji see one normalisation.
"""
from __future__ import annotations

import numpy as np

#: epsilon of bioimageio's zero_mean_unit_variance (spec default)
EPS = 1e-6


def preprocess(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Raw intensities (any dtype) -> network input, float32. Casts first (no 8/16-bit rounding)."""
    x = np.asarray(image, dtype=np.float32)
    return ((x - np.float32(mean)) / np.float32(std + EPS)).astype(np.float32)


def postprocess(output: np.ndarray, target_mean: float, target_std: float) -> np.ndarray:
    """Network output -> target (SIM) intensity units, float32."""
    y = np.asarray(output, dtype=np.float32)
    return (y * np.float32(target_std) + np.float32(target_mean)).astype(np.float32)


def inverse_preprocess(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return (np.asarray(x, np.float32) * np.float32(std + EPS) + np.float32(mean)).astype(np.float32)


def inverse_postprocess(image: np.ndarray, target_mean: float, target_std: float) -> np.ndarray:
    return ((np.asarray(image, np.float32) - np.float32(target_mean)) / np.float32(target_std)).astype(np.float32)
