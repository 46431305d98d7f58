"""The bundle's outputs through every runtime, compared on every pixel within the zoo tolerance
(``w2sr.core.contract``): the parity matrix on the stored test input (Keras, SavedModel TF2 and TF1
APIs, ONNX Runtime, GPU where present; tiled against whole), DeepImageJ 3.1's tiles (``w2sr.bundle.jdll``),
and odd sizes and 8/16-bit inputs. ``export.validate`` runs them and reports."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from w2sr.core.contract import GENERATOR, zoo_close
from w2sr.core.tiling import mirror_to

log = logging.getLogger(__name__)

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
#: a fast mode's row: its deviation is reported, never judged as parity
MEASURED = "measured"


@dataclass
class Comparison:
    max_abs_diff: Optional[float] = None
    ok: Optional[bool] = None
    n_bad: Optional[int] = None

    @classmethod
    def of(cls, a: np.ndarray, b: np.ndarray) -> "Comparison":
        d, ok, n = zoo_close(a, b)
        return cls(d, ok, n)

    def cell(self) -> str:
        if self.ok is None:
            return "-"
        mark = "ok" if self.ok else f"FAIL ({self.n_bad} px)"
        return f"{self.max_abs_diff:.2e} {mark}"


@dataclass
class ParityRow:
    key: str
    label: str
    device: str
    status: str
    vs_test_output: Comparison = field(default_factory=Comparison)
    vs_keras: Comparison = field(default_factory=Comparison)
    tiled_vs_whole: Comparison = field(default_factory=Comparison)
    seconds: Optional[float] = None
    reason: str = ""


@dataclass
class Deviation:
    """How far a fast mode (TF32, bf16, fp16) is from the reference: reported, never parity."""
    psnr_db: Optional[float] = None      # vs the reference, peak = the reference's range
    outside: Optional[float] = None      # fraction of pixels outside the zoo tolerance
    max_abs_diff: Optional[float] = None

    @classmethod
    def of(cls, a: np.ndarray, reference: np.ndarray) -> "Deviation":
        from w2sr.core.metrics import psnr

        d, _, n_bad = zoo_close(a, reference)
        a2, r2 = np.squeeze(a), np.squeeze(reference)
        db = float("inf") if np.array_equal(a2, r2) else psnr(a2, r2)
        return cls(round(db, 2), n_bad / max(1, np.size(reference)), d)

    def cell(self) -> str:
        if self.psnr_db is None:
            return "-"
        return f"{self.psnr_db:.1f} dB, {self.outside:.2%} px outside, max {self.max_abs_diff:.2e}"


@dataclass
class FastModeRow:
    key: str
    label: str
    device: str
    math: str
    status: str                  # measured | skipped | failed (could not run)
    vs_test_output: Deviation = field(default_factory=Deviation)
    seconds: Optional[float] = None
    reason: str = ""


@dataclass
class SizeRow:
    shape: tuple
    dtype: str
    runtime: str
    tiles: int
    canvas: tuple
    vs_keras_whole: Comparison
    status: str
    reference: str = "keras"


# --------------------------------------------------------------------------------------------
# helpers


def _keras_path(info: Any, given: Optional[Path]) -> Optional[Path]:
    if given is not None:
        return Path(given)
    if info.keras_path is not None and Path(info.keras_path).is_file():
        return Path(info.keras_path)
    cand = info.root / GENERATOR
    return cand if cand.is_file() else None


def _tile_for(info: Any, extra: int = 16, side: int = 0) -> int:
    """A tile for the tiled-vs-whole rows: several tiles (about 3 x 3) even on the test input, but
    not so small that the halo dominates (the full model costs ~45 s per 512^2 here)."""
    smallest = info.any_size_from if info.any_size_from is not None else info.min_size
    return int(info.valid_size_at_least(max(smallest, 2 * info.halo + extra, side // 3 + 2 * info.halo)))


class RuntimePool:
    """Every runtime of one bundle, opened once per validation: the rows, the odd sizes, DeepImageJ's
    path and the percentile note share them (keys as ``export.runtimes.make_runtime``'s)."""

    def __init__(self, info: Any, keras_path: Optional[Path]):
        self.info, self.keras_path = info, keras_path
        self._open: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        if key not in self._open:
            from export.runtimes import make_runtime

            info = self.info
            self._open[key] = make_runtime(key, keras_path=self.keras_path, savedmodel=info.savedmodel_zip,
                                           onnx_path=info.onnx_path, padding=info.padding, scale=info.scale,
                                           multiple=info.multiple)
        return self._open[key]

    @property
    def opened(self) -> list[str]:
        return list(self._open)


def _as_dtype(image: np.ndarray, dtype: str) -> tuple[Optional[np.ndarray], str]:
    """The raw image as a user's ``dtype`` file would hold it: rounded and clipped to the type's
    range (no rescaling: a rescaled image would be out of the model's input distribution, and the
    halo is only valid in distribution). None (with the reason) when nothing usable is left."""
    if dtype == "float32":
        return image.astype(np.float32), ""
    top = float(np.iinfo(dtype).max)
    out = np.clip(np.rint(image), 0, top).astype(dtype)
    clipped = float(np.mean((image < -0.5) | (image > top + 0.5)))
    if out.std() == 0:
        return None, f"{dtype}: raw range [{image.min():.3g}, {image.max():.3g}] leaves a constant image; skipped"
    note = f"{dtype}: {clipped:.1%} of the pixels clipped to [0, {top:.0f}]" if clipped else ""
    return out, note


# --------------------------------------------------------------------------------------------
# (b) parity matrix


def _row_label(r: Any) -> str:
    """E.g. "ONNX Runtime CUDA, fp32 (TF32 off)", "Keras GPU, bf16"; CPU rows carry no mode."""
    name = {"keras": "Keras", "tensorflow_saved_model_bundle": "SavedModel (TF2 signature)",
            "onnx": "ONNX Runtime"}[r.format]
    where = "CPU" if r.device == "cpu" else ("CUDA" if r.key.startswith("onnx-cuda") else "GPU")
    if r.device == "cpu" and r.strict:
        return f"{name} {where}"
    return f"{name} {where}, " + ("fp32 (TF32 off)" if r.strict else r.math)


def parity_matrix(info: Any, keras_path: Optional[Path],
                  pool: Optional[RuntimePool] = None) -> tuple[list[ParityRow], Optional[np.ndarray]]:
    from export.runtimes import available_runtimes
    from w2sr.bundle.savedmodel import run_tf1
    from w2sr.core.tiling import count_tiles, predict_tiled

    raw = np.load(info.test_input).astype(np.float32)
    expected = np.load(info.test_output).astype(np.float32)
    x = info.normalization.input(raw[0, :, :, 0])[None, :, :, None]
    post = info.normalization.output
    tile = _tile_for(info, side=min(x.shape[1:3]))
    img = x[0, :, :, 0]
    n_tiles = count_tiles(img.shape, tile, info.halo, info.valid_size_at_least, info.multiple)
    rows: list[ParityRow] = []
    keras_out: Optional[np.ndarray] = None
    pool = pool or RuntimePool(info, keras_path)

    for r in available_runtimes():
        label = _row_label(r)
        if not r.available:
            rows.append(ParityRow(r.key, label, r.device, SKIPPED, reason=r.reason))
            continue
        if r.format == "keras" and keras_path is None:
            rows.append(ParityRow(r.key, label, r.device, SKIPPED,
                                  reason="no generator.keras in the bundle folder (pass --keras RUN/generator.keras)"))
            continue
        t0 = time.perf_counter()
        try:
            rt = pool.get(r.key)
            whole = post(rt.predict(x))
            tiled = post(predict_tiled(rt.predict, img, tile, info.halo, scale=info.scale,
                                       valid_size=info.valid_size_at_least, align=info.multiple))
        except Exception as exc:
            rows.append(ParityRow(r.key, label, r.device, FAILED, reason=f"{type(exc).__name__}: {exc}"))
            continue
        row = ParityRow(r.key, label, r.device, PASSED, seconds=round(time.perf_counter() - t0, 2),
                        reason=f"tile {tile} px, halo {info.halo} px, {n_tiles} tiles")
        row.vs_test_output = Comparison.of(whole, expected)
        row.tiled_vs_whole = Comparison.of(tiled, whole[0, :, :, 0])
        if r.key == "keras-cpu":
            keras_out = whole
        elif keras_out is not None:
            row.vs_keras = Comparison.of(whole, keras_out)
        rows.append(row)

    # the TF1 session API (what DeepImageJ's TF engines call), on this TensorFlow
    t0 = time.perf_counter()
    try:
        y1 = post(run_tf1(info.savedmodel_zip, x))
        row = ParityRow("savedmodel-tf1-session", "SavedModel (TF1 session, tag serve)", "cpu", PASSED,
                        seconds=round(time.perf_counter() - t0, 2))
        row.vs_test_output = Comparison.of(y1, expected)
        if keras_out is not None:
            row.vs_keras = Comparison.of(y1, keras_out)
        rows.append(row)
    except Exception as exc:
        rows.append(ParityRow("savedmodel-tf1-session", "SavedModel (TF1 session, tag serve)", "cpu", FAILED,
                              reason=f"{type(exc).__name__}: {exc}"))

    rows += deepimagej_rows(info, raw, expected, pool)
    for row in rows:
        if row.status != PASSED:
            continue
        if any(c.ok is False for c in (row.vs_test_output, row.vs_keras, row.tiled_vs_whole)):
            row.status = FAILED
    return rows, keras_out


def fast_mode_rows(info: Any, keras_path: Optional[Path], device: str = "gpu",
                   pool: Optional[RuntimePool] = None) -> list[FastModeRow]:
    """Each fast mode (``export.runtimes.fast_runtimes``) on the test input, whole image, with its
    deviation from ``test_output.npy``. Reported beside the parity matrix, never counted in it."""
    from export.runtimes import fast_runtimes

    raw = np.load(info.test_input).astype(np.float32)
    expected = np.load(info.test_output).astype(np.float32)
    x = info.normalization.input(raw[0, :, :, 0])[None, :, :, None]
    rows: list[FastModeRow] = []
    pool = pool or RuntimePool(info, keras_path)
    for r in fast_runtimes(device):
        label = _row_label(r)
        if not r.available:
            rows.append(FastModeRow(r.key, label, r.device, r.math, SKIPPED, reason=r.reason))
            continue
        if r.format == "keras" and keras_path is None:
            rows.append(FastModeRow(r.key, label, r.device, r.math, SKIPPED, reason="no generator.keras"))
            continue
        t0 = time.perf_counter()
        try:
            out = info.normalization.output(pool.get(r.key).predict(x))
        except Exception as exc:
            rows.append(FastModeRow(r.key, label, r.device, r.math, FAILED, reason=f"{type(exc).__name__}: {exc}"))
            continue
        rows.append(FastModeRow(r.key, label, r.device, r.math, MEASURED, Deviation.of(out, expected),
                                round(time.perf_counter() - t0, 2), "not parity: a fast mode, reported only"))
    return rows


# --------------------------------------------------------------------------------------------
# (c) odd sizes and bit depths


def size_checks(info: Any, keras_path: Optional[Path], sizes: Sequence[tuple[int, int]],
                dtypes: Sequence[str] = ("uint8", "uint16", "float32"),
                pool: Optional[RuntimePool] = None) -> tuple[list[SizeRow], list[str]]:
    import tifffile
    from w2sr.core.tiling import canvas_shape, count_tiles, predict_tiled, predict_whole

    notes: list[str] = []
    sample = tifffile.imread(info.root / "sample_input.tif").astype(np.float32)
    if sample.ndim != 2:
        sample = np.squeeze(sample)
    pool = pool or RuntimePool(info, keras_path)
    onnx_rt, sm_rt = pool.get("onnx-cpu"), pool.get("savedmodel-cpu")
    if keras_path is not None:
        ref_rt: Any = pool.get("keras-cpu")
        ref_name = "keras"
    else:
        ref_rt, ref_name = sm_rt, "savedmodel"
        notes.append("no Keras generator: odd sizes compared with the SavedModel on the whole image")
    rows: list[SizeRow] = []
    tile = _tile_for(info, extra=64)
    post = info.normalization.output
    from w2sr.bundle import jdll

    jmodel = jdll.JdllModel.from_rdf(info.doc)
    try:
        jdll.check_processing(jmodel)
    except jdll.JdllError as exc:
        notes.append(f"DeepImageJ 3.1 rows skipped: JDLL {jdll.JDLL_VERSION} throws on this rdf ({exc})")
        jmodel = None
    for shape in sizes:
        base = mirror_to(sample, tuple(shape))
        for dtype in dtypes:
            image, note = _as_dtype(base, dtype)
            if note:
                notes.append(note)
            if image is None:
                continue
            x = info.normalization.input(image)
            # reference: the whole image in one call, on the canvas the rdf requires (mirror-padded
            # to a valid size; with step 1 and a size >= min that is the image itself)
            ref = post(predict_whole(ref_rt.predict, x, valid_size=info.valid_size_at_least, scale=info.scale))
            runtimes = [("onnx", onnx_rt)] + ([("savedmodel", sm_rt)] if dtype in ("float32", "uint16") else [])
            for name, rt in runtimes:
                out = post(predict_tiled(rt.predict, x, tile, info.halo, scale=info.scale,
                                         valid_size=info.valid_size_at_least, align=info.multiple))
                cmp_ = Comparison.of(out, ref)
                rows.append(SizeRow(
                    shape=tuple(int(s) for s in shape), dtype=dtype, runtime=name,
                    tiles=count_tiles(x.shape, tile, info.halo, info.valid_size_at_least, info.multiple),
                    canvas=canvas_shape(x.shape, info.valid_size_at_least), vs_keras_whole=cmp_,
                    status=PASSED if cmp_.ok else FAILED, reference=ref_name))
            if jmodel is not None and dtype == "float32":  # what a Fiji user gets through the Fiji macro
                # (JDLL copies every image to float first, so 8/16-bit inputs add nothing here)
                try:
                    out = jdll.predict_like_macro(jmodel, onnx_rt.predict, image)
                except jdll.JdllError as exc:
                    notes.append(f"DeepImageJ 3.1 (JDLL {jdll.JDLL_VERSION}) refuses {shape[0]} x {shape[1]}: {exc}")
                    continue
                cmp_ = Comparison.of(out, ref)
                canvas = jdll.macro_canvas(jmodel, image.shape)
                rows.append(SizeRow(
                    shape=tuple(int(s) for s in shape), dtype=dtype, runtime="deepimagej-3.1 (onnx, Fiji macro)",
                    tiles=jdll.plan(jmodel, canvas).n_tiles, canvas=canvas, vs_keras_whole=cmp_,
                    status=PASSED if cmp_.ok else FAILED, reference=ref_name))
                if canvas != image.shape:
                    notes.append(_raw_deepimagej_note(jmodel, onnx_rt, image, ref))
    return rows, notes


def _raw_deepimagej_note(jmodel: Any, onnx_rt: Any, image: np.ndarray, ref: np.ndarray) -> str:
    """What DeepImageJ 3.1 alone (without the Fiji macro's padding) does to a small image."""
    from w2sr.bundle import jdll

    h, w = image.shape
    try:
        tp = jdll.plan(jmodel, image.shape)
        d, ok, n_bad = zoo_close(jdll.predict(jmodel, onnx_rt.predict, image), ref)
    except jdll.JdllError as exc:
        return f"{h} x {w} in DeepImageJ 3.1 without the Fiji macro: refused ({exc})"
    why = "JDLL shifts its output by one pixel (tile - size odd and > 2 x halo)" if tp.shifted else ""
    return (f"{h} x {w} in DeepImageJ 3.1 without the Fiji macro's padding: max diff {d:.3g}, "
            f"{n_bad} px outside the tolerance{'; ' + why if why else ''}; the Fiji macro pads it to "
            f"{jdll.macro_canvas(jmodel, image.shape)}")


def deepimagej_rows(info: Any, raw: np.ndarray, expected: np.ndarray,
                    pool: Optional[RuntimePool] = None) -> list[ParityRow]:
    """The bundle as DeepImageJ 3.1 runs it (``w2sr.bundle.jdll``: JDLL 0.6.1's kwargs checks, processing on
    a float copy, tiles of its formula mirror-padded by the halo, its stitching), in ONNX Runtime and
    in the SavedModel, against the stored test output on every pixel."""
    from w2sr.bundle import jdll

    model = jdll.JdllModel.from_rdf(info.doc)
    pool = pool or RuntimePool(info, None)
    rows = []
    for key, label, make in (
            ("deepimagej-onnx", "DeepImageJ 3.1 (JDLL 0.6 semantics), ONNX Runtime", lambda: pool.get("onnx-cpu")),
            ("deepimagej-savedmodel", "DeepImageJ 3.1 (JDLL 0.6 semantics), SavedModel",
             lambda: pool.get("savedmodel-cpu"))):
        t0 = time.perf_counter()
        try:
            jdll.check_processing(model)
            tp = jdll.plan(model, raw.shape[1:3])
            y = jdll.predict(model, make().predict, raw[0, :, :, 0])
        except jdll.JdllError as exc:
            rows.append(ParityRow(key, label, "cpu", FAILED, reason=f"JDLL {jdll.JDLL_VERSION} throws: {exc}"))
            continue
        row = ParityRow(key, label, "cpu", PASSED, seconds=round(time.perf_counter() - t0, 2),
                        reason=f"tile {tp.tile[0]} x {tp.tile[1]} (JDLL's formula), halo {tp.halo[0]} px, "
                               f"{tp.n_tiles} tiles, each mirror-padded")
        row.vs_test_output = Comparison.of(y[None, :, :, None], expected)
        if not row.vs_test_output.ok:
            row.status = FAILED
        rows.append(row)
    return rows


def percentile_definition_note(info: Any, pool: Optional[RuntimePool] = None) -> str:
    """How far bioimageio.core's percentile (numpy ``linear``, interpolated) is from JDLL's (the one the
    bundle's test output and every w2sr consumer use) on the test input, and what that does to the
    output: the residual ``bioimageio test`` sees."""
    from w2sr.core.normalization import PercentileMap

    norm = info.normalization
    raw = np.load(info.test_input)[0, :, :, 0].astype(np.float32)
    expected = np.load(info.test_output)[0, :, :, 0].astype(np.float32)
    jdll_map = norm.measure(raw)
    lo, hi = (float(np.percentile(raw, q, method="linear")) for q in (norm.low_percentile, norm.high_percentile))
    rt = (pool or RuntimePool(info, None)).get("onnx-cpu")
    theirs = norm.output(rt.predict(PercentileMap(lo, hi).apply(raw)[None, :, :, None]))[0, :, :, 0]
    cmp_ = Comparison.of(theirs, expected)
    return (f"percentile definitions on the test input: JDLL / w2sr (sorted[int(N p / 100)]) lo {jdll_map.lo:.6g}, "
            f"hi {jdll_map.hi:.6g}; bioimageio.core (numpy linear) lo {lo:.6g}, hi {hi:.6g}; output with the "
            f"latter vs test_output.npy: max diff {cmp_.max_abs_diff:.3g}, {cmp_.n_bad} px outside the zoo tolerance")
