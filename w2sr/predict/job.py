"""One file: read, predict plane by plane, write atomically. ``run_job`` never raises for a bad
file (the failure is in its :class:`Result`), so a batch goes on; it runs here or on a dask worker."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from w2sr.bundle.reader import read_bundle
from w2sr.core.errors import UserError, one_line
from w2sr.core.files import atomic_path, disk_problem
from w2sr.core.images import checked_plane, open_image
from w2sr.predict.model import Model, Settings, cached_model
from w2sr.predict.output import write_output

log = logging.getLogger("w2sr.predict")


@dataclass
class Result:
    source: str
    output: Optional[str]
    status: str                 # "written" | "skipped" | "failed"
    message: str = ""
    seconds: float = 0.0
    slices: int = 0
    worker: str = ""


def predict_file(src_path: Path, dst: Path, model: Model, settings: Settings) -> Result:
    """Predict one file into ``dst`` (atomically). Raises DataError for bad input."""
    t0 = time.perf_counter()
    src = open_image(src_path)
    try:
        info = model.info
        s = info.scale
        oh, ow = s * src.height, s * src.width
        shape = (src.n_slices, oh, ow) if src.stack_axis else (oh, ow)
        label = Path(src_path).name

        def planes() -> Iterator[np.ndarray]:
            for i in range(src.n_slices):
                plane = checked_plane(src, i)
                index = f"[{i}]" if src.n_slices > 1 else ""
                # a blank plane is predicted as DeepImageJ does, with a warning naming it (not refused)
                yield model.predict_slice(plane, settings, label + index, where=f"{src_path}{index}")

        vunit = "normalised units" if info.normalization.percentile else "target units"
        with atomic_path(dst) as tmp:
            scaling, cal_note = write_output(tmp, planes(), shape, src, s, settings.fmt, vunit, dst)
        took = time.perf_counter() - t0
        log.info("%s -> %s (%d slice%s %dx%d -> %dx%d, %s%s, %.1f s)", src_path, dst, src.n_slices,
                 "" if src.n_slices == 1 else "s", src.height, src.width, oh, ow, cal_note,
                 f", {scaling}" if scaling else "", took)
        return Result(str(src_path), str(dst), "written", scaling, took, src.n_slices)
    finally:
        src.close()


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
        return Result(src, dst, "failed", one_line(exc), worker=worker)
    except MemoryError:
        msg = f"{src}: out of memory (try a smaller --tile)"
        log.error("%s", msg)
        return Result(src, dst, "failed", msg, worker=worker)
    except OSError as exc:
        problem = disk_problem(exc)
        if problem:  # the next file would fail the same way: stop the batch here, in one line
            raise UserError(f"{dst_p.parent}: {problem}; stopped at {src} (outputs already written are complete)") from None
        msg = f"{src}: prediction failed ({type(exc).__name__}: {one_line(exc)})"
        log.error("%s", msg, exc_info=log.isEnabledFor(logging.DEBUG))
        return Result(src, dst, "failed", msg, worker=worker)
    except Exception as exc:  # a runtime or I/O failure on one file must not stop the batch
        msg = f"{src}: prediction failed ({type(exc).__name__}: {one_line(exc)})"
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
