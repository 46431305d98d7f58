"""Reading microscopy images: TIFF (ImageJ, OME or plain; 2D or one stack axis), PNG and NPY.

One reader for every part that takes an image from a user (``w2sr predict``, the export's sample
image): shapes, dtypes and values are checked on opening, and a bad file raises a one-line
:class:`~w2sr.core.errors.DataError` naming it. Slices are read lazily, so a stack is never held whole.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from w2sr.core.errors import DataError, one_line

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
#: smallest image side we accept; smaller images are junk rather than microscopy
MIN_SIDE = 8


@dataclass
class Calibration:
    pixel_y: Optional[float] = None   # input pixel size, in `unit`
    pixel_x: Optional[float] = None
    unit: Optional[str] = None
    spacing: Optional[float] = None   # Z step (kept as is)
    finterval: Optional[float] = None  # T step (kept as is)

    @property
    def known(self) -> bool:
        return self.pixel_x is not None and self.pixel_y is not None and bool(self.unit)


@dataclass
class ImageSource:
    """An opened input: shape checked, slices read lazily."""
    path: Path
    n_slices: int
    height: int
    width: int
    stack_axis: Optional[str]          # None for 2D, "Z" or "T" for stacks
    dtype: np.dtype
    calibration: Calibration
    read_slice: Callable[[int], np.ndarray]
    close: Callable[[], None] = lambda: None


def fail(path: Path, message: str) -> DataError:
    return DataError(f"{path}: {message}")


def _check_plane_shape(path: Path, shape: tuple[int, ...]) -> None:
    if any(n == 0 for n in shape):
        raise fail(path, f"empty image (shape {tuple(shape)})")
    h, w = shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise fail(path, f"image too small ({h}x{w} px; each side must be at least {MIN_SIDE} px)")


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "buif":
        raise fail(path, f"unsupported pixel type {dtype} (expected integer or float)")


def _stack_axis_name(axis: str) -> str:
    return "T" if axis == "T" else "Z"


def _tiff_calibration(tif) -> Calibration:
    cal = Calibration()
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    ij = tif.imagej_metadata or {}
    if ij:
        cal.spacing = _float_or_none(ij.get("spacing"))
        cal.finterval = _float_or_none(ij.get("finterval"))
    if tif.is_ome:
        try:
            root = ET.fromstring(tif.ome_metadata)
            pixels = next(el for el in root.iter() if el.tag.endswith("Pixels"))
            px, py = pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeY")
            if px and py:
                cal.pixel_x, cal.pixel_y = float(px), float(py)
                cal.unit = pixels.get("PhysicalSizeXUnit", "µm")
                if pixels.get("PhysicalSizeZ"):
                    cal.spacing = float(pixels.get("PhysicalSizeZ"))
                return cal
        except (ET.ParseError, StopIteration, ValueError, TypeError):
            pass
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if xres is None or yres is None:
        return cal
    try:
        rx = xres.value[0] / xres.value[1]
        ry = yres.value[0] / yres.value[1]
    except (TypeError, ZeroDivisionError, IndexError):
        return cal
    if rx <= 0 or ry <= 0:
        return cal
    unit_tag = page.tags.get("ResolutionUnit")
    res_unit = int(unit_tag.value) if unit_tag is not None else 2
    if ij.get("unit"):
        cal.unit = str(ij["unit"])
        cal.pixel_x, cal.pixel_y = 1.0 / rx, 1.0 / ry
    elif res_unit == 2 and not (rx == 1 and ry == 1):      # inch
        cal.unit, cal.pixel_x, cal.pixel_y = "micron", 25400.0 / rx, 25400.0 / ry
    elif res_unit == 3:                                   # centimetre
        cal.unit, cal.pixel_x, cal.pixel_y = "micron", 10000.0 / rx, 10000.0 / ry
    return cal


def _float_or_none(v) -> Optional[float]:
    try:
        return float(v) if v is not None else None
    except (TypeError, ValueError):
        return None


def _open_tiff(path: Path) -> ImageSource:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises many types for broken files
        raise fail(path, f"not a readable TIFF ({type(exc).__name__}: {one_line(exc)})") from None
    try:
        if not tif.series:
            raise fail(path, "not a readable TIFF (no image found in it)")
        series = tif.series[0]
        shape, axes = tuple(series.shape), str(series.axes)
        dtype = np.dtype(series.dtype)
        _check_dtype(path, dtype)
        if "S" in axes and shape[axes.index("S")] > 1:
            raise fail(path, f"RGB/multi-sample image ({shape[axes.index('S')]} samples per pixel, axes "
                              f"{axes}); save a single-channel (grayscale) image")
        if "C" in axes and shape[axes.index("C")] > 1:
            raise fail(path, f"multi-channel image ({shape[axes.index('C')]} channels, axes {axes}); "
                              "split the channels and predict each")
        keep = [i for i, n in enumerate(shape) if n != 1 or axes[i] in "YX"]
        shape = tuple(shape[i] for i in keep)
        axes = "".join(axes[i] for i in keep)
        if len(shape) < 2:
            raise fail(path, f"not a 2D image (shape {shape})")
        if len(shape) > 3:
            raise fail(path, f"{len(shape)}D image (shape {shape}, axes {axes}); only 2D images and "
                              "single stacks (Z or T) are supported")
        _check_plane_shape(path, shape)
        h, w = shape[-2:]
        n = shape[0] if len(shape) == 3 else 1
        stack_axis = _stack_axis_name(axes[0]) if len(shape) == 3 else None
        calibration = _tiff_calibration(tif)
        whole: dict[str, np.ndarray] = {}
        by_page = len(series.pages) == n

        def read_slice(i: int) -> np.ndarray:
            nonlocal by_page
            try:
                if by_page:
                    a = tif.asarray(key=i, series=0)
                    if a.size == h * w:
                        return a.reshape(h, w)
                    by_page = False
                if "a" not in whole:  # pages are not slices: read the series once (memory-mapped)
                    whole["a"] = series.asarray(out="memmap").reshape(n, h, w)
                return whole["a"][i]
            except DataError:
                raise
            except Exception as exc:
                raise fail(path, f"cannot read slice {i} ({type(exc).__name__}: {one_line(exc)})") from None

        return ImageSource(path, n, h, w, stack_axis, dtype, calibration, read_slice, tif.close)
    except BaseException:
        tif.close()
        raise


def _open_png(path: Path) -> ImageSource:
    import imageio.v3 as iio

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            raise fail(path, "not a readable PNG (no PNG signature)")
    try:
        a = np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as exc:
        raise fail(path, f"not a readable PNG ({type(exc).__name__}: {one_line(exc)})") from None
    _check_dtype(path, a.dtype)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (2, 3, 4):
        kind = {2: "gray+alpha", 3: "RGB", 4: "RGBA"}[a.shape[-1]]
        raise fail(path, f"{kind} image (shape {a.shape}); save a single-channel (grayscale) image")
    if a.ndim != 2:
        raise fail(path, f"not a 2D image (shape {a.shape})")
    _check_plane_shape(path, a.shape)
    return ImageSource(path, 1, a.shape[0], a.shape[1], None, a.dtype, Calibration(), lambda i: a)


def _open_npy(path: Path) -> ImageSource:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise fail(path, f"not a readable .npy array ({type(exc).__name__}: {one_line(exc)})") from None
    if not isinstance(a, np.ndarray):
        raise fail(path, "not a single .npy array")
    _check_dtype(path, a.dtype)
    if a.size == 0:
        raise fail(path, f"empty image (shape {a.shape})")
    shape = tuple(n for n in a.shape if n != 1)
    if len(shape) < 2:
        raise fail(path, f"not a 2D image (shape {a.shape})")
    a = a.reshape(shape)
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > shape[-1]:
        raise fail(path, f"looks like an RGB/RGBA array (shape {a.shape}); save a single channel")
    if len(shape) > 3:
        raise fail(path, f"{len(shape)}D array (shape {a.shape}); only 2D images and single stacks "
                          "(N, H, W) are supported")
    _check_plane_shape(path, shape)
    if len(shape) == 2:
        return ImageSource(path, 1, shape[0], shape[1], None, a.dtype, Calibration(), lambda i: a)
    return ImageSource(path, shape[0], shape[1], shape[2], "Z", a.dtype, Calibration(), lambda i: a[i])


def open_image(path: Path) -> ImageSource:
    """Open one input file; DataError (naming the file) when it cannot be predicted."""
    path = Path(path)
    if not path.exists():
        raise fail(path, "no such file")
    if path.is_dir():
        raise fail(path, "is a folder, not an image")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise fail(path, f"unsupported file type '{path.suffix}' (expected {', '.join(SUPPORTED_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise fail(path, "empty file (0 bytes)")
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path)
    if suffix == ".png":
        return _open_png(path)
    return _open_npy(path)


def read_image_2d(path: Path) -> np.ndarray:
    """A whole single-plane image as float32 (the export's sample image); DataError otherwise."""
    src = open_image(Path(path))
    try:
        if src.n_slices != 1:
            raise fail(src.path, f"expected a single 2D image, got {src.n_slices} slices")
        return checked_plane(src, 0).astype(np.float32)
    finally:
        src.close()


def checked_plane(src: ImageSource, i: int) -> np.ndarray:
    """Slice ``i`` of an opened image; DataError naming the file if it holds NaN or Inf."""
    plane = np.asarray(src.read_slice(i))
    if plane.dtype.kind == "f" and not np.isfinite(plane).all():
        where = f" (slice {i})" if src.n_slices > 1 else ""
        raise fail(src.path, f"contains NaN or Inf values{where}")
    return plane
