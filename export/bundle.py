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

import datetime as _dt
import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import yaml

from w2sr.core.contract import zoo_close
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

MARKER_KEY = "w2sr"  # config.w2sr in rdf.yaml marks a bundle this exporter wrote
#: files the rdf names or that belong to the bundle (anything else in a staged folder is a bug)
SCALE = 2
#: DeepImageJ's tile side (input px) unless ``--tile`` says otherwise: the full model's peak memory
#: for one tile stays under 4 GB in DeepImageJ's engines (README, "Memory in DeepImageJ")
DEFAULT_TILE = 512


# --------------------------------------------------------------------------------------------
# the run folder


@dataclass
class RunSource:
    keras_path: Path
    config_path: Path
    run_dir: Path
    cfg: Any


def resolve_source(source: str | Path, config: Optional[str | Path] = None) -> RunSource:
    """A run folder (generator.keras + config.yaml), or a .keras file plus its config."""
    from training.config import load_config

    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: run folder (or .keras file) not found")
    if source.is_dir():
        keras_path = source / "generator.keras"
        if not keras_path.is_file():
            hint = "" if (source / "DONE").exists() else " (training not finished: no DONE marker either)"
            raise UserError(f"{source}: not a finished run folder, no generator.keras{hint}")
        run_dir = source
        if not (source / "DONE").exists():
            log.warning("%s: no DONE marker; exporting generator.keras as it is", source)
    elif source.suffix == ".keras":
        keras_path, run_dir = source, source.parent
    else:
        raise UserError(f"{source}: expected a run folder or a .keras file")
    config_path = Path(config) if config is not None else run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{config_path}: config not found (the resolved training config.yaml holds "
                        f"the normalisation; pass --config)")
    cfg = load_config(config_path)
    norm = cfg.normalization
    if not norm.resolved:
        raise UserError(f"{config_path}: normalization is not resolved (fixed mode: input_mean/input_std/"
                        f"target_mean/target_std must be numbers; use the run's config.yaml written by training)")
    return RunSource(keras_path=keras_path, config_path=config_path, run_dir=run_dir, cfg=cfg)


def fiji_macros() -> list[Path]:
    """The Fiji macros every bundle carries: package data of ``fiji_macros``, so a non-editable
    install has them too. Missing macros are an installation defect, not an option."""
    from importlib.resources import files

    root = files("fiji_macros")
    macros = sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".ijm"))
    if not macros:
        raise UserError(f"{root}: the installed w2sr has no Fiji macros (fiji_macros/*.ijm); reinstall it")
    return macros


def is_our_bundle(path: Path) -> bool:
    rdf = Path(path) / "rdf.yaml"
    if not rdf.is_file():
        return False
    try:
        doc = yaml.safe_load(rdf.read_text()) or {}
    except yaml.YAMLError:
        return False
    return isinstance(doc, dict) and isinstance((doc.get("config") or {}).get(MARKER_KEY), dict)


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
    if not is_our_bundle(out):
        raise UserError(f"{out}: exists and is not a w2sr bundle (no rdf.yaml written by w2sr export); "
                        f"refusing to overwrite it - choose another --out")
    old_name = (yaml.safe_load((out / "rdf.yaml").read_text()) or {}).get("name")
    if name is not None and old_name != name and not force:
        raise UserError(f"{out}: holds the bundle of another model ('{old_name}', not '{name}'); pass --force "
                        f"to replace it (it is replaced only after the new one has been validated)")


def safe_name(name: str) -> str:
    out = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    if not out:
        raise UserError(f"model name {name!r} has no usable characters")
    return out


# --------------------------------------------------------------------------------------------
# images: sample, cover


def _synthetic_sample(size: int, mean: Optional[float], std: Optional[float], seed: int = 0) -> np.ndarray:
    """A W2S-like widefield image from the simulator, rescaled to the training statistics (fixed
    mode), or left in the simulator's camera counts (percentile mode: ``mean`` None)."""
    rng = np.random.default_rng(seed)
    try:
        from training.data import simulator

        wf, _ = simulator.clean_pair(rng, size, 0)
        img = simulator.noisy_averages(rng, wf * np.float32(simulator.GAIN), 1)[1]
    except Exception as exc:  # simulator absent or changed: smooth random field
        log.debug("simulator not usable for the sample (%s); using a smooth random field", exc)
        from scipy.ndimage import gaussian_filter

        img = gaussian_filter(rng.standard_normal((size, size)), 3) + 0.1 * rng.standard_normal((size, size))
    img = np.asarray(img, np.float64)
    if mean is not None and std is not None:
        img = (img - img.mean()) / (img.std() + 1e-12) * std + mean
    return img.astype(np.float32)


def sample_image(src: RunSource, sample: Optional[Path], size: int) -> tuple[np.ndarray, str]:
    """The image used for test tensors, cover and halo: given, else a test FOV of the run's data,
    else a simulated one (with the run's input statistics)."""
    if sample is not None:
        from w2sr.core.images import read_image_2d

        return read_image_2d(sample), str(sample)
    cfg = src.cfg
    roots = [Path(cfg.data.root), src.run_dir / cfg.data.root, src.run_dir.parent / cfg.data.root]
    for root in roots:
        if not root.is_dir():
            continue
        try:
            from training.data.layouts import load_pairs

            pairs = load_pairs(root, cfg.data.layout, cfg.data.noise_level, cfg.data.channels[:1],
                               cfg.data.test_fovs[:1], progress=False,
                               npy_as_counts=cfg.data.npy_as_counts)
            if pairs:
                return np.asarray(pairs[0].lr, np.float32), f"{pairs[0].lr_source} (test FOV {pairs[0].fov})"
        except Exception as exc:
            log.info("could not read a test image from %s (%s)", root, str(exc).splitlines()[0] if str(exc) else exc)
    n = cfg.normalization
    log.info("no data found for the sample image; simulating a %dx%d widefield image", size, size)
    return _synthetic_sample(size, n.input_mean, n.input_std), "simulated (training.data.simulator)"


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    if h < size or w < size:
        from export.tiling import mirror_indices

        img = img[np.ix_(mirror_indices(max(h, size), h), mirror_indices(max(w, size), w))]
        h, w = img.shape
    y0, x0 = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y0:y0 + size, x0:x0 + size])


def write_cover(path: Path, inp: np.ndarray, out: np.ndarray) -> None:
    """input (nearest x2) | output, side by side, each with its own 0.5-99.5 % display range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def disp(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [0.5, 99.5])
        return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)

    up = np.repeat(np.repeat(inp, SCALE, 0), SCALE, 1)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=100)
    for ax, img, title in ((axes[0], up, f"input (widefield) {inp.shape[0]} x {inp.shape[1]}"),
                           (axes[1], out, f"output (2x SR + denoised) {out.shape[0]} x {out.shape[1]}")):
        ax.imshow(disp(img), cmap="magma", interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# halo


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
                n_pos: int = 3) -> tuple[float, bool]:
    """Max diff between crops with ``h`` px of context and the whole-image output, at several places."""

    H, W = x.shape
    ys = np.unique(np.linspace(h, H - core - h, n_pos).astype(int))
    xs = np.unique(np.linspace(h, W - core - h, n_pos).astype(int))
    crops, where = [], []
    for y in ys:
        for x0 in xs:
            crops.append(x[y - h: y + core + h, x0 - h: x0 + core + h])
            where.append((y, x0))
    out = post(np.asarray(predict(np.stack(crops)[..., None]))[..., 0])
    worst, ok = 0.0, True
    for k, (y, x0) in enumerate(where):
        got = out[k, SCALE * h: SCALE * (h + core), SCALE * h: SCALE * (h + core)]
        want = ref[SCALE * y: SCALE * (y + core), SCALE * x0: SCALE * (x0 + core)]
        d, good, _ = zoo_close(got, want)
        worst, ok = max(worst, d), ok and good
    return worst, ok


def tiled_max_diff(predict: Callable, x: np.ndarray, ref: np.ndarray, post: Callable, halo: int,
                   tile: int) -> tuple[float, bool]:
    """predict_tiled (export.tiling) with ``halo`` vs the whole-image output ``ref`` (postprocessed)."""
    from export.tiling import predict_tiled

    out = post(predict_tiled(predict, x, tile, halo, scale=SCALE))
    d, ok, _ = zoo_close(out, ref)
    return d, ok


def measure_halo(predict: Callable, x: np.ndarray, post: Callable, *, core: int = 16,
                 confirm_core: int = 64, max_halo: Optional[int] = None) -> HaloMeasurement:
    """Smallest halo (input px) for which tiles reproduce the whole image within the zoo tolerance.

    ``x``: a normalised 2D image. Search on crops with ``core`` px kept and ``h`` px of context
    (doubling, then bisection), then confirmed with ``export.tiling.predict_tiled`` over the whole
    image (tiles of ``2*halo + confirm_core``), and shown to fail with one pixel less.
    """
    t0 = time.perf_counter()
    H, W = x.shape
    limit = (min(H, W) - core) // 2
    if max_halo is not None:
        limit = min(limit, max_halo)
    if limit < 1:
        raise UserError(f"image {H}x{W} too small to measure a halo")
    ref = post(np.asarray(predict(x[None, :, :, None]))[0, :, :, 0])
    tried: dict[int, tuple[float, bool]] = {}

    def ok(h: int) -> bool:
        if h not in tried:
            tried[h] = _crop_check(predict, x, ref, post, h, core)
            log.debug("halo %d: max diff %.3g %s", h, *tried[h])
        return tried[h][1]

    seq = [0, 1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384]
    seq = [h for h in seq if h < limit] + [limit]
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
        while hi - lo > 1:  # smallest passing in (lo, hi]
            mid = (lo + hi) // 2
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
    d, good = tiled_max_diff(predict, x, ref, post, halo, tile)
    first_d, d2, h2 = d, d, halo
    if not good:
        for h2 in sorted({min(limit, v) for v in (halo + 2, -(-3 * halo // 2), 2 * halo)} - {halo}):
            log.info("halo %d passed on crops but not tiled (max diff %.3g); trying %d", halo, d, h2)
            t2 = min(2 * h2 + confirm_core, min(H, W))
            d2, good2 = tiled_max_diff(predict, x, ref, post, h2, t2)
            if good2:
                halo, tile, d, good = h2, t2, d2, True
                break
        else:
            log.warning("tiles differ from the whole image by up to %.3g (%.3g with %d px more halo): "
                        "float32 noise of the runtime where outputs are near zero, not missing context; "
                        "it exceeds the zoo tolerance", first_d, d2, h2 - halo)
    too_small = too_d = too_fails = None
    if halo > 0:  # one pixel less: on the crops (fails by construction of the search) and tiled
        too_small = halo - 1
        ok(too_small)  # cached when the search already tried it
        crop_d, crop_ok = tried[too_small]
        tiled_d, tiled_ok = tiled_max_diff(predict, x, ref, post, too_small,
                                           min(2 * too_small + confirm_core, min(H, W)))
        too_d, too_fails = max(crop_d, tiled_d), not (crop_ok and tiled_ok)
    return HaloMeasurement(halo=halo, max_diff=d, too_small=too_small, too_small_max_diff=too_d,
                           too_small_fails=too_fails, tile=tile, image_shape=(H, W),
                           candidates=[(h, v[0], v[1]) for h, v in sorted(tried.items())],
                           converged=converged and good, seconds=round(time.perf_counter() - t0, 1))


def deepimagej_max_diff(predict: Callable, x: np.ndarray, ref: np.ndarray, post: Callable, halo: int,
                        tile: int) -> tuple[float, bool]:
    """DeepImageJ 3.1's tiling (``export.jdll``: tiles of ``tile`` px mirror-padded by ``halo``) of the
    normalised image ``x`` vs the whole-image output ``ref`` (postprocessed)."""
    from export import jdll

    axis = jdll.JdllAxis(min=tile, step=0, halo=halo, scale=float(SCALE), out_halo=SCALE * halo)
    model = jdll.JdllModel(axes="byxc", y=axis, x=axis, tiling=True, preprocessing=[], postprocessing=[])
    d, ok, _ = zoo_close(post(jdll.predict(model, predict, x)), ref)
    return d, ok


def fit_padding(model: Any, zip_path: Path, source: Path, hm: HaloMeasurement, x: np.ndarray, post: Callable,
                *, tile: int, fixed: bool = False, tries: int = 4) -> tuple[Any, HaloMeasurement]:
    """Export the SavedModel with in-graph symmetric padding = halo, and make sure that halo holds.

    The halo measured on the generator (zeros beyond a tile, one sample image) is a lower bound:
    inside the padded graph a tile's border sees mirrored pixels instead, the graph's own padding
    must outreach the network's context too, and two tilings (DeepImageJ's and ``w2sr predict``'s)
    may each be off by the tolerance in opposite directions on another image. So start with a margin
    (+50 %, at least 4 px; +25 % / 2 px let a test image through DeepImageJ's tiles differ from whole-image
    inference on one pixel by 8.5e-4) and check on ``x`` (the normalised measurement crop) that
    DeepImageJ's tiling and ``w2sr predict``'s tiling both reproduce the whole image; grow by 25 %
    while they do not. ``fixed``: the halo was given: check it as it is, no margin, no growth."""
    from export.runtimes import SavedModelRuntime
    from export.savedmodel import export_savedmodel

    h = hm.halo if fixed or hm.halo == 0 else hm.halo + max(4, -(-hm.halo // 2))
    side = min(x.shape)
    for attempt in range(1 if fixed else tries):
        if tile <= 2 * h:
            raise UserError(f"--tile {tile} must exceed twice the halo ({2 * h} px)")
        sm = export_savedmodel(model, zip_path, source=source, padding=h)
        rt = SavedModelRuntime(zip_path)
        ref = post(rt.predict(x[None, :, :, None])[0, :, :, 0])
        d_dij, ok_dij = deepimagej_max_diff(rt.predict, x, ref, post, h, min(tile, side))
        d_tiled, ok_tiled = tiled_max_diff(rt.predict, x, ref, post, h, min(2 * h + 16, side))
        log.info("graph padding %d px: DeepImageJ tiling max diff %.3g (%s), w2sr tiling %.3g (%s)",
                 h, d_dij, "ok" if ok_dij else "FAIL", d_tiled, "ok" if ok_tiled else "FAIL")
        if ok_dij and ok_tiled:
            break
        if not fixed and attempt + 1 < tries:
            h = -(-5 * h // 4) + 1
    else:
        raise UserError(f"{source}: no halo up to {h} px reproduces the whole image in DeepImageJ's tiles "
                        f"(max diff {max(d_dij, d_tiled):.3g}); measure on a larger sample or pass --halo")
    hm = HaloMeasurement(**{**asdict(hm), "halo": h, "max_diff": max(d_dij, d_tiled), "converged": True,
                            "generator_halo": hm.halo})
    return sm, hm


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


def _share_permissions(root: Path) -> None:
    """Temp files/folders are private (0600/0700); give the bundle the usual umask permissions."""
    import os

    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)


def _manifest(root: Path) -> dict[str, str]:
    from export.bundle_info import sha256_file

    files = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel != "rdf.yaml" and not rel.startswith("packages/"):
            files[rel] = sha256_file(p)
    return files


def export_bundle(source: str | Path, out: str | Path, *, config: Optional[str | Path] = None,
                  name: Optional[str] = None, force: bool = False, sample: Optional[str | Path] = None,
                  tile: int = DEFAULT_TILE, halo: Optional[int] = None,
                  halo_image_size: int = 256, max_halo: Optional[int] = None,
                  authors: Optional[Sequence[dict]] = None, license: str = "MIT",
                  odd_sizes: Sequence[tuple[int, int]] = ((333, 517),), bioimageio: bool = True,
                  measure: bool = True, engines: bool | Sequence[str] = False) -> Path:
    """Build, validate and move into place a bundle for the run ``source``; returns ``out``.

    ``source``: a run folder (generator.keras + config.yaml), or a .keras file with ``config``.
    ``name``: the model name (rdf name, package file names); default the config's ``name``.
    ``force``: replace an existing bundle of ANOTHER model name (one of the same name is updated
    anyway; a folder that is not a w2sr bundle is never replaced).
    ``sample``: 2D image (tif/npy/png) for the test tensors, cover and halo; default a test FOV of
    the run's data, else a simulated image. ``halo``: skip the measurement and use this value
    (input px; it is still checked). ``tile``: DeepImageJ's tile side (the rdf's fixed input size,
    step 0) and the side of the test tensors; it bounds DeepImageJ's memory (see README).
    ``bioimageio``/``measure``: run ``bioimageio test`` / the subprocess timing (both on by default;
    off only for quick development runs). ``engines``: also run export.engines (old runtimes).
    """
    from export.onnx_export import export_onnx
    from export.rdf import (ONNX_OPSET, POST_MACRO, PRE_MACRO, TENSORFLOW_VERSION, RdfParams, build_rdf,
                            deepimagej_macros, make_zoo_package, render_readme, validate_rdf_format, write_rdf)
    from export.savedmodel import check_generator, export_savedmodel, load_generator
    from export.bundle_info import sha256_file
    from export.validate import (check_deepimagej_zip, format_report, run_bioimageio_test,
                                 validate_bundle, write_report)
    from w2sr.core.files import atomic_replace_dir, disk_problem, recover_replaced_dir, sweep_stale, temp_prefix

    t_start = time.perf_counter()
    out = Path(out)
    recover_replaced_dir(out)  # a killed swap: the old bundle comes back before anything else
    sweep_stale(out.parent, prefix=f".{out.name}.staging.")  # staging folders of killed exports
    if tile < 16:
        raise UserError(f"--tile {tile}: DeepImageJ's tile must be at least 16 px (default {DEFAULT_TILE})")
    src = resolve_source(source, config)
    cfg = src.cfg
    norm = cfg.normalization
    maths = norm.maths
    name = name or cfg.name
    fname = safe_name(name)
    check_out(out, force, name)
    log.info("exporting %s (config %s) -> %s as '%s'", src.keras_path, src.config_path, out, name)

    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=temp_prefix(out.name, "staging"), dir=out.parent))
    except OSError as exc:
        raise UserError(f"{out.parent}: cannot write the bundle there ({disk_problem(exc) or exc.strerror or exc})") from None
    try:
        # 1. the generator ---------------------------------------------------------------------
        model = load_generator(src.keras_path)
        check_generator(model, src.keras_path, scale=SCALE)
        shutil.copy2(src.keras_path, stage / "generator.keras")
        shutil.copy2(src.config_path, stage / "training_config.yaml")
        from export.runtimes import KerasRuntime, SavedModelRuntime

        plain = KerasRuntime(model)
        post = maths.output

        # 2. sample image and halo (how far context reaches), on the generator itself ----------------
        image, image_source = sample_image(src, Path(sample) if sample else None, max(tile, halo_image_size))
        log.info("sample image: %s, %dx%d", image_source, *image.shape)
        side = min(halo_image_size, max(min(image.shape), 64))
        x_measure = maths.input(center_crop(image, side))
        if halo is None:
            log.info("measuring the halo on a %dx%d crop ...", *x_measure.shape)
            hm = measure_halo(plain.predict, x_measure, post, max_halo=max_halo)
        else:  # given: checked, not searched
            ref = post(plain.predict(x_measure[None, :, :, None])[0, :, :, 0])
            check_tile = min(2 * halo + 64, *x_measure.shape)
            d, good = tiled_max_diff(plain.predict, x_measure, ref, post, halo, check_tile)
            hm = HaloMeasurement(halo=halo, max_diff=d, too_small=None, too_small_max_diff=None,
                                 too_small_fails=None, tile=check_tile, image_shape=x_measure.shape, converged=good)
        if not hm.converged:
            log.warning("halo %d does not reproduce the whole image within tolerance (max diff %.3g)",
                        hm.halo, hm.max_diff)
        log.info("halo %d px (tiled max diff %.3g; with %s px: %s) in %.1f s", hm.halo, hm.max_diff,
                 hm.too_small, hm.too_small_max_diff, hm.seconds)
        # 3. weights: the graph pads its input by the halo, so borders do not depend on the caller;
        #    the halo grows until DeepImageJ's tiles and ours reproduce the whole image -------------
        t0 = time.perf_counter()
        sm, hm = fit_padding(model, stage / "tf_saved_model.zip", src.keras_path, hm, x_measure, post,
                             tile=tile, fixed=halo is not None)
        padding = hm.halo  # the graph's own symmetric padding (export.padding) = the rdf halo
        any_size_from = max(1, padding)
        onnx_res = export_onnx(stage / "tf_saved_model.zip", stage / "weights.onnx")
        t_weights = time.perf_counter() - t0
        runtime = SavedModelRuntime(stage / "tf_saved_model.zip")
        size = tile

        # 3. test tensors, samples, cover, macros ---------------------------------------------
        crop = center_crop(image, size)
        raw = crop[None, :, :, None].astype(np.float32)
        y = post(runtime.predict(maths.input(raw[0, :, :, 0])[None, :, :, None])).astype(np.float32)
        np.save(stage / "test_input.npy", raw)
        np.save(stage / "test_output.npy", y)
        import tifffile

        tifffile.imwrite(stage / "sample_input.tif", raw[0, :, :, 0], imagej=True, metadata={"axes": "YX"})
        tifffile.imwrite(stage / "sample_output.tif", y[0, :, :, 0], imagej=True, metadata={"axes": "YX"})
        write_cover(stage / "cover.png", raw[0, :, :, 0], y[0, :, :, 0])
        pre_txt, post_txt = deepimagej_macros(maths)
        (stage / PRE_MACRO).write_text(pre_txt)
        (stage / POST_MACRO).write_text(post_txt)
        macros = fiji_macros()
        (stage / "fiji_macros").mkdir()
        for m in macros:
            shutil.copy2(m, stage / "fiji_macros" / m.name)

        # 4. timing and memory of the SavedModel on the test image (fresh process) -----------
        memory_peak = runtime_s = None
        if measure:
            from export.runtimes import measure_in_subprocess

            log.info("timing the SavedModel on %dx%d in a fresh process ...", size, size)
            meas = measure_in_subprocess("savedmodel", stage / "tf_saved_model.zip", size=size, repeats=3)
            memory_peak = f"{meas.peak_rss_mb:.1f} Mb"
            runtime_s = f"{meas.median_s:.2f} s"
        versions = _versions()

        # 5. rdf (draft: everything but the README's validation section and the file list) ----
        attachments = [PRE_MACRO, POST_MACRO, "training_config.yaml", "parity.md", "parity.json"]
        attachments += [f"fiji_macros/{m.name}" for m in macros]
        w2sr_block = {
            "exported_with": versions,
            "run": {"name": cfg.name, "folder": src.run_dir.name, "generator": cfg.generator.model_dump(mode="json")},
            "normalization": {k: v for k, v in norm.model_dump().items() if v is not None},
            "halo": {k: v for k, v in asdict(hm).items() if k != "candidates"},
            "sample_image": image_source,
            "savedmodel": {"ops": sm.ops, "n_weights": sm.n_weights, "n_params": sm.n_params,
                           "tensorflow_version_declared": TENSORFLOW_VERSION},
            "onnx": {"opset": ONNX_OPSET, "ops": onnx_res.ops},
            "keras_generator": "generator.keras (not a listed weight format)",
        }
        params = RdfParams(
            name=name, normalization=maths, halo=hm.halo, tile=tile, padding=padding, any_size_from=any_size_from,
            savedmodel_sha256=sha256_file(stage / "tf_saved_model.zip"), onnx_sha256=sha256_file(stage / "weights.onnx"),
            timestamp=_timestamp(src.keras_path), authors=list(authors) if authors else [{"name": "w2sr contributors"}],
            license=license, memory_peak=memory_peak, runtime=runtime_s, attachments=attachments, w2sr=w2sr_block,
        )
        doc = build_rdf(params)
        # placeholders so the draft validates (files named in the rdf must exist)
        for f in ("README.md", "parity.md", "parity.json"):
            (stage / f).write_text("(written after validation)\n")
        write_rdf(doc, stage / "rdf.yaml")
        validate_rdf_format(stage / "rdf.yaml")

        # 6. validation ---------------------------------------------------------------------------
        report = validate_bundle(stage, keras_path=stage / "generator.keras", bioimageio=bioimageio,
                                 sizes=odd_sizes, packages=False, engines=engines)
        print(format_report(report))
        if not report.ok:
            raise UserError(f"{out}: the new bundle failed validation ({len(report.failures)} problems: "
                            f"{'; '.join(report.failures[:3])}); nothing was written")
        if not bioimageio:
            report.notes.append("bioimageio test not run (quick export)")

        # 7. documentation, file list, final rdf ------------------------------------------------
        write_report(report, stage)
        validation_md = format_report(report)
        readme = render_readme(name=name, rdf=doc, validation_md=validation_md, run_name=cfg.name,
                               exported_with=versions,
                               halo_info={"halo": hm.halo, "too_small": hm.too_small,
                                          "generator_halo": hm.generator_halo if hm.generator_halo is not None
                                          else hm.halo,
                                          "too_small_max_diff": None if hm.too_small_max_diff is None
                                          else f"{hm.too_small_max_diff:.3g}"},
                               macros=[m.name for m in macros])
        (stage / "README.md").write_text(readme)
        doc["config"]["w2sr"]["files"] = _manifest(stage)
        write_rdf(doc, stage / "rdf.yaml")
        validate_rdf_format(stage / "rdf.yaml")

        # 8. packages -------------------------------------------------------------------------------
        from export.savedmodel import deterministic_zip

        pkg = stage / "packages"
        pkg.mkdir()
        dij = pkg / f"{fname}_deepimagej.zip"
        deterministic_zip(stage, dij, exclude=("packages", "generator.keras"))
        check = check_deepimagej_zip(dij, doc)
        if check["status"] != "passed":
            raise UserError(f"{dij}: {check['detail']}")
        zoo = make_zoo_package(stage / "rdf.yaml", pkg / f"{fname}_zoo-0.5.zip", model_id=fname.lower())
        if bioimageio:
            tests = run_bioimageio_test(zoo)
            for t in tests:
                log.info("bioimageio test %s (%s): %s", t["target"], t["weight_format"], t["status"])
            (pkg / f"{fname}_zoo-0.5.test.json").write_text(json.dumps(tests, indent=2) + "\n")
            bad = [t for t in tests if t["status"] != "passed"]
            if bad:
                raise UserError(f"{zoo.name}: the format 0.5 package fails bioimageio test: "
                                + "; ".join(f"{t['weight_format']}: {'; '.join(t['details'])[:300]}" for t in bad))

        # 9. into place -----------------------------------------------------------------------------
        _share_permissions(stage)
        check_out(out, force, name)
        if out.exists() and any(out.iterdir()):
            log.info("replacing the existing bundle in %s", out)
        atomic_replace_dir(stage, out)
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
    sizes = {p.name: p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    log.info("bundle %s written in %.1f s (weights %.1f s): tf_saved_model.zip %.2f MB, weights.onnx %.2f MB, "
             "%s %.2f MB, %s %.2f MB", out, time.perf_counter() - t_start, t_weights,
             sizes.get("tf_saved_model.zip", 0) / 1e6, sizes.get("weights.onnx", 0) / 1e6,
             f"{fname}_deepimagej.zip", sizes.get(f"{fname}_deepimagej.zip", 0) / 1e6,
             f"{fname}_zoo-0.5.zip", sizes.get(f"{fname}_zoo-0.5.zip", 0) / 1e6)
    return out
