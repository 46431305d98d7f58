"""``export_bundle``: a trained run -> a validated DeepImageJ / BioImage.IO bundle folder.

Everything is built in a staging folder beside ``out``, validated (``bioimageio test`` of every
weight format, parity matrix, odd sizes, halo), documented, packaged, and only then moved into
place (``w2sr.core.files.atomic_replace_dir``). A failure anywhere leaves ``out`` as it was. An existing
``out`` is replaced only if it is a bundle this exporter wrote (rdf.yaml with ``config.w2sr``): of
the same model name (an update), or of another with ``force``. Any other non-empty folder is refused.

Layout written (see docs/ARCHITECTURE.md)::

    rdf.yaml  tf_saved_model.zip  weights.onnx  test_input.npy  test_output.npy
    sample_input.tif  sample_output.tif  cover.png  README.md  parity.md  parity.json
    preprocessing.ijm  postprocessing.ijm  training_config.yaml  generator.keras  fiji_macros/*.ijm
    packages/<name>_deepimagej.zip  packages/<name>_zoo-0.5.zip
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from export.sources import ModelSource, training_source
from w2sr.core.contract import DEEPIMAGEJ_SMALLEST_SIDE, GENERATOR, ONNX_OPSET, ONNX_WEIGHTS, SAVEDMODEL_ZIP, \
    TENSORFLOW_VERSION, deepimagej_tile
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

MARKER_KEY = "w2sr"  # config.w2sr in rdf.yaml marks a bundle this exporter wrote


@dataclass(frozen=True)
class ExportOptions:
    """How to export (every field is also a keyword of :func:`export_bundle`).

    ``name``: the model name (rdf name, package file names); default the config's ``name``.
    ``force``: replace an existing bundle of ANOTHER model name (one of the same name is updated
    anyway; a folder that is not a w2sr bundle is never replaced).
    ``sample``: 2D image (tif/npy/png) for the test tensors, cover and halo; default a test FOV of
    the run's data, else a simulated image. ``halo``: skip the measurement and use this value
    (input px; it is still checked). ``tile``: DeepImageJ's tile side (the rdf's fixed input size,
    step 0) and the side of the test tensors; it bounds DeepImageJ's memory. Default
    ``w2sr.core.contract.deepimagej_tile(halo)`` = 512 + 2 x halo (a 512^2 image is one tile); DeepImageJ
    called directly shifts odd sides below 512 by one pixel (the rdf description, the bundle README and
    ``w2sr validate`` name them; the Fiji macro handles every size).
    ``bioimageio``/``measure``: run ``bioimageio test`` / the subprocess timing (both on by default;
    off only for quick development runs). ``engines``: also run export.engines (old runtimes).
    """
    config: Optional[str | Path] = None
    name: Optional[str] = None
    force: bool = False
    sample: Optional[str | Path] = None
    tile: Optional[int] = None
    halo: Optional[int] = None
    halo_image_size: int = 256
    max_halo: Optional[int] = None
    authors: Optional[Sequence[dict]] = None
    license: str = "MIT"
    odd_sizes: Sequence[tuple[int, int]] = ((333, 517),)
    bioimageio: bool = True
    measure: bool = True
    engines: bool | Sequence[str] = False


def _our_rdf(path: Path) -> Optional[dict]:
    """The rdf document of a bundle this exporter wrote at ``path``, else None."""
    from w2sr.bundle.reader import read_rdf

    if not (Path(path) / "rdf.yaml").is_file():
        return None
    try:
        doc = read_rdf(path)
    except UserError:
        return None
    return doc if isinstance((doc.get("config") or {}).get(MARKER_KEY), dict) else None


def check_out(out: Path, force: bool, name: Optional[str] = None) -> None:
    """May ``out`` receive a bundle named ``name``?

    Never over a folder that is not a w2sr bundle (``--force`` or not). An existing w2sr bundle of
    the same model name is an update and is replaced (after the new one validated); one of another
    model name is replaced only with ``force``.
    """
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; refusing to overwrite it")
    if not any(out.iterdir()):
        return
    old = _our_rdf(out)
    if old is None:
        raise UserError(f"{out}: exists and is not a w2sr bundle (no rdf.yaml written by w2sr export); "
                        f"refusing to overwrite it - choose another --out")
    old_name = old.get("name")
    if name is not None and old_name != name and not force:
        raise UserError(f"{out}: holds the bundle of another model ('{old_name}', not '{name}'); pass --force "
                        f"to replace it (it is replaced only after the new one has been validated)")


def safe_name(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    if not out:
        raise UserError(f"model name {name!r} has no usable characters")
    return out


# --------------------------------------------------------------------------------------------


def _versions() -> dict:
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    try:
        from importlib.metadata import version

        core, spec = version("bioimageio.core"), version("bioimageio.spec")
        w2sr = version("w2sr")
    except Exception:
        core = spec = w2sr = None
    return {"w2sr": w2sr, "tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "bioimageio.core": core,
            "bioimageio.spec": spec}


def _timestamp(path: Path) -> str:
    ts = _dt.datetime.fromtimestamp(path.stat().st_mtime, tz=_dt.timezone.utc).replace(microsecond=0)
    return ts.isoformat()


def _manifest(root: Path) -> dict[str, str]:
    from w2sr.bundle.reader import sha256_file

    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != "rdf.yaml" and not rel.startswith("packages/"):
            files[rel] = sha256_file(p)
    return files


def export_bundle(source: str | Path | ModelSource, out: str | Path, options: Optional[ExportOptions] = None,
                  **overrides: Any) -> Path:
    """Build, validate and move into place a bundle for ``source``: a training run (a run folder, or a
    .keras file with ``config``) or a :class:`export.sources.ModelSource` (``w2sr bundle``: any Keras
    model); returns ``out``. ``overrides``: fields of :class:`ExportOptions`.

    stage -> weights -> assets -> rdf -> validate -> document -> package -> into place."""
    unknown = set(overrides) - {f.name for f in fields(ExportOptions)}
    if unknown:
        raise TypeError(f"export_bundle: unknown option(s) {', '.join(sorted(unknown))}")
    opt = ExportOptions(**{**(asdict(options) if options else {}), **overrides})
    t_start = time.perf_counter()
    out = Path(out)
    _tidy_after_killed_exports(out)
    if opt.tile is not None and opt.tile < 16:
        raise UserError(f"--tile {opt.tile}: DeepImageJ's tile must be at least 16 px "
                        f"(default {DEEPIMAGEJ_SMALLEST_SIDE} + 2 x halo)")
    if opt.name is not None:
        safe_name(opt.name)  # a name without usable characters fails here, before any work
    src = source if isinstance(source, ModelSource) else training_source(source, opt.config)
    name = opt.name or src.name
    fname = safe_name(name)
    check_out(out, opt.force, name)
    if opt.tile is not None and opt.tile % src.spec.multiple:
        raise UserError(f"--tile {opt.tile}: the model needs sides divisible by {src.spec.multiple} (pooling); "
                        f"give a multiple of it")
    if opt.halo is not None and opt.halo % src.spec.multiple:
        raise UserError(f"--halo {opt.halo}: DeepImageJ's tiles keep the model's pooling grid only with a halo "
                        f"divisible by {src.spec.multiple}")
    log.info("exporting %s (%s) -> %s as '%s'", src.keras_path, src.spec.describe(), out, name)
    with _staging(out) as stage:
        weights = _weights(src, stage, opt)
        attachments = _assets(src, stage, weights, opt)
        doc = _draft_rdf(src, stage, weights, attachments, name, opt)
        report = _validate(stage, out, opt)
        _document(stage, doc, report, weights.halo, name, src.record.get("name", name), attachments)
        _package(stage, doc, fname, opt.bioimageio, src.spec.scale)
        check_out(out, opt.force, name)  # again: the folder may have changed meanwhile
        _commit(stage, out)
    _log_sizes(out, fname, time.perf_counter() - t_start, weights.seconds)
    return out


def _tidy_after_killed_exports(out: Path) -> None:
    """Before anything else: a killed swap gives the old bundle back, killed exports' staging folders go."""
    from w2sr.core.files import recover_replaced_dir, sweep_stale

    recover_replaced_dir(out)
    sweep_stale(out.parent, prefix=f".{out.name}.staging.")


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A fresh staging folder beside ``out``, removed when anything fails (a full disk in one line)."""
    from w2sr.core.files import disk_problem, temp_prefix

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name, "staging"), dir=out.parent))
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot write the bundle there ({disk_problem(exc) or exc.strerror or exc})") from None
    try:
        yield stage
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        problem = disk_problem(exc)
        if problem:
            raise UserError(f"{out.parent}: {problem} while building the bundle; nothing was written "
                            f"(the old bundle, if any, is untouched)") from None
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


@dataclass
class _Weights:
    """The exported weights and what was measured making them."""
    model: Any            # the Keras generator
    halo: Any             # export.halo.HaloMeasurement (the rdf's halo = the graph's padding)
    savedmodel: Any       # export.savedmodel's result (ops, weights)
    onnx: Any             # export.onnx_export's result (ops)
    image: np.ndarray     # the sample image (raw units)
    image_source: str
    seconds: float
    tile: int             # DeepImageJ's tile (the rdf's fixed input side), = the test tensors' side


def _weights(src: ModelSource, stage: Path, opt: ExportOptions) -> _Weights:
    """The model copied, the halo measured on it, then the SavedModel with that much in-graph padding
    (grown until DeepImageJ's tiles and ours reproduce the whole image) and the ONNX."""
    from export.halo import HaloMeasurement, fit_padding, measure_halo, tiled_max_diff
    from export.onnx_export import export_onnx
    from export.runtimes import KerasRuntime
    from w2sr.core.tiling import center_crop

    model, scale, m = src.model, src.spec.scale, src.spec.multiple
    if src.resave:  # rebuilt with free sizes (export.keras_model.free_spatial_size)
        model.save(stage / GENERATOR)
    else:
        shutil.copy2(src.keras_path, stage / GENERATOR)
    for name, path in src.files.items():
        shutil.copy2(path, stage / name)
    maths = src.maths
    plain, post = KerasRuntime(model, scale=scale, multiple=m), maths.output
    image, image_source = src.sample(Path(opt.sample) if opt.sample else None,
                                     max(opt.tile or 0, opt.halo_image_size))
    log.info("sample image: %s, %dx%d", image_source, *image.shape)
    side = min(opt.halo_image_size, max(min(image.shape), 64))
    side -= side % m
    x = maths.input(center_crop(image, side, mirror=True))
    if opt.halo is None:
        log.info("measuring the halo on a %dx%d crop ...", *x.shape)
        hm = measure_halo(plain.predict, x, post, max_halo=opt.max_halo, scale=scale, multiple=m)
    else:  # given: checked, not searched
        ref = post(plain.predict(x[None, :, :, None])[0, :, :, 0])
        check_tile = min(2 * opt.halo + 64, *x.shape)
        d, good = tiled_max_diff(plain.predict, x, ref, post, opt.halo, check_tile, scale, m)
        hm = HaloMeasurement(halo=opt.halo, max_diff=d, too_small=None, too_small_max_diff=None,
                             too_small_fails=None, tile=check_tile, image_shape=x.shape, converged=good)
    if not hm.converged:
        log.warning("halo %d does not reproduce the whole image within tolerance (max diff %.3g)",
                    hm.halo, hm.max_diff)
    log.info("halo %d px (tiled max diff %.3g; with %s px: %s) in %.1f s", hm.halo, hm.max_diff,
             hm.too_small, hm.too_small_max_diff, hm.seconds)
    t0 = time.perf_counter()
    sm, hm = fit_padding(model, stage / SAVEDMODEL_ZIP, src.keras_path, hm, x, post,
                         tile=opt.tile, fixed=opt.halo is not None, scale=scale, multiple=m)
    onnx_res = export_onnx(stage / SAVEDMODEL_ZIP, stage / ONNX_WEIGHTS)
    tile = opt.tile or deepimagej_tile(hm.halo)
    log.info("DeepImageJ tile %d px (halo %d)", tile, hm.halo)
    return _Weights(model, hm, sm, onnx_res, image, image_source, time.perf_counter() - t0, tile)


def _assets(src: ModelSource, stage: Path, weights: _Weights, opt: ExportOptions) -> list[str]:
    """Test tensors, samples, cover and macros; returns the attachments the rdf lists."""
    from export.assets import write_macros, write_test_data
    from w2sr.bundle.runtimes import SavedModelRuntime

    maths = src.maths
    runtime = SavedModelRuntime(stage / SAVEDMODEL_ZIP)
    write_test_data(stage, weights.image, weights.tile, maths, runtime.predict, src.cover_caption)
    deepimagej2, fiji = write_macros(stage, maths)
    return [*deepimagej2, *src.files, "parity.md", "parity.json", *fiji]


def _draft_rdf(src: ModelSource, stage: Path, weights: _Weights, attachments: list[str], name: str,
               opt: ExportOptions) -> dict:
    """The rdf with everything but the README's validation section and the file list (placeholders
    stand in for the files written after validation, so the draft validates)."""
    from w2sr.bundle.reader import sha256_file
    from export.rdf import RdfParams, build_rdf, validate_rdf_format, write_rdf

    hm = weights.halo
    memory_peak = runtime_s = None
    if opt.measure:  # timing and memory of the SavedModel on the test image (fresh process)
        from export.runtimes import measure_in_subprocess

        log.info("timing the SavedModel on %dx%d in a fresh process ...", weights.tile, weights.tile)
        meas = measure_in_subprocess("savedmodel", stage / SAVEDMODEL_ZIP, size=weights.tile, repeats=3)
        memory_peak, runtime_s = f"{meas.peak_rss_mb:.1f} Mb", f"{meas.median_s:.2f} s"
    w2sr_block = {
        "exported_with": _versions(),
        "run": src.record,
        "normalization": src.normalization_record,
        "halo": {k: v for k, v in asdict(hm).items() if k != "candidates"},
        "sample_image": weights.image_source,
        "savedmodel": {"ops": weights.savedmodel.ops, "n_weights": weights.savedmodel.n_weights,
                       "n_params": weights.savedmodel.n_params, "tensorflow_version_declared": TENSORFLOW_VERSION},
        "onnx": {"opset": ONNX_OPSET, "ops": weights.onnx.ops},
        "keras_generator": f"{GENERATOR} (not a listed weight format)",
    }
    padding = hm.halo  # the graph's own symmetric padding (w2sr.core.padding) = the rdf halo
    params = RdfParams(
        name=name, model_id=safe_name(name).lower(), normalization=src.maths, halo=hm.halo, tile=weights.tile,
        padding=padding, any_size_from=max(1, padding), savedmodel_sha256=sha256_file(stage / SAVEDMODEL_ZIP),
        onnx_sha256=sha256_file(stage / ONNX_WEIGHTS), timestamp=_timestamp(src.keras_path),
        authors=list(opt.authors or src.authors or [{"name": "w2sr contributors"}]), license=opt.license,
        memory_peak=memory_peak, runtime=runtime_s, attachments=attachments, w2sr=w2sr_block, scale=src.spec.scale,
        **{k: v for k, v in (("description", src.description), ("tags", src.tags), ("cite", src.cite),
                             ("input_description", src.input_description),
                             ("output_text", src.output_description)) if v},
        multiple=src.spec.multiple,
    )
    doc = build_rdf(params)
    for f in ("README.md", "parity.md", "parity.json"):
        (stage / f).write_text("(written after validation)\n")
    write_rdf(doc, stage / "rdf.yaml")
    validate_rdf_format(stage / "rdf.yaml")
    return doc


def _validate(stage: Path, out: Path, opt: ExportOptions):
    """Every check of ``export.validate`` on the staged bundle; UserError when one fails."""
    from export.validate import format_report, validate_bundle

    report = validate_bundle(stage, keras_path=stage / GENERATOR, bioimageio=opt.bioimageio,
                             sizes=opt.odd_sizes, packages=False, engines=opt.engines)
    report.bundle = str(out)  # the reader's folder, not the staging folder it was checked in
    print(format_report(report))
    if not report.ok:
        raise UserError(f"{out}: the new bundle failed validation ({len(report.failures)} problems: "
                        f"{'; '.join(report.failures[:3])}); nothing was written")
    if not opt.bioimageio:
        report.notes.append("bioimageio test not run (quick export)")
    return report


def _document(stage: Path, doc: dict, report, hm, name: str, run_name: str, attachments: list[str]) -> None:
    """parity.md/json, the README with the validation results, the file list; the final rdf."""
    from export.bundle_readme import render_readme
    from export.rdf import validate_rdf_format, write_rdf
    from export.validate import format_report, write_report

    write_report(report, stage)
    readme = render_readme(name=name, rdf=doc, validation_md=format_report(report), run_name=run_name,
                           exported_with=doc["config"]["w2sr"]["exported_with"],
                           halo_info={"halo": hm.halo, "too_small": hm.too_small,
                                      "generator_halo": hm.generator_halo if hm.generator_halo is not None
                                      else hm.halo,
                                      "too_small_max_diff": None if hm.too_small_max_diff is None
                                      else f"{hm.too_small_max_diff:.3g}"},
                           macros=[Path(a).name for a in attachments if a.startswith("fiji_macros/")])
    (stage / "README.md").write_text(readme)
    doc["config"]["w2sr"]["files"] = _manifest(stage)
    write_rdf(doc, stage / "rdf.yaml")
    validate_rdf_format(stage / "rdf.yaml")


def _package(stage: Path, doc: dict, fname: str, bioimageio: bool, scale: int) -> None:
    """The DeepImageJ zip (checked as DeepImageJ reads it) and the zoo's format 0.5 package (tested)."""
    from export.rdf import make_zoo_package
    from export.savedmodel import deterministic_zip
    from export.validate import check_deepimagej_zip, run_bioimageio_test

    pkg = stage / "packages"
    pkg.mkdir()
    dij = pkg / f"{fname}_deepimagej.zip"
    deterministic_zip(stage, dij, exclude=("packages", GENERATOR))
    check = check_deepimagej_zip(dij, doc)
    if check["status"] != "passed":
        raise UserError(f"{dij}: {check['detail']}")
    zoo = make_zoo_package(stage / "rdf.yaml", pkg / f"{fname}_zoo-0.5.zip", model_id=doc.get("id"),
                           min_side=int(doc["config"]["w2sr"]["network"]["any_size_from"]), scale=scale)
    if not bioimageio:
        return
    tests = run_bioimageio_test(zoo)
    for t in tests:
        log.info("bioimageio test %s (%s): %s", t["target"], t["weight_format"], t["status"])
    (pkg / f"{fname}_zoo-0.5.test.json").write_text(json.dumps(tests, indent=2) + "\n")
    bad = [t for t in tests if t["status"] != "passed"]
    if bad:
        raise UserError(f"{zoo.name}: the format 0.5 package fails bioimageio test: "
                        + "; ".join(f"{t['weight_format']}: {'; '.join(t['details'])[:300]}" for t in bad))


def _commit(stage: Path, out: Path) -> None:
    """The staged bundle into place in one rename (the old one, if any, is swapped out atomically)."""
    from w2sr.core.files import atomic_replace_dir, share_permissions

    share_permissions(stage)
    if out.exists() and any(out.iterdir()):
        log.info("replacing the existing bundle in %s", out)
    atomic_replace_dir(stage, out)


def _log_sizes(out: Path, fname: str, seconds: float, weights_s: float) -> None:
    sizes = {p.name: p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    log.info("bundle %s written in %.1f s (weights %.1f s): %s %.2f MB, %s %.2f MB, %s %.2f MB, %s %.2f MB",
             out, seconds, weights_s, SAVEDMODEL_ZIP, sizes.get(SAVEDMODEL_ZIP, 0) / 1e6,
             ONNX_WEIGHTS, sizes.get(ONNX_WEIGHTS, 0) / 1e6,
             f"{fname}_deepimagej.zip", sizes.get(f"{fname}_deepimagej.zip", 0) / 1e6,
             f"{fname}_zoo-0.5.zip", sizes.get(f"{fname}_zoo-0.5.zip", 0) / 1e6)
