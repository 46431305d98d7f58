"""The exported network's own border handling: symmetric padding by ``p`` px inside the graph.

Why: DeepImageJ 3.1 (JDLL 0.6.1) pads every tile, even a single whole-image tile, by the halo with
``Views.extendMirrorDouble`` (numpy ``symmetric``) before inference, while ``bioimageio test`` and
Python users run the whole image unpadded. A plain convolutional network sees zeros beyond the
image in one case and mirrored pixels in the other, so the borders differ (up to 289 counts on the
demo bundle). The exported graph therefore pads its input symmetrically by ``p`` (the measured
halo) and crops ``scale * p`` from its output: the network then sees mirrored context at the image
border however it is called, and DeepImageJ's extra mirror padding changes nothing the halo can see.

Built from slices and concatenations only (``StridedSlice`` with stride -1, ``ConcatV2``), which
TensorFlow 1.15 / 2.7 / 2.10 load and tf2onnx turns into ONNX ``Slice`` / ``Concat`` (ONNX has no
symmetric ``Pad`` mode at opset 17). Inputs must be at least ``p`` px on each side.

One definition for every runtime: :func:`pad_tf` goes into the frozen SavedModel (and so the ONNX),
:func:`pad_numpy` wraps the Keras generator in the parity matrix; both are ``numpy.pad(...,
mode="symmetric")`` exactly.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

MODE = "symmetric"


def symmetric_indices(start: int, length: int, n: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` folded into ``0..n-1`` by mirroring with the edge pixel
    repeated (numpy ``symmetric``; ImgLib2's ``extendMirrorDouble``), at any distance from the image."""
    i = np.arange(start, start + length) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i).astype(np.intp)


def pad_numpy(x: np.ndarray, p: int) -> np.ndarray:
    """``(B, H, W, C)`` -> ``(B, H+2p, W+2p, C)``, mirrored with the edge pixel repeated."""
    if p == 0:
        return np.asarray(x)
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=MODE)


def crop_numpy(y: np.ndarray, p: int, scale: int = 2) -> np.ndarray:
    c = scale * p
    return y if c == 0 else y[:, c:-c, c:-c]


def wrap_numpy(predict: Callable[[np.ndarray], np.ndarray], p: int, scale: int = 2) -> Callable:
    """``predict`` (B,H,W,1) -> (B,sH,sW,1) with the exported graph's padding around it."""
    if p == 0:
        return predict
    return lambda x: crop_numpy(np.asarray(predict(pad_numpy(x, p))), p, scale)


def pad_tf(x: Any, p: int) -> Any:
    """:func:`pad_numpy` in TensorFlow ops every old runtime knows (no MirrorPad: tf2onnx cannot
    convert its SYMMETRIC mode)."""
    import tensorflow as tf

    if p == 0:
        return x
    for axis in (1, 2):
        if axis == 1:
            before, after = x[:, p - 1::-1], x[:, :-p - 1:-1]
        else:
            before, after = x[:, :, p - 1::-1], x[:, :, :-p - 1:-1]
        x = tf.concat([before, x, after], axis=axis)
    return x


def crop_tf(y: Any, p: int, scale: int = 2) -> Any:
    c = scale * p
    return y if c == 0 else y[:, c:-c, c:-c]
