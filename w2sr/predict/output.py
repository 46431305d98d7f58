"""The output file of ``w2sr predict``: an ImageJ TIFF, float32 or calibrated uint16, with the
input's pixel size halved (BigTIFF where classic TIFF cannot address it)."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from w2sr.core.files import temp_prefix
from w2sr.core.images import ImageSource

log = logging.getLogger("w2sr.predict")

FORMATS = ("float32", "uint16")


def write_output(tmp: Path, planes: Iterator[np.ndarray], shape: tuple, src: ImageSource, scale: int,
                 fmt: str, vunit: str, dst: Path) -> tuple[str, str]:
    """Write the output planes to ``tmp`` (renamed onto ``dst`` by the caller); returns the uint16
    scaling ("" for float32) and a note on the pixel size, both for the log."""
    import tifffile

    meta, resolution, cal_note = imagej_metadata(src, scale)
    if fmt == "float32":
        tifffile.imwrite(tmp, planes, shape=shape, dtype=np.float32, resolution=resolution,
                         **_tiff_kind(shape, np.float32, meta, dst))
        return "", cal_note
    return _write_uint16(tmp, planes, shape, src, resolution, meta, dst, vunit), cal_note


def imagej_metadata(src: ImageSource, scale: int) -> tuple[dict, tuple[float, float], str]:
    cal = src.calibration
    if cal.known:
        px, py, unit = cal.pixel_x / scale, cal.pixel_y / scale, cal.unit
        note = f"pixel size {cal.pixel_x:g} x {cal.pixel_y:g} {unit} -> {px:g} x {py:g} {unit}"
    else:
        px = py = 1.0 / scale
        unit = "pixel"
        note = f"no pixel size in the input; output pixel = {px:g} input pixel"
    meta: dict = {"unit": _ascii_unit(unit)}
    if src.stack_axis:
        meta["axes"] = f"{src.stack_axis}YX"
        if src.stack_axis == "Z" and cal.spacing:
            meta["spacing"] = cal.spacing
        if src.stack_axis == "T" and cal.finterval:
            meta["finterval"] = cal.finterval
    else:
        meta["axes"] = "YX"
    return meta, (1.0 / px, 1.0 / py), note


def _ascii_unit(unit: str) -> str:
    """ImageJ's description is ASCII: micrometres become 'micron', other symbols \\uXXXX escapes
    (which ImageJ's Properties reader decodes)."""
    if unit.replace("\u03bc", "\u00b5") == "\u00b5m":
        return "micron"
    return "".join(c if ord(c) < 128 else f"\\u{ord(c):04X}" for c in unit)


#: classic TIFF addresses 4 GiB; ImageJ hyperstack files are classic TIFFs (a little room for the tags)
CLASSIC_TIFF_LIMIT = 2**32 - 2**24


def _tiff_kind(shape: tuple, dtype, meta: dict, dst: Path) -> dict:
    """ImageJ TIFF, or BigTIFF for outputs classic TIFF cannot address (ImageJ's own reader cannot
    open BigTIFF; Fiji opens it with Bio-Formats): the pixel size stays in the resolution tags."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes <= CLASSIC_TIFF_LIMIT:
        return {"imagej": True, "metadata": meta}
    log.warning("%s: %.1f GiB of output is beyond classic TIFF's 4 GiB: writing a BigTIFF (open it in Fiji "
                "with Bio-Formats; plain ImageJ cannot read BigTIFF)", dst, nbytes / 2**30)
    return {"bigtiff": True, "metadata": {"axes": meta.get("axes", "YX")}}


def _write_uint16(tmp: Path, planes: Iterator[np.ndarray], shape: tuple, src: ImageSource,
                  resolution, meta: dict, dst: Path, vunit: str = "target units") -> str:
    """Two passes: float planes to a temporary .npy beside the output, then min/max -> uint16."""
    import tifffile

    fd, scratch = tempfile.mkstemp(prefix=temp_prefix(dst.name), suffix=".npy", dir=dst.parent)
    os.close(fd)
    try:
        buf = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32,
                                        shape=(src.n_slices,) + tuple(shape[-2:]))
        lo, hi = np.inf, -np.inf
        for i, p in enumerate(planes):
            buf[i] = p
            lo, hi = min(lo, float(p.min())), max(hi, float(p.max()))
        c1 = (hi - lo) / 65535.0 if hi > lo else 1.0
        c0 = lo
        scaling = f"uint16 scaling: value = {c0:.9g} + {c1:.9g} * pixel"

        def out_planes() -> Iterator[np.ndarray]:
            for i in range(src.n_slices):
                yield np.clip(np.rint((buf[i] - np.float32(c0)) / np.float32(c1)), 0, 65535).astype(np.uint16)

        meta = dict(meta, cf=0, c0=f"{c0:.9g}", c1=f"{c1:.9g}", vunit=vunit,
                    Info=f"w2sr predict: {scaling} (ImageJ calibration function cf=0, c0, c1)")
        tifffile.imwrite(tmp, out_planes(), shape=shape, dtype=np.uint16, resolution=resolution,
                         **_tiff_kind(shape, np.uint16, meta, dst))
        del buf
        return scaling
    finally:
        os.unlink(scratch)
