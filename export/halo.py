"""The halo: how far the network's context reaches, measured so that tiles reproduce the whole image.

Beside the tiling code it serves (``w2sr.core.tiling``): ``measure_halo`` searches it on the generator,
``fit_padding`` exports the SavedModel with that much in-graph padding and grows it until DeepImageJ's
tiles (``w2sr.bundle.jdll``) and ``w2sr predict``'s tiles both reproduce the whole image within the zoo
tolerance (``w2sr.core.contract``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from w2sr.core.contract import SCALE, deepimagej_tile, zoo_close
from w2sr.core.errors import UserError
from w2sr.core.tiling import predict_tiled

log = logging.getLogger(__name__)


@dataclass
class HaloMeasurement:
    halo: int
    max_diff: float                 # tiled (this halo) vs whole, postprocessed
    too_small: Optional[int]        # halo - 1 (None when halo is 0)
    too_small_max_diff: Optional[float]
    too_small_fails: Optional[bool]
    tile: int
    image_shape: tuple
    candidates: list = field(default_factory=list)   # (halo, max diff in crops, ok)
    converged: bool = True
    seconds: float = 0.0
    generator_halo: Optional[int] = None  # measured on the generator itself (before the graph padding)


def _crop_check(predict: Callable, x: np.ndarray, ref: np.ndarray, post: Callable, h: int, core: int,
                n_pos: int = 3, scale: int = SCALE, multiple: int = 1) -> tuple[float, bool]:
    """Max diff between crops with ``h`` px of context and the whole-image output, at several places
    (on the pooling grid of a network that needs a size ``multiple``: ``h`` and ``core`` are multiples)."""

    H, W = x.shape
    ys = np.unique(np.linspace(h, H - core - h, n_pos).astype(int) // multiple * multiple)
    xs = np.unique(np.linspace(h, W - core - h, n_pos).astype(int) // multiple * multiple)
    crops, where = [], []
    for y in ys:
        for x0 in xs:
            crops.append(x[y - h: y + core + h, x0 - h: x0 + core + h])
            where.append((y, x0))
    out = post(np.asarray(predict(np.stack(crops)[..., None]))[..., 0])
    worst, ok = 0.0, True
    for k, (y, x0) in enumerate(where):
        got = out[k, scale * h: scale * (h + core), scale * h: scale * (h + core)]
        want = ref[scale * y: scale * (y + core), scale * x0: scale * (x0 + core)]
        d, good, _ = zoo_close(got, want)
        worst, ok = max(worst, d), ok and good
    return worst, ok


def tiled_max_diff(predict: Callable, x: np.ndarray, ref: np.ndarray, post: Callable, halo: int,
                   tile: int, scale: int = SCALE, multiple: int = 1) -> tuple[float, bool]:
    """predict_tiled (w2sr.core.tiling) with ``halo`` vs the whole-image output ``ref`` (postprocessed)."""
    up = (lambda n: n + (-n) % multiple) if multiple > 1 else None
    out = post(predict_tiled(predict, x, up(tile) if up else tile, halo, scale=scale, valid_size=up, align=multiple))
    d, ok, _ = zoo_close(out, ref)
    return d, ok


def measure_halo(predict: Callable, x: np.ndarray, post: Callable, *, core: int = 16,
                 confirm_core: int = 64, max_halo: Optional[int] = None, scale: int = SCALE,
                 multiple: int = 1) -> HaloMeasurement:
    """Smallest halo (input px) for which tiles reproduce the whole image within the zoo tolerance.

    ``x``: a normalised 2D image. Search on crops with ``core`` px kept and ``h`` px of context
    (doubling, then bisection), then confirmed with ``w2sr.core.tiling.predict_tiled`` over the whole
    image (tiles of ``2*halo + confirm_core``), and shown to fail with one pixel less.
    """
    t0 = time.perf_counter()
    H, W = x.shape
    m = multiple
    core, confirm_core = core + (-core) % m, confirm_core + (-confirm_core) % m
    limit = (min(H, W) - core) // 2
    if max_halo is not None:
        limit = min(limit, max_halo)
    if limit < 1:
        raise UserError(f"image {H}x{W} too small to measure a halo")
    ref = post(np.asarray(predict(x[None, :, :, None]))[0, :, :, 0])
    tried: dict[int, tuple[float, bool]] = {}

    def ok(h: int) -> bool:
        if h not in tried:
            tried[h] = _crop_check(predict, x, ref, post, h, core, scale=scale, multiple=m)
            log.debug("halo %d: max diff %.3g %s", h, *tried[h])
        return tried[h][1]

    seq = [0, 1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
    limit -= limit % m
    seq = sorted({h + (-h) % m for h in seq if h < limit} | {limit})
    lo, hi = -1, None
    for h in seq:
        if ok(h):
            hi = h
            break
        lo = h
    converged = hi is not None
    if hi is None:
        hi = limit
        log.warning("no halo up to %d px reproduces the whole image within tolerance; using %d "
                    "(measure on a larger sample image)", limit, limit)
    else:
        while hi - lo > m:  # smallest passing in (lo, hi], on multiples of m
            mid = (lo + hi) // 2 // m * m
            if mid <= lo:
                break
            if ok(mid):
                hi = mid
            else:
                lo = mid
    halo = hi
    # Confirm over the whole image with the tiler the predictor uses. A seam that still fails is
    # either missing context (a larger halo fixes it) or float32 noise (tiles of another size run
    # other conv kernels; the error then stays put when the halo grows): try a few larger halos,
    # then give up and report instead of searching on.
    tile = min(2 * halo + confirm_core, min(H, W))
    d, good = tiled_max_diff(predict, x, ref, post, halo, tile, scale, m)
    first_d, d2, h2 = d, d, halo
    if not good:
        for h2 in sorted({min(limit, v + (-v) % m) for v in (halo + 2, -(-3 * halo // 2), 2 * halo)} - {halo}):
            log.info("halo %d passed on crops but not tiled (max diff %.3g); trying %d", halo, d, h2)
            t2 = min(2 * h2 + confirm_core, min(H, W))
            d2, good2 = tiled_max_diff(predict, x, ref, post, h2, t2, scale, m)
            if good2:
                halo, tile, d, good = h2, t2, d2, True
                break
        else:
            log.warning("tiles differ from the whole image by up to %.3g (%.3g with %d px more halo): "
                        "float32 noise of the runtime where outputs are near zero, not missing context; "
                        "it exceeds the zoo tolerance", first_d, d2, h2 - halo)
    too_small = too_d = too_fails = None
    if halo > 0:  # one pixel less: on the crops (fails by construction of the search) and tiled
        too_small = halo - m
        ok(too_small)  # cached when the search already tried it
        crop_d, crop_ok = tried[too_small]
        tiled_d, tiled_ok = tiled_max_diff(predict, x, ref, post, too_small,
                                           min(2 * too_small + confirm_core, min(H, W)), scale, m)
        too_d, too_fails = max(crop_d, tiled_d), not (crop_ok and tiled_ok)
    return HaloMeasurement(halo=halo, max_diff=d, too_small=too_small, too_small_max_diff=too_d,
                           too_small_fails=too_fails, tile=tile, image_shape=(H, W),
                           candidates=[(h, v[0], v[1]) for h, v in sorted(tried.items())],
                           converged=converged and good, seconds=round(time.perf_counter() - t0, 1))


def deepimagej_max_diff(predict: Callable, x: np.ndarray, ref: np.ndarray, post: Callable, halo: int,
                        tile: int, scale: int = SCALE) -> tuple[float, bool]:
    """DeepImageJ 3.1's tiling (``w2sr.bundle.jdll``: tiles of ``tile`` px mirror-padded by ``halo``) of the
    normalised image ``x`` vs the whole-image output ``ref`` (postprocessed)."""
    from w2sr.bundle import jdll

    axis = jdll.JdllAxis(min=tile, step=0, halo=halo, scale=float(scale), out_halo=scale * halo)
    model = jdll.JdllModel(axes="byxc", y=axis, x=axis, tiling=True, preprocessing=[], postprocessing=[])
    d, ok, _ = zoo_close(post(jdll.predict(model, predict, x)), ref)
    return d, ok


def fit_padding(model: Any, zip_path: Path, source: Path, hm: HaloMeasurement, x: np.ndarray, post: Callable,
                *, tile: Optional[int], fixed: bool = False, tries: int = 4,
                scale: int = SCALE, multiple: int = 1) -> tuple[Any, HaloMeasurement]:
    """Export the SavedModel with in-graph symmetric padding = halo, and make sure that halo holds.

    The halo measured on the generator (zeros beyond a tile, one sample image) is a lower bound:
    inside the padded graph a tile's border sees mirrored pixels instead, the graph's own padding
    must outreach the network's context too, and two tilings (DeepImageJ's and ``w2sr predict``'s)
    may each be off by the tolerance in opposite directions on another image. So start with a margin
    (+50 %, at least 4 px; +25 % / 2 px let a test image through DeepImageJ's tiles differ from whole-image
    inference on one pixel by 8.5e-4) and check on ``x`` (the normalised measurement crop) that
    DeepImageJ's tiling and ``w2sr predict``'s tiling both reproduce the whole image; grow by 25 %
    while they do not. ``fixed``: the halo was given: check it as it is, no margin, no growth. ``tile``: DeepImageJ's tile, None
    for ``w2sr.core.contract.deepimagej_tile`` of each padding tried."""
    from w2sr.bundle.runtimes import SavedModelRuntime
    from export.savedmodel import export_savedmodel

    m = multiple
    h = hm.halo if fixed or hm.halo == 0 else hm.halo + max(4, -(-hm.halo // 2))
    h += (-h) % m  # JDLL's tiles start at -halo: on the pooling grid only when the halo is a multiple
    side = min(x.shape)
    side -= side % m
    for attempt in range(1 if fixed else tries):
        dij_tile = tile or deepimagej_tile(h)
        if dij_tile <= 2 * h:
            raise UserError(f"--tile {tile} must exceed twice the halo ({2 * h} px)")
        sm = export_savedmodel(model, zip_path, source=source, padding=h, scale=scale, multiple=m)
        rt = SavedModelRuntime(zip_path)
        ref = post(rt.predict(x[None, :, :, None])[0, :, :, 0])
        d_dij, ok_dij = deepimagej_max_diff(rt.predict, x, ref, post, h, min(dij_tile, side), scale)
        d_tiled, ok_tiled = tiled_max_diff(rt.predict, x, ref, post, h, min(2 * h + 16 + m, side), scale, m)
        log.info("graph padding %d px: DeepImageJ tiling max diff %.3g (%s), w2sr tiling %.3g (%s)",
                 h, d_dij, "ok" if ok_dij else "FAIL", d_tiled, "ok" if ok_tiled else "FAIL")
        if ok_dij and ok_tiled:
            break
        if not fixed and attempt + 1 < tries:
            h = -(-5 * h // 4) + 1
            h += (-h) % m
    else:
        raise UserError(f"{source}: no halo up to {h} px reproduces the whole image in DeepImageJ's tiles "
                        f"(max diff {max(d_dij, d_tiled):.3g}); measure on a larger sample or pass --halo")
    hm = HaloMeasurement(**{**asdict(hm), "halo": h, "max_diff": max(d_dij, d_tiled), "converged": True,
                            "generator_halo": hm.halo})
    return sm, hm
