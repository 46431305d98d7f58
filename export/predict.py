"""Batch prediction with an exported bundle: files in, ``<stem>_sr.tif`` out.

Python API::

    results = predict_files(bundle, inputs, out_dir, runtime="auto", precision="auto", threads=None,
                            tile=512, batch=1, fmt="float32", overwrite=False, scheduler=None)
    # -> list[Result]; Result.status is "written", "skipped" (output exists) or "failed"

What it guarantees:

* Inputs: TIFF (.tif/.tiff), PNG or NPY files, folders (their supported files, not recursive) or
  glob patterns. 2D images and stacks (one extra axis, Z or T) are predicted slice by slice.
  Any size works: images are mirrored up to a size the model accepts and the output cropped;
  images with a side under ``MIN_SIDE`` (8) px are refused as junk.
* Pre/post-processing are the bundle's (``export.processing`` with ``BundleInfo`` numbers); 8/16-bit
  input is cast to float32 first, so an integer image gives the same result as its float copy.
* Each slice goes through ``export.tiling.predict_tiled`` with the bundle's halo: memory is the input
  slice, the output slice and one batch of tiles. Stacks are read and written one slice at a time.
* Output: ImageJ TIFF (tifffile ``imagej=True``), float32 in target units, or uint16 with a linear
  scaling ``value = c0 + c1 * pixel`` that is logged and stored as ImageJ's calibration function
  (``cf=0, c0, c1, vunit``: ImageJ shows calibrated values). The pixel size is the input's halved
  (ImageJ unit/resolution, OME PhysicalSize or TIFF resolution); when the input has none, the output
  says 0.5 ``pixel``.
* Written atomically (temp file + rename); an existing output is skipped unless ``overwrite``;
  an input is never written to; an output folder that is also an input folder is refused.
* A bad file gives one line naming it and why; the other files go on. The CLI exits 1 when any
  file failed and lists the failures at the end.
* ``scheduler``: a dask.distributed address; files become tasks, each worker process loads the
  bundle once (cached per process) and writes its outputs atomically into ``out_dir``. The bundle,
  the inputs and ``out_dir`` must be at the same paths on every worker (a shared file system), and
  the workers need this package installed. ``threads`` then applies per worker.
"""
from __future__ import annotations

import glob
import logging
import os
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from export.bundle_info import BundleInfo, read_bundle
from export.processing import InputMap, NormalizationError
from export.tiling import balanced_tile, count_tiles, predict_tiled
from training.io import atomic_path, disk_problem, sweep_stale, temp_prefix
from w2sr.errors import DataError, UserError

log = logging.getLogger("w2sr.predict")

SUPPORTED_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
OUTPUT_SUFFIX = "_sr.tif"
DEFAULT_TILE = 512
#: smallest image side we accept; smaller images are junk rather than microscopy
MIN_SIDE = 8
FORMATS = ("float32", "uint16")
#: tile progress bars only for images with more tiles than this
TILE_BAR_MIN = 16


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


# --------------------------------------------------------------------------------------------
# results and settings
# --------------------------------------------------------------------------------------------
@dataclass
class Result:
    source: str
    output: Optional[str]
    status: str                 # "written" | "skipped" | "failed"
    message: str = ""
    seconds: float = 0.0
    slices: int = 0
    worker: str = ""


@dataclass(frozen=True)
class Settings:
    bundle: str
    runtime: str = "auto"       # auto | onnx | openvino | tensorflow (export.inference_paths)
    threads: Optional[int] = None
    tile: int = DEFAULT_TILE
    batch: int = 1
    fmt: str = "float32"
    overwrite: bool = False
    progress: bool = True       # tile progress bars for big images (off on dask workers)
    precision: str = "auto"     # auto | fp32 | bf16


# --------------------------------------------------------------------------------------------
# runtimes (export.runtimes)
# --------------------------------------------------------------------------------------------
def _tf_threads(threads: Optional[int]) -> None:
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process
        log.warning("TensorFlow already running; --threads %s not applied", threads)


def load_path(info: BundleInfo, path: str, threads: Optional[int] = None):
    """The runtime of one inference path (``export.inference_paths``: "onnx-fp32", "openvino-bf16",
    ...): an object with ``predict(x (B,h,w,1) normalised) -> (B,2h,2w,1)``, weights hash-checked."""
    runtime, precision = path.split("-")
    weights = info.savedmodel_zip if runtime == "tensorflow" else info.onnx_path
    if weights is None:
        raise UserError(f"{info.root / 'rdf.yaml'}: the bundle has no {runtime} weights")
    if not Path(weights).exists():
        raise UserError(f"{weights}: weights named in the rdf are missing")
    info.check_weights(weights)
    from export.runtimes import OnnxRuntime, OpenVinoRuntime, SavedModelRuntime

    if runtime == "onnx":
        return OnnxRuntime(weights, threads=threads)
    if runtime == "openvino":
        return OpenVinoRuntime(weights, precision, threads=threads)
    _tf_threads(threads)
    return SavedModelRuntime(weights)


def load_runtime(info: BundleInfo, runtime: str = "auto", threads: Optional[int] = None,
                 precision: str = "auto"):
    """(runtime, path name): the path ``export.inference_paths.choose`` keeps for this machine."""
    from export.inference_paths import choose

    choice, rt = choose(info, runtime, precision, lambda path: load_path(info, path, threads))
    guard = f", guard {choice.guard_db:.1f} dB vs test_output.npy" if choice.guard_db is not None else ""
    log.info("inference path: %s (%s%s)", choice.path, choice.reason, guard)
    return rt, choice.path


# --------------------------------------------------------------------------------------------
# reading inputs
# --------------------------------------------------------------------------------------------
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


def _fail(path: Path, message: str) -> DataError:
    return DataError(f"{path}: {message}")


def _check_plane_shape(path: Path, shape: tuple[int, ...]) -> None:
    if any(n == 0 for n in shape):
        raise _fail(path, f"empty image (shape {tuple(shape)})")
    h, w = shape[-2:]
    if min(h, w) < MIN_SIDE:
        raise _fail(path, f"image too small ({h}x{w} px; each side must be at least {MIN_SIDE} px)")


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.kind not in "buif":
        raise _fail(path, f"unsupported pixel type {dtype} (expected integer or float)")


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
        raise _fail(path, f"not a readable TIFF ({type(exc).__name__}: {_one_line(exc)})") from None
    try:
        if not tif.series:
            raise _fail(path, "not a readable TIFF (no image found in it)")
        series = tif.series[0]
        shape, axes = tuple(series.shape), str(series.axes)
        dtype = np.dtype(series.dtype)
        _check_dtype(path, dtype)
        if "S" in axes and shape[axes.index("S")] > 1:
            raise _fail(path, f"RGB/multi-sample image ({shape[axes.index('S')]} samples per pixel, axes "
                              f"{axes}); save a single-channel (grayscale) image")
        if "C" in axes and shape[axes.index("C")] > 1:
            raise _fail(path, f"multi-channel image ({shape[axes.index('C')]} channels, axes {axes}); "
                              "split the channels and predict each")
        keep = [i for i, n in enumerate(shape) if n != 1 or axes[i] in "YX"]
        shape = tuple(shape[i] for i in keep)
        axes = "".join(axes[i] for i in keep)
        if len(shape) < 2:
            raise _fail(path, f"not a 2D image (shape {shape})")
        if len(shape) > 3:
            raise _fail(path, f"{len(shape)}D image (shape {shape}, axes {axes}); only 2D images and "
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
                raise _fail(path, f"cannot read slice {i} ({type(exc).__name__}: {_one_line(exc)})") from None

        return ImageSource(path, n, h, w, stack_axis, dtype, calibration, read_slice, tif.close)
    except BaseException:
        tif.close()
        raise


def _open_png(path: Path) -> ImageSource:
    import imageio.v3 as iio

    with open(path, "rb") as fh:
        if fh.read(8) != b"\x89PNG\r\n\x1a\n":
            raise _fail(path, "not a readable PNG (no PNG signature)")
    try:
        a = np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as exc:
        raise _fail(path, f"not a readable PNG ({type(exc).__name__}: {_one_line(exc)})") from None
    _check_dtype(path, a.dtype)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] in (2, 3, 4):
        kind = {2: "gray+alpha", 3: "RGB", 4: "RGBA"}[a.shape[-1]]
        raise _fail(path, f"{kind} image (shape {a.shape}); save a single-channel (grayscale) image")
    if a.ndim != 2:
        raise _fail(path, f"not a 2D image (shape {a.shape})")
    _check_plane_shape(path, a.shape)
    return ImageSource(path, 1, a.shape[0], a.shape[1], None, a.dtype, Calibration(), lambda i: a)


def _open_npy(path: Path) -> ImageSource:
    try:
        a = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise _fail(path, f"not a readable .npy array ({type(exc).__name__}: {_one_line(exc)})") from None
    if not isinstance(a, np.ndarray):
        raise _fail(path, "not a single .npy array")
    _check_dtype(path, a.dtype)
    if a.size == 0:
        raise _fail(path, f"empty image (shape {a.shape})")
    shape = tuple(n for n in a.shape if n != 1)
    if len(shape) < 2:
        raise _fail(path, f"not a 2D image (shape {a.shape})")
    a = a.reshape(shape)
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > shape[-1]:
        raise _fail(path, f"looks like an RGB/RGBA array (shape {a.shape}); save a single channel")
    if len(shape) > 3:
        raise _fail(path, f"{len(shape)}D array (shape {a.shape}); only 2D images and single stacks "
                          "(N, H, W) are supported")
    _check_plane_shape(path, shape)
    if len(shape) == 2:
        return ImageSource(path, 1, shape[0], shape[1], None, a.dtype, Calibration(), lambda i: a)
    return ImageSource(path, shape[0], shape[1], shape[2], "Z", a.dtype, Calibration(), lambda i: a[i])


def open_image(path: Path) -> ImageSource:
    """Open one input file; DataError (naming the file) when it cannot be predicted."""
    path = Path(path)
    if not path.exists():
        raise _fail(path, "no such file")
    if path.is_dir():
        raise _fail(path, "is a folder, not an image")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise _fail(path, f"unsupported file type '{path.suffix}' (expected {', '.join(SUPPORTED_SUFFIXES)})")
    if path.stat().st_size == 0:
        raise _fail(path, "empty file (0 bytes)")
    if suffix in (".tif", ".tiff"):
        return _open_tiff(path)
    if suffix == ".png":
        return _open_png(path)
    return _open_npy(path)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200] + ("..." if len(text) > 200 else "")


# --------------------------------------------------------------------------------------------
# collecting inputs
# --------------------------------------------------------------------------------------------
def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Result]]:
    """Files, folders (supported files inside, sorted, not recursive) and globs -> unique paths.

    Returns ``(paths, failures)``: names that match nothing become failures, not exceptions.
    """
    paths: list[Path] = []
    failures: list[Result] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(p)

    for item in inputs:
        item = str(item)
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir()
                           if f.is_file() and f.suffix.lower() in SUPPORTED_SUFFIXES and not f.name.startswith("."))
            if not found:
                log.warning("%s: folder holds no %s files", p, "/".join(SUPPORTED_SUFFIXES))
            for f in found:
                add(f)
        elif p.exists():
            add(p)
        elif glob.has_magic(item):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                failures.append(Result(item, None, "failed", f"{item}: pattern matches no file"))
            for m in matches:
                add(m)
        else:
            failures.append(Result(item, None, "failed", f"{item}: no such file or folder"))
    return paths, failures


def output_path(src: Path, out_dir: Path) -> Path:
    return Path(out_dir) / f"{Path(src).stem}{OUTPUT_SUFFIX}"


# --------------------------------------------------------------------------------------------
# predicting one file
# --------------------------------------------------------------------------------------------
class Model:
    """A loaded bundle: its numbers and one runtime."""

    def __init__(self, info: BundleInfo, runtime, name: str):
        self.info, self.runtime, self.name = info, runtime, name

    @classmethod
    def load(cls, settings: Settings) -> "Model":
        info = read_bundle(settings.bundle)
        if info.halo == 0:
            log.warning("%s: the rdf states halo 0; tiles may show seams", info.root / "rdf.yaml")
        runtime, path = load_runtime(info, settings.runtime, settings.threads, settings.precision)
        return cls(info, runtime, path)

    def predict_fn(self, input_map: InputMap) -> Callable[[np.ndarray], np.ndarray]:
        """Raw tiles (B,h,w,1) -> outputs: the bundle's pre, network, post.

        ``input_map`` is measured once on the whole plane (percentiles, or the fixed statistics), and
        the maps are per pixel, so tiles get the numbers of the whole image while no normalised copy
        of it is ever held."""
        runtime, norm = self.runtime, self.info.normalization

        def fn(x: np.ndarray) -> np.ndarray:
            return norm.output(runtime.predict(input_map.apply(x)))
        return fn

    def predict_slice(self, plane: np.ndarray, settings: Settings, label: str = "") -> np.ndarray:
        """Raw 2D slice (any dtype) -> float32 output, (scale*H, scale*W), in the bundle's output units."""
        info = self.info
        input_map = info.normalization.measure(plane)  # NormalizationError: the caller names the file
        tile = balanced_tile(plane.shape, settings.tile, info.halo, info.valid_size_at_least)
        n_tiles = count_tiles(plane.shape, tile, info.halo, info.valid_size_at_least)
        bar = None
        if settings.progress and n_tiles > TILE_BAR_MIN:
            from tqdm import tqdm
            bar = tqdm(total=n_tiles, desc=f"  tiles {label}", unit="tile", leave=False)
        try:
            # tiles are gathered as float32 before preprocessing: 8/16-bit inputs never round
            return predict_tiled(self.predict_fn(input_map), plane, tile, info.halo, scale=info.scale,
                                 valid_size=info.valid_size_at_least, batch=settings.batch,
                                 progress=bar.update if bar else None)
        finally:
            if bar:
                bar.close()


def _imagej_metadata(src: ImageSource, scale: int) -> tuple[dict, tuple[float, float], str]:
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


def _checked_plane(src: ImageSource, i: int) -> np.ndarray:
    plane = np.asarray(src.read_slice(i))
    if plane.dtype.kind == "f" and not np.isfinite(plane).all():
        where = f" (slice {i})" if src.n_slices > 1 else ""
        raise _fail(src.path, f"contains NaN or Inf values{where}")
    return plane


def predict_file(src_path: Path, dst: Path, model: Model, settings: Settings) -> Result:
    """Predict one file into ``dst`` (atomically). Raises DataError for bad input."""
    import tifffile

    t0 = time.perf_counter()
    src = open_image(src_path)
    try:
        info = model.info
        s = info.scale
        oh, ow = s * src.height, s * src.width
        meta, resolution, cal_note = _imagej_metadata(src, s)
        shape = (src.n_slices, oh, ow) if src.stack_axis else (oh, ow)
        label = Path(src_path).name

        def planes() -> Iterator[np.ndarray]:
            for i in range(src.n_slices):
                plane = _checked_plane(src, i)
                try:
                    out = model.predict_slice(plane, settings, f"{label}[{i}]" if src.n_slices > 1 else label)
                except NormalizationError as exc:
                    raise _fail(src.path, f"{exc}{f' (slice {i})' if src.n_slices > 1 else ''}") from None
                yield out

        with atomic_path(dst) as tmp:
            if settings.fmt == "float32":
                tifffile.imwrite(tmp, planes(), shape=shape, dtype=np.float32, resolution=resolution,
                                 **_tiff_kind(shape, np.float32, meta, dst))
                scaling = ""
            else:
                vunit = "normalised units" if info.normalization.percentile else "target units"
                scaling = _write_uint16(tmp, planes(), shape, src, resolution, meta, dst, vunit)
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual mode
        took = time.perf_counter() - t0
        log.info("%s -> %s (%d slice%s %dx%d -> %dx%d, %s%s, %.1f s)", src_path, dst, src.n_slices,
                 "" if src.n_slices == 1 else "s", src.height, src.width, oh, ow, cal_note,
                 f", {scaling}" if scaling else "", took)
        return Result(str(src_path), str(dst), "written", scaling, took, src.n_slices)
    finally:
        src.close()


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


# --------------------------------------------------------------------------------------------
# one job, on this process or a dask worker
# --------------------------------------------------------------------------------------------
_MODEL_CACHE: dict[tuple, Model] = {}
_MODEL_LOCK = threading.Lock()


def _bundle_state(bundle: str) -> tuple:
    """Size and mtime of the bundle's rdf and weight files: a bundle replaced or damaged on disk is
    loaded (and hash-checked) again instead of served from the cache."""
    root = Path(bundle)
    root = root if root.is_dir() else root.parent
    files = sorted([*root.glob("rdf.yaml"), *root.glob("*.onnx"), *root.glob("*.zip")])
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


def cached_model(settings: Settings) -> Model:
    """The model for these settings, loaded once per process (dask workers reuse it)."""
    key = (Settings(settings.bundle, settings.runtime, settings.threads), _bundle_state(settings.bundle))
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = Model.load(settings)
        return _MODEL_CACHE[key]


def output_problem(src: Path, dst: Path, scale: int) -> Optional[str]:
    """None when ``dst`` is a readable TIFF of ``scale`` x the size of ``src`` (a finished output: resume
    skips it), else what is wrong. Outputs are written atomically, so a bad one was not written by
    w2sr predict (an empty placeholder, a copy cut short)."""
    import tifffile

    try:
        with tifffile.TiffFile(dst) as tif:
            got = tuple(tif.series[0].shape[-2:])
    except Exception as exc:  # noqa: BLE001 - any unreadable file is "not finished"
        return f"unreadable: {type(exc).__name__}"
    try:
        source = open_image(src)
    except UserError:
        return None  # the input itself is bad: predicting would fail anyway, keep the old output
    try:
        want = (scale * source.height, scale * source.width)
    finally:
        source.close()
    return None if got == want else f"{got[0]}x{got[1]} px, expected {want[0]}x{want[1]}"


def run_job(src: str, dst: str, settings: Settings) -> Result:
    """Predict one file; never raises for a bad file (the failure is in the Result)."""
    src_p, dst_p = Path(src), Path(dst)
    worker = _worker_name()
    scale = read_bundle(settings.bundle).scale
    if dst_p.exists() and not settings.overwrite and output_problem(src_p, dst_p, scale) is None:
        return Result(src, dst, "skipped", f"{dst}: exists (use --overwrite to replace)", worker=worker)
    try:
        model = cached_model(settings)
        result = predict_file(src_p, dst_p, model, settings)
    except UserError as exc:
        log.error("%s", exc)
        return Result(src, dst, "failed", _one_line(exc), worker=worker)
    except MemoryError:
        msg = f"{src}: out of memory (try a smaller --tile)"
        log.error("%s", msg)
        return Result(src, dst, "failed", msg, worker=worker)
    except OSError as exc:
        problem = disk_problem(exc)
        if problem:  # the next file would fail the same way: stop the batch here, in one line
            raise UserError(f"{dst_p.parent}: {problem}; stopped at {src} (outputs already written are complete)") from None
        msg = f"{src}: prediction failed ({type(exc).__name__}: {_one_line(exc)})"
        log.error("%s", msg, exc_info=log.isEnabledFor(logging.DEBUG))
        return Result(src, dst, "failed", msg, worker=worker)
    except Exception as exc:  # a runtime or I/O failure on one file must not stop the batch
        msg = f"{src}: prediction failed ({type(exc).__name__}: {_one_line(exc)})"
        log.error("%s", msg, exc_info=log.isEnabledFor(logging.DEBUG))
        return Result(src, dst, "failed", msg, worker=worker)
    result.worker = worker
    return result


def _worker_name() -> str:
    try:
        from distributed import get_worker

        w = get_worker()
        return f"worker {w.name} ({w.address})"
    except (ImportError, ValueError):
        return ""


# --------------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------------
def plan_jobs(paths: Iterable[Path], out_dir: Path) -> tuple[list[tuple[Path, Path]], list[Result]]:
    """Pair inputs with outputs; refuse outputs that are inputs or collide with another output."""
    paths = list(paths)
    inputs = {p.resolve() for p in paths}
    jobs, failures = [], []
    claimed: dict[Path, Path] = {}
    for p in paths:
        dst = output_path(p, out_dir)
        key = dst.resolve()
        if key in inputs:
            failures.append(Result(str(p), str(dst), "failed", f"{p}: output {dst} would overwrite an input"))
        elif key in claimed:
            failures.append(Result(str(p), str(dst), "failed",
                                   f"{p}: output name {dst.name} already used by {claimed[key]}; rename one"))
        else:
            claimed[key] = p
            jobs.append((p, dst))
    return jobs, failures


def check_out_dir(out_dir: Path, inputs: Sequence[str | Path]) -> None:
    out = Path(out_dir).resolve()
    for item in inputs:
        p = Path(item)
        if p.is_dir() and p.resolve() == out:
            raise UserError(f"{out_dir}: the output folder is an input folder; choose another --out "
                            "(outputs there would be read as inputs next time)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")


def predict_files(bundle: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, *,
                  runtime: str = "auto", threads: Optional[int] = None, tile: int = DEFAULT_TILE,
                  batch: int = 1, fmt: str = "float32", overwrite: bool = False,
                  scheduler: Optional[str] = None, progress: bool = True, precision: str = "auto") -> list[Result]:
    """Predict every input; return one Result per input (in input order). See the module doc."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if tile < 1 or batch < 1:
        raise UserError(f"--tile and --batch must be positive (got {tile}, {batch})")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be a positive number of threads (got {threads})")
    from export.inference_paths import PRECISIONS, RUNTIMES

    if runtime not in RUNTIMES or precision not in PRECISIONS:
        raise UserError(f"--runtime {runtime} / --precision {precision}: choose from {', '.join(RUNTIMES)} / "
                        f"{', '.join(PRECISIONS)}")
    if not str(out_dir).strip():
        raise UserError("--out is empty: give the folder the outputs go to")
    out_dir = Path(out_dir)
    info = read_bundle(bundle)  # fail early on a bad bundle, before touching any input
    tile_eff = info.valid_size_at_least(tile)
    if tile_eff <= 2 * info.halo:
        raise UserError(f"--tile {tile} must exceed twice the bundle's halo ({2 * info.halo} px)")
    check_out_dir(out_dir, inputs)
    paths, failures = expand_inputs(inputs)
    beside = [p for p in paths if p.resolve().parent == out_dir.resolve()]
    if beside:
        raise UserError(f"{out_dir}: the output folder holds inputs ({beside[0].name}"
                        f"{f' and {len(beside) - 1} more' if len(beside) > 1 else ''}); choose another --out "
                        f"(outputs there would be read as inputs next time)")
    jobs, plan_failures = plan_jobs(paths, out_dir)
    failures += plan_failures
    if not jobs and not failures:
        raise UserError("no input images found")
    for f in failures:
        log.error("%s", f.message)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from None
    sweep_stale(out_dir)  # temporary files of a killed earlier run (their process is gone)
    try:
        settings = Settings(str(Path(bundle).resolve()), runtime, threads, tile, batch, fmt, overwrite,
                            progress=progress and scheduler is None, precision=precision)
        sizes = (f"any size >= {info.any_size_from}" if info.any_size_from is not None
                 else f"valid sizes {info.min_size} + n*{info.step}")
        log.info("bundle %s (%s): halo %d px, tile %d px (%s), runtime %s, precision %s, output %s",
                 info.root, info.name, info.halo, tile_eff, sizes, runtime, precision, fmt)
        todo, results = [], []
        for src, dst in jobs:
            problem = output_problem(src, dst, info.scale) if dst.exists() and not overwrite else "absent"
            if problem is None:
                log.info("%s: %s exists, skipped", src, dst)
                results.append(Result(str(src), str(dst), "skipped", "exists"))
            else:
                if problem != "absent":
                    log.warning("%s: replacing it, it is not a complete output of %s (%s)", dst, src, problem)
                todo.append((src, dst))
        if todo:
            if scheduler:
                results += _run_dask(todo, settings, scheduler, progress)
            else:
                load_runtime_check = cached_model(settings)  # errors in the bundle stop here, once
                del load_runtime_check
                results += _run_local(todo, settings, progress)
        order = {str(p): i for i, p in enumerate(paths)}
        results.sort(key=lambda r: order.get(r.source, -1))
        return failures + results
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was written: leave no empty --out behind


def _run_local(todo: list[tuple[Path, Path]], settings: Settings, progress: bool) -> list[Result]:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    results = []
    with logging_redirect_tqdm(loggers=[logging.getLogger()]):
        for src, dst in tqdm(todo, desc="predict", unit="file", disable=not progress):
            results.append(run_job(str(src), str(dst), settings))
    return results


def _run_dask(todo: list[tuple[Path, Path]], settings: Settings, address: str, progress: bool) -> list[Result]:
    from distributed import Client, as_completed
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        client = Client(address, timeout="20s")
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the dask scheduler at {address}: {_one_line(exc)}") from None
    results = []
    try:
        n_workers = len(client.scheduler_info().get("workers", {}))
        log.info("dask scheduler %s: %d workers; %d files", address, n_workers, len(todo))
        futures = [client.submit(run_job, str(src), str(dst), settings, pure=False,
                                 key=f"w2sr-predict-{i}-{Path(src).name}")
                   for i, (src, dst) in enumerate(todo)]
        with logging_redirect_tqdm(loggers=[logging.getLogger()]):
            bar = tqdm(total=len(futures), desc="predict (dask)", unit="file", disable=not progress)
            for fut in as_completed(futures):
                try:
                    r = fut.result()
                except Exception as exc:  # the worker died or the task could not run
                    src = todo[futures.index(fut)][0]
                    r = Result(str(src), None, "failed", f"{src}: dask task failed ({_one_line(exc)})")
                if r.status == "written":
                    log.info("%s -> %s on %s (%.1f s)", r.source, r.output, r.worker, r.seconds)
                elif r.status == "failed":
                    log.error("%s", r.message)
                results.append(r)
                bar.update(1)
            bar.close()
    finally:
        client.close()
    return results


def summarize(results: Sequence[Result]) -> int:
    """Log the end-of-run summary; return the exit code (1 when any file failed)."""
    written = [r for r in results if r.status == "written"]
    skipped = [r for r in results if r.status == "skipped"]
    failed = [r for r in results if r.status == "failed"]
    seconds = sum(r.seconds for r in written)
    log.info("summary: %d written, %d skipped (output exists), %d failed%s", len(written), len(skipped),
             len(failed), f"; {seconds:.1f} s predicting" if written else "")
    if failed:
        log.error("%d file(s) failed:", len(failed))
        for r in failed:
            log.error("  %s", r.message)
        return 1
    return 0
