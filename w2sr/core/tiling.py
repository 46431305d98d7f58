"""Whole-image prediction with a fully convolutional 2x model, in tiles whose memory is bounded.

Two functions, used by ``w2sr predict`` and by the exporter (halo measurement, tiled-vs-whole parity)::

    predict_whole(predict_fn, image, valid_size=None, scale=2) -> (scale*H, scale*W) float32
    predict_tiled(predict_fn, image, tile, halo, scale=2, valid_size=None, batch=1) -> same

and helpers: ``balanced_tile(shape, tile, halo, valid_size)`` (the per-axis tile sizes ``w2sr predict``
uses: as many tiles as ``tile`` needs, spread evenly, so less overlap), ``count_tiles``,
``tile_starts``, ``canvas_shape``, ``mirror_indices``.

``predict_fn`` maps a float32 batch ``(B, h, w, 1)`` to ``(B, scale*h, scale*w, 1)`` (a trailing
channel axis of 1 may be missing). ``image`` is a 2D array of any real dtype: normally already
pre-processed (normalised), or raw when ``predict_fn`` normalises each tile itself (per-pixel
processing gives the same numbers per tile as on the whole image). Tiles are gathered as float32.

``valid_size`` is ``n -> smallest input side the model accepts that is >= n`` (for a bundle,
``BundleInfo.valid_size_at_least``); None means every size is accepted.

How the two agree (so that tiled == whole once the halo covers the receptive field):

* Both work on one virtual *canvas*: the image mirrored (``numpy.pad`` mode ``symmetric``, the edge
  pixel repeated, as in ``w2sr.core.padding``) at its bottom and right up to ``valid_size(H) x valid_size(W)``.
  The canvas is never materialised; tiles are gathered from the image with mirrored indices.
* ``predict_whole`` runs the model once on the canvas and crops the output to ``scale*H x scale*W``.
* ``predict_tiled`` covers the canvas with tiles of one size (``valid_size(tile)``, or the canvas
  side when that is smaller). The first tile starts at 0 and the last ends at the canvas edge, so
  the network sees the same borders as on the whole canvas; neighbouring tiles overlap by at least
  ``2*halo`` and each keeps its own half of the overlap, so every kept pixel has >= ``halo`` pixels of
  real context towards the inside of the image. No blending: each output pixel comes from exactly
  one tile.

Memory: the output array plus one batch of tiles (input and output); nothing else image-sized.
Tiles are placed at any offset (fine for networks without strided layers, such as RRDBNet), or at
multiples of ``align`` for a network with pooling (its grid must be the whole image's).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import numpy as np

from w2sr.core.padding import symmetric_indices

PredictFn = Callable[[np.ndarray], np.ndarray]
ValidSize = Optional[Callable[[int], int]]

__all__ = ["predict_tiled", "predict_whole", "balanced_tile", "count_tiles", "tile_starts", "mirror_indices",
           "canvas_shape"]


def mirror_indices(n_out: int, n: int) -> np.ndarray:
    """Indices 0..n_out-1 folded into 0..n-1 by mirroring with the edge pixel repeated (numpy
    ``symmetric``): the same context the exported graph's own padding and DeepImageJ's
    ``extendMirrorDouble`` give, so a canvas padded here changes no pixel of the image."""
    return symmetric_indices(0, n_out, n)


def mirror_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2D image mirrored (numpy ``symmetric``) up to ``shape``, anchored at the top left."""
    h, w = image.shape[:2]
    return image[np.ix_(mirror_indices(shape[0], h), mirror_indices(shape[1], w))]


def center_crop(image: np.ndarray, size: int, mirror: bool = False) -> np.ndarray:
    """The central ``size`` x ``size`` window of a 2D image. A side shorter than ``size`` is kept whole,
    or with ``mirror`` first mirrored up to ``size`` (:func:`mirror_indices`: no pixel changes)."""
    h, w = image.shape[:2]
    if mirror and (h < size or w < size):
        image = mirror_to(image, (max(h, size), max(w, size)))
        h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.ascontiguousarray(image[y:y + ch, x:x + cw])


def canvas_shape(shape: tuple[int, int], valid_size: ValidSize = None) -> tuple[int, int]:
    """The padded size the model is run on for an image of ``shape``."""
    vs = valid_size or (lambda n: n)
    out = tuple(int(vs(int(n))) for n in shape)
    for n, v in zip(shape, out):
        if v < n:
            raise ValueError(f"valid_size({n}) returned {v}, smaller than the image")
    return out  # type: ignore[return-value]


def tile_starts(length: int, tile: int, halo: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``0..length`` with overlaps >= 2*halo.

    The first start is 0, the last is ``length - tile``; starts are spread evenly. ``align``: every
    start a multiple of it (a network with pooling gives the whole image's pixels only on tiles that
    keep its pooling grid; ``length`` and ``tile`` must then be multiples of it too).
    """
    if tile >= length:
        return [0]
    core = tile - 2 * halo - (align - 1)  # rounding a start down costs up to align - 1 px of overlap
    if core < 1:
        raise ValueError(f"tile {tile} must be larger than 2 * halo ({2 * halo})" +
                         (f" + {align - 1} (alignment)" if align > 1 else ""))
    if align > 1 and (length % align or tile % align):
        raise ValueError(f"aligned tiles need a length ({length}) and tile ({tile}) divisible by {align}")
    n = 1 + math.ceil((length - tile) / core)
    return [(i * (length - tile)) // (n - 1) // align * align for i in range(n)]


def _keep_ranges(starts: list[int], tile: int) -> list[tuple[int, int]]:
    """Which canvas span each tile owns: the overlaps are cut in their middle."""
    ranges = []
    for i, s in enumerate(starts):
        lo = 0 if i == 0 else (s + starts[i - 1] + tile) // 2
        hi = s + tile if i == len(starts) - 1 else (starts[i + 1] + s + tile) // 2
        ranges.append((lo, hi))
    return ranges


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"empty image, shape {image.shape}")
    return image


def _call(predict_fn: PredictFn, batch: np.ndarray, scale: int) -> np.ndarray:
    b, h, w = batch.shape[:3]
    out = np.asarray(predict_fn(batch))
    if out.ndim == 4 and out.shape[-1] == 1:
        out = out[..., 0]
    if out.shape != (b, scale * h, scale * w):
        raise ValueError(
            f"model output has shape {out.shape} for input {batch.shape}; "
            f"expected ({b}, {scale * h}, {scale * w}, 1)"
        )
    return out


def predict_whole(predict_fn: PredictFn, image: np.ndarray, valid_size: ValidSize = None,
                  scale: int = 2) -> np.ndarray:
    """Run the model once on the mirrored canvas; return the ``(scale*H, scale*W)`` float32 crop."""
    image = _check_image(image)
    h, w = image.shape
    ch, cw = canvas_shape((h, w), valid_size)
    canvas = image[np.ix_(mirror_indices(ch, h), mirror_indices(cw, w))].astype(np.float32)
    out = _call(predict_fn, canvas[None, :, :, None], scale)[0]
    return np.ascontiguousarray(out[: scale * h, : scale * w], dtype=np.float32)


def iter_tiles(shape: tuple[int, int], tile: int | tuple[int, int], halo: int,
               valid_size: ValidSize = None, align: int = 1) -> Iterator[tuple[int, int, int, int, int, int, int, int]]:
    """Yield ``(y0, x0, th, tw, ky0, ky1, kx0, kx1)``: tile origin and size on the canvas, and the
    canvas span it owns (clipped to the image)."""
    h, w = shape
    ch, cw = canvas_shape((h, w), valid_size)
    ty_req, tx_req = (tile, tile) if isinstance(tile, int) else tile
    vs = valid_size or (lambda n: n)
    th, tw = min(int(vs(int(ty_req))), ch), min(int(vs(int(tx_req))), cw)
    ys, xs = tile_starts(ch, th, halo, align), tile_starts(cw, tw, halo, align)
    for y0, (ky0, ky1) in zip(ys, _keep_ranges(ys, th)):
        if ky0 >= h:
            continue  # owns only mirrored padding
        for x0, (kx0, kx1) in zip(xs, _keep_ranges(xs, tw)):
            if kx0 >= w:
                continue
            yield y0, x0, th, tw, ky0, min(ky1, h), kx0, min(kx1, w)


def count_tiles(shape: tuple[int, int], tile: int | tuple[int, int], halo: int,
                valid_size: ValidSize = None, align: int = 1) -> int:
    return sum(1 for _ in iter_tiles(shape, tile, halo, valid_size, align))


def balanced_tile(shape: tuple[int, int], tile: int, halo: int, valid_size: ValidSize = None,
                  align: int = 1) -> tuple[int, int]:
    """Per-axis tile sizes, no larger than ``tile``, that need the same number of tiles but overlap less.

    With tiles of ``tile`` px, an image just over a multiple of the tile pays for a nearly empty
    extra tile row; spreading the same number of tiles evenly needs only
    ``ceil((L - 2*halo) / n) + 2*halo`` px each (rounded up to a valid size). Same model calls,
    less compute, less memory; the result is tiled == whole exactly as before.
    """
    vs = valid_size or (lambda n: n)
    out = []
    for length in canvas_shape(shape, valid_size):
        t = min(int(vs(int(tile))), length)
        if t >= length:
            out.append(length)
            continue
        n = len(tile_starts(length, t, halo, align))
        need = -(-(length - 2 * halo) // n) + 2 * halo + (align - 1)
        out.append(min(int(vs(need)), t))
    return out[0], out[1]


def predict_tiled(predict_fn: PredictFn, image: np.ndarray, tile: int | tuple[int, int], halo: int,
                  scale: int = 2, valid_size: ValidSize = None, batch: int = 1,
                  progress: Optional[Callable[[int], None]] = None, align: int = 1) -> np.ndarray:
    """Predict ``image`` tile by tile; return the stitched ``(scale*H, scale*W)`` float32 output.

    ``tile``: requested tile side in input pixels, halo included (rounded up by ``valid_size``,
    reduced to the canvas when the image is smaller); an ``(h, w)`` pair is accepted too.
    ``halo``: context in input pixels kept on each inner side of every tile; must be < tile/2.
    ``batch``: tiles per ``predict_fn`` call. ``align``: tile starts on multiples of it (pooling
    networks; ``valid_size`` must then give multiples of it). ``progress(n)`` is called after each batch with the
    number of tiles done in it.
    """
    image = _check_image(image)
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    h, w = image.shape
    ch, cw = canvas_shape((h, w), valid_size)
    out = np.empty((scale * h, scale * w), dtype=np.float32)
    rows_cache: dict[int, np.ndarray] = {}
    cols_cache: dict[int, np.ndarray] = {}
    pending: list[tuple[int, int, int, int, int, int, int, int]] = []
    tiles_in: Optional[np.ndarray] = None

    def flush() -> None:
        n = len(pending)
        result = _call(predict_fn, tiles_in[:n], scale)  # type: ignore[index]
        for k, (y0, x0, _, _, ky0, ky1, kx0, kx1) in enumerate(pending):
            out[scale * ky0: scale * ky1, scale * kx0: scale * kx1] = result[
                k, scale * (ky0 - y0): scale * (ky1 - y0), scale * (kx0 - x0): scale * (kx1 - x0)]
        if progress is not None:
            progress(n)
        pending.clear()

    for spec in iter_tiles((h, w), tile, halo, valid_size, align):
        y0, x0, th, tw = spec[:4]
        if tiles_in is None:
            tiles_in = np.empty((batch, th, tw, 1), dtype=np.float32)
        if y0 not in rows_cache:
            rows_cache[y0] = mirror_indices(ch, h)[y0: y0 + th]
        if x0 not in cols_cache:
            cols_cache[x0] = mirror_indices(cw, w)[x0: x0 + tw]
        tiles_in[len(pending), :, :, 0] = image[np.ix_(rows_cache[y0], cols_cache[x0])]
        pending.append(spec)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return out
