"""A batch: inputs expanded (files, folders, globs), paired with outputs, refused where an output
would overwrite an input, then predicted here or on a dask cluster, and summarised."""
from __future__ import annotations

import glob
import logging
from pathlib import Path
from typing import Iterable, Optional, Sequence

from w2sr.bundle.reader import read_bundle
from w2sr.core.errors import UserError, one_line
from w2sr.core.files import sweep_stale
from w2sr.core.images import SUPPORTED_SUFFIXES
from w2sr.predict.job import Result, output_problem, run_job
from w2sr.core.contract import DEFAULT_TILE
from w2sr.predict.model import Settings, cached_model
from w2sr.predict.output import FORMATS

log = logging.getLogger("w2sr.predict")

OUTPUT_SUFFIX = "_sr.tif"


# collecting inputs
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
                  runtime: str = "auto", threads: Optional[int] = None, tile: Optional[int] = None,
                  batch: int = 1, fmt: str = "float32", overwrite: bool = False,
                  scheduler: Optional[str] = None, progress: bool = True, precision: str = "auto",
                  device: str = "auto") -> list[Result]:
    """Predict every input; return one Result per input (in input order). See the module doc.

    ``tile`` None: ``DEFAULT_TILE`` on the CPU, the largest the free memory holds on a GPU."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (choose from {', '.join(FORMATS)})")
    if (tile is not None and tile < 1) or batch < 1:
        raise UserError(f"--tile and --batch must be positive (got {tile}, {batch})")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be a positive number of threads (got {threads})")
    from w2sr.predict.paths import DEVICES, PRECISIONS, RUNTIMES

    if runtime not in RUNTIMES or precision not in PRECISIONS or device not in DEVICES:
        raise UserError(f"--runtime {runtime} / --precision {precision} / --device {device}: choose from "
                        f"{', '.join(RUNTIMES)} / {', '.join(PRECISIONS)} / {', '.join(DEVICES)}")
    if not str(out_dir).strip():
        raise UserError("--out is empty: give the folder the outputs go to")
    out_dir = Path(out_dir)
    info = read_bundle(bundle)  # fail early on a bad bundle, before touching any input
    tile_eff = info.valid_size_at_least(tile or DEFAULT_TILE)
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
                            progress=progress and scheduler is None, precision=precision, device=device)
        sizes = (f"any size >= {info.any_size_from}" if info.any_size_from is not None
                 else f"valid sizes {info.min_size} + n*{info.step}")
        log.info("bundle %s (%s): halo %d px, tile %s (%s), runtime %s, precision %s, device %s, output %s",
                 info.root, info.name, info.halo, f"{tile_eff} px" if tile else "auto", sizes, runtime, precision,
                 device, fmt)
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
                cached_model(settings)  # errors in the bundle stop here, once
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
        raise UserError(f"cannot reach the dask scheduler at {address}: {one_line(exc)}") from None
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
                    r = Result(str(src), None, "failed", f"{src}: dask task failed ({one_line(exc)})")
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
