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


def to_multiple(n: int, multiple: int) -> int:
    """px added after a side of ``n`` to reach a multiple of ``multiple``."""
    return (-int(n)) % int(multiple)


def pad_numpy(x: np.ndarray, p: int, multiple: int = 1) -> np.ndarray:
    """``(B, H, W, C)`` -> ``(B, H+2p, W+2p, C)``, mirrored with the edge pixel repeated; then, for a
    network that needs sides divisible by ``multiple`` (pooling), zeros at the bottom and right up to
    the next multiple (beyond the halo, so no kept pixel sees them; ONNX Runtime's reflect padding
    of a size computed in the graph gave other values than TensorFlow's, zeros are the same everywhere)."""
    x = np.asarray(x)
    if p:
        x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode=MODE)
    if multiple > 1:
        ey, ex = to_multiple(x.shape[1], multiple), to_multiple(x.shape[2], multiple)
        if ey or ex:
            x = np.pad(x, ((0, 0), (0, ey), (0, ex), (0, 0)))
    return x


def crop_numpy(y: np.ndarray, p: int, scale: int = 2, shape: tuple | None = None) -> np.ndarray:
    """The output of the input's own pixels: ``scale * p`` off each side (and, after a multiple's
    padding, cut to ``scale x`` the input ``shape``)."""
    c = scale * p
    if shape is not None:
        return y[:, c: c + scale * shape[0], c: c + scale * shape[1]]
    return y if c == 0 else y[:, c:-c, c:-c]


def wrap_numpy(predict: Callable[[np.ndarray], np.ndarray], p: int, scale: int = 2, multiple: int = 1) -> Callable:
    """``predict`` (B,H,W,C) -> (B,sH,sW,C') with the exported graph's padding around it."""
    if p == 0 and multiple == 1:
        return predict
    return lambda x: crop_numpy(np.asarray(predict(pad_numpy(x, p, multiple))), p, scale,
                                np.shape(x)[1:3] if multiple > 1 else None)


def pad_tf(x: Any, p: int, multiple: int = 1) -> Any:
    """:func:`pad_numpy` in TensorFlow ops every old runtime knows (the symmetric part without
    MirrorPad: tf2onnx cannot convert its SYMMETRIC mode; the multiple's part is a zero Pad of a size
    computed in the graph, ONNX Pad constant after tf2onnx)."""
    import tensorflow as tf

    for axis in (1, 2) if p else ():
        if axis == 1:
            before, after = x[:, p - 1::-1], x[:, :-p - 1:-1]
        else:
            before, after = x[:, :, p - 1::-1], x[:, :, :-p - 1:-1]
        x = tf.concat([before, x, after], axis=axis)
    if multiple > 1:
        shape = tf.shape(x)
        # (m - n mod m) mod m on non-negative numbers only: tf2onnx turns FloorMod into an integer Div,
        # which truncates towards zero, so a negative operand (-n mod m) gives a negative pad there
        ey = tf.math.floormod(multiple - tf.math.floormod(shape[1], multiple), multiple)
        ex = tf.math.floormod(multiple - tf.math.floormod(shape[2], multiple), multiple)
        x = tf.pad(x, tf.stack([[0, 0], [0, ey], [0, ex], [0, 0]]))
    return x


def crop_tf(y: Any, p: int, scale: int = 2, like: Any = None) -> Any:
    """``scale * p`` off each side of the output; with ``like`` (the unpadded input, after a
    multiple's padding), cut to ``scale x`` its size."""
    import tensorflow as tf

    c = scale * p
    if like is not None:
        shape = tf.shape(like)
        return y[:, c: c + scale * shape[1], c: c + scale * shape[2]]
    return y if c == 0 else y[:, c:-c, c:-c]
