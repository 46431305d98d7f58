"""Validate a bundle: ``bioimageio test``, a parity matrix across runtimes, odd sizes and bit depths.

``validate_bundle(path) -> ValidationReport``:

(a) ``bioimageio test`` (bioimageio.core's CLI, in a subprocess whose working folder is a temporary
    one: its TF backend unpacks the weights into the current folder) for every weight format of the
    0.4.10 rdf, and for the format-0.5 package in ``packages/`` when there is one.
(b) Parity matrix on the stored test input: Keras (``generator.keras`` in the bundle folder, or one
    given), the SavedModel (TF2 signature call, and the TF1 session API DeepImageJ's TF 1.15 uses)
    and ONNX Runtime, each against the stored ``test_output.npy`` and against Keras, plus tiled
    (bundle halo) against whole-image; all within the zoo tolerance ``|a-b| <= 1.5e-4 + 1e-4|b|`` on
    postprocessed outputs. GPU rows (TF GPU, ONNX Runtime CUDA) are skipped with the reason when
    this machine has none.
(c) Odd sizes (default 333 x 517, not min + n*step unless step is 1) and 8/16-bit inputs through the
    bundle path (rdf numbers -> preprocessing -> runtime, tiled and mirror-padded as the rdf
    requires -> postprocessing) against Keras on the whole image in one call (on the same
    mirror-padded canvas when the size is not valid; with step 1 there is no padding).
(d) The files listed in ``config.w2sr.files`` against their sha256, and the layout of the packages.
(e) Optionally (``engines=True``) the old runtimes DeepImageJ embeds, through ``export.engines``.

Printed as a table (``format_report``) and written as ``parity.md`` / ``parity.json`` by
:func:`write_report`.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import yaml

from export.bundle_info import sha256_file
from w2sr.core.contract import ATOL, RTOL, RULE, zoo_close
from export.proc import die_with_parent
from w2sr.core.errors import UserError
from w2sr.core.files import scratch_dir

log = logging.getLogger(__name__)

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


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
class SizeRow:
    shape: tuple
    dtype: str
    runtime: str
    tiles: int
    canvas: tuple
    vs_keras_whole: Comparison
    status: str
    reference: str = "keras"


@dataclass
class ValidationReport:
    bundle: str
    bioimageio: list = field(default_factory=list)     # dicts: target, weight_format, status, details
    parity: list = field(default_factory=list)         # ParityRow
    sizes: list = field(default_factory=list)          # SizeRow
    files: list = field(default_factory=list)          # dicts: file, status
    packages: list = field(default_factory=list)       # dicts: package, status, detail
    engines: list = field(default_factory=list)        # dicts from export.engines (when run)
    notes: list = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        out = [f"bioimageio test {b['target']} ({b['weight_format']}): {b['status']}"
               for b in self.bioimageio if b["status"] != PASSED]
        out += [f"parity {r.key}: " + ", ".join(
            n for n, c in (("vs test output", r.vs_test_output), ("vs Keras", r.vs_keras),
                           ("tiled vs whole", r.tiled_vs_whole)) if c.ok is False) or r.reason
                for r in self.parity if r.status == FAILED]
        out += [f"size {s.shape} {s.dtype} via {s.runtime}: max diff {s.vs_keras_whole.max_abs_diff:.3g}"
                for s in self.sizes if s.status == FAILED]
        out += [f"file {f['file']}: {f['status']}" for f in self.files if f["status"] != PASSED]
        out += [f"package {p['package']}: {p['detail']}" for p in self.packages if p["status"] == FAILED]
        out += [f"engine {e['engine']} ({e['loader']}): {e.get('reason', '')}" for e in self.engines
                if e.get("status") == FAILED and e.get("required", True)]
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["failures"] = self.failures
        d["tolerance"] = {"atol": ATOL, "rtol": RTOL, "rule": "|a-b| <= atol + rtol*|b| (postprocessed)"}
        return d


# --------------------------------------------------------------------------------------------
# (a) bioimageio test


#: The 0.4.10 rdf is tested as written (``--format-version discover``), exactly like
#: ``bioimageio test bundle/rdf.yaml``; its output affine map is a fixed zero_mean_unit_variance
#: because a 0.4 scale_linear cannot pass (see export/rdf.py).
RDF04_TEST_FORMAT = "discover"


def run_bioimageio_test(source: Path, weight_format: str = "all", timeout: int = 3600,
                        format_version: str = "discover") -> list[dict]:
    """``bioimageio test SOURCE`` in a temporary working folder; one dict per weight format tested."""
    source = Path(source).resolve()
    with scratch_dir("bioimageio") as tmp:
        summary_path = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "bioimageio.core", "test", str(source),
               "--weight-format", weight_format, "--summary", str(summary_path),
               "--format-version", format_version]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", BIOIMAGEIO_PERFORM_IO_CHECKS="1")
        t0 = time.perf_counter()
        log.info("bioimageio test %s (weights: %s, format: %s) ...", source.name, weight_format, format_version)
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout,
                                  preexec_fn=die_with_parent)
        except subprocess.TimeoutExpired:
            return [{"target": source.name, "weight_format": weight_format, "status": FAILED,
                     "details": [f"timed out after {timeout} s"], "seconds": float(timeout)}]
        seconds = time.perf_counter() - t0
        if not summary_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return [{"target": source.name, "weight_format": weight_format, "status": FAILED,
                     "details": ["no summary written", *tail], "seconds": seconds}]
        summary = json.loads(summary_path.read_text())
    by_format: dict[str, dict] = {}
    general: list[str] = []
    for d in summary.get("details", []):
        loc = d.get("loc") or []
        wf = loc[1] if len(loc) >= 2 and loc[0] == "weights" else None
        msgs = [e.get("msg", "") for e in d.get("errors", [])]
        if wf is None:
            if d.get("status") == FAILED:
                general.append(f"{d.get('name')}: {'; '.join(msgs)}")
            continue
        row = by_format.setdefault(wf, {"target": source.name, "weight_format": wf, "status": PASSED,
                                        "format_version": format_version,
                                        "tests": [], "details": []})
        row["tests"].append({"name": d.get("name"), "status": d.get("status")})
        if d.get("status") == FAILED:
            row["status"] = FAILED
            row["details"] += [f"{d.get('name')}: {m}" for m in msgs]
    rows = list(by_format.values())
    status = summary.get("status")
    if not rows or general or status not in ("passed", "valid-format"):
        rows.append({"target": source.name, "weight_format": "(description)",
                     "status": PASSED if status == "passed" and not general else FAILED,
                     "details": general or ([] if status == "passed" else [f"overall status {status}"]),
                     "tests": [], "format_version": format_version})
    for r in rows:
        r["seconds"] = round(seconds, 1)
        r["summary_status"] = status
    return rows


# --------------------------------------------------------------------------------------------
# helpers


def _keras_path(info: Any, given: Optional[Path]) -> Optional[Path]:
    if given is not None:
        return Path(given)
    if info.keras_path is not None and Path(info.keras_path).is_file():
        return Path(info.keras_path)
    cand = info.root / "generator.keras"
    return cand if cand.is_file() else None


def _tile_for(info: Any, extra: int = 16, side: int = 0) -> int:
    """A tile for the tiled-vs-whole rows: several tiles (about 3 x 3) even on the test input, but
    not so small that the halo dominates (the full model costs ~45 s per 512^2 here)."""
    smallest = info.any_size_from if info.any_size_from is not None else info.min_size
    return int(info.valid_size_at_least(max(smallest, 2 * info.halo + extra, side // 3 + 2 * info.halo)))


def _mirror_to(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from export.tiling import mirror_indices

    h, w = image.shape
    return image[np.ix_(mirror_indices(shape[0], h), mirror_indices(shape[1], w))]


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


def _machine() -> dict:
    import platform

    d = {"python": platform.python_version(), "platform": platform.platform(),
         "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    try:
        import onnxruntime
        import tensorflow as tf

        d["tensorflow"] = tf.__version__
        d["onnxruntime"] = onnxruntime.__version__
    except Exception:
        pass
    return d


# --------------------------------------------------------------------------------------------
# (b) parity matrix


def parity_matrix(info: Any, keras_path: Optional[Path]) -> tuple[list[ParityRow], Optional[np.ndarray]]:
    from export.runtimes import available_runtimes, make_runtime
    from export.savedmodel import run_tf1
    from export.tiling import count_tiles, predict_tiled

    raw = np.load(info.test_input).astype(np.float32)
    expected = np.load(info.test_output).astype(np.float32)
    x = info.normalization.input(raw[0, :, :, 0])[None, :, :, None]
    post = info.normalization.output
    tile = _tile_for(info, side=min(x.shape[1:3]))
    img = x[0, :, :, 0]
    n_tiles = count_tiles(img.shape, tile, info.halo, info.valid_size_at_least)
    rows: list[ParityRow] = []
    keras_out: Optional[np.ndarray] = None

    for r in available_runtimes():
        label = {"keras": "Keras", "tensorflow_saved_model_bundle": "SavedModel (TF2 signature)",
                 "onnx": "ONNX Runtime"}[r.format] + f" {'CPU' if r.device == 'cpu' else ('CUDA' if r.key == 'onnx-cuda' else 'GPU')}"
        if not r.available:
            rows.append(ParityRow(r.key, label, r.device, SKIPPED, reason=r.reason))
            continue
        if r.format == "keras" and keras_path is None:
            rows.append(ParityRow(r.key, label, r.device, SKIPPED,
                                  reason="no generator.keras in the bundle folder (pass --keras RUN/generator.keras)"))
            continue
        t0 = time.perf_counter()
        try:
            rt = make_runtime(r.key, keras_path=keras_path, savedmodel=info.savedmodel_zip, onnx_path=info.onnx_path,
                              padding=info.padding)
            whole = post(rt.predict(x))
            tiled = post(predict_tiled(rt.predict, img, tile, info.halo, scale=info.scale,
                                       valid_size=info.valid_size_at_least))
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

    rows += deepimagej_rows(info, raw, expected)
    for row in rows:
        if row.status != PASSED:
            continue
        if any(c.ok is False for c in (row.vs_test_output, row.vs_keras, row.tiled_vs_whole)):
            row.status = FAILED
    return rows, keras_out


# --------------------------------------------------------------------------------------------
# (c) odd sizes and bit depths


def size_checks(info: Any, keras_path: Optional[Path], sizes: Sequence[tuple[int, int]],
                dtypes: Sequence[str] = ("uint8", "uint16", "float32")) -> tuple[list[SizeRow], list[str]]:
    import tifffile

    from export.runtimes import KerasRuntime, OnnxRuntime, SavedModelRuntime
    from export.tiling import canvas_shape, count_tiles, predict_tiled, predict_whole

    notes: list[str] = []
    sample = tifffile.imread(info.root / "sample_input.tif").astype(np.float32)
    if sample.ndim != 2:
        sample = np.squeeze(sample)
    onnx_rt = OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"])
    sm_rt = SavedModelRuntime(info.savedmodel_zip)
    if keras_path is not None:
        ref_rt: Any = KerasRuntime(keras_path, padding=info.padding)
        ref_name = "keras"
    else:
        ref_rt, ref_name = sm_rt, "savedmodel"
        notes.append("no Keras generator: odd sizes compared with the SavedModel on the whole image")
    rows: list[SizeRow] = []
    tile = _tile_for(info, extra=64)
    post = info.normalization.output
    from export import jdll

    jmodel = jdll.JdllModel.from_rdf(yaml.safe_load((info.root / "rdf.yaml").read_text()))
    try:
        jdll.check_processing(jmodel)
    except jdll.JdllError as exc:
        notes.append(f"DeepImageJ 3.1 rows skipped: JDLL {jdll.JDLL_VERSION} throws on this rdf ({exc})")
        jmodel = None
    for shape in sizes:
        base = _mirror_to(sample, tuple(shape))
        for dtype in dtypes:
            image, note = _as_dtype(base, dtype)
            if note:
                notes.append(note)
            if image is None:
                continue
            x = info.normalization.input(image)
            # reference: the whole image in one call, on the canvas the rdf requires (mirror-padded
            # to a valid size; with step 1 and a size >= min that is the image itself)
            ref = post(predict_whole(ref_rt.predict, x, valid_size=info.valid_size_at_least))
            runtimes = [("onnx", onnx_rt)] + ([("savedmodel", sm_rt)] if dtype in ("float32", "uint16") else [])
            for name, rt in runtimes:
                out = post(predict_tiled(rt.predict, x, tile, info.halo, scale=info.scale,
                                         valid_size=info.valid_size_at_least))
                cmp_ = Comparison.of(out, ref)
                rows.append(SizeRow(
                    shape=tuple(int(s) for s in shape), dtype=dtype, runtime=name,
                    tiles=count_tiles(x.shape, tile, info.halo, info.valid_size_at_least),
                    canvas=canvas_shape(x.shape, info.valid_size_at_least), vs_keras_whole=cmp_,
                    status=PASSED if cmp_.ok else FAILED, reference=ref_name))
            if jmodel is not None and dtype == "float32":  # what a Fiji user gets through the batch macro
                # (JDLL copies every image to float first, so 8/16-bit inputs add nothing here)
                try:
                    out = jdll.predict_like_macro(jmodel, onnx_rt.predict, image)
                except jdll.JdllError as exc:
                    notes.append(f"DeepImageJ 3.1 (JDLL {jdll.JDLL_VERSION}) refuses {shape[0]} x {shape[1]}: {exc}")
                    continue
                cmp_ = Comparison.of(out, ref)
                canvas = jdll.macro_canvas(jmodel, image.shape)
                rows.append(SizeRow(
                    shape=tuple(int(s) for s in shape), dtype=dtype, runtime="deepimagej-3.1 (onnx, batch macro)",
                    tiles=jdll.plan(jmodel, canvas).n_tiles, canvas=canvas, vs_keras_whole=cmp_,
                    status=PASSED if cmp_.ok else FAILED, reference=ref_name))
                if canvas != image.shape:
                    notes.append(_raw_deepimagej_note(jmodel, onnx_rt, image, ref))
    return rows, notes


def _raw_deepimagej_note(jmodel: Any, onnx_rt: Any, image: np.ndarray, ref: np.ndarray) -> str:
    """What DeepImageJ 3.1 alone (without the batch macro's padding) does to a small image."""
    from export import jdll

    h, w = image.shape
    try:
        tp = jdll.plan(jmodel, image.shape)
        d, ok, n_bad = zoo_close(jdll.predict(jmodel, onnx_rt.predict, image), ref)
    except jdll.JdllError as exc:
        return f"{h} x {w} in DeepImageJ 3.1 without the batch macro: refused ({exc})"
    why = "JDLL shifts its output by one pixel (tile - size odd and > 2 x halo)" if tp.shifted else ""
    return (f"{h} x {w} in DeepImageJ 3.1 without the batch macro's padding: max diff {d:.3g}, "
            f"{n_bad} px outside the tolerance{'; ' + why if why else ''}; the batch macro pads it to "
            f"{jdll.macro_canvas(jmodel, image.shape)}")


def deepimagej_rows(info: Any, raw: np.ndarray, expected: np.ndarray) -> list[ParityRow]:
    """The bundle as DeepImageJ 3.1 runs it (``export.jdll``: JDLL 0.6.1's kwargs checks, processing on
    a float copy, tiles of its formula mirror-padded by the halo, its stitching), in ONNX Runtime and
    in the SavedModel, against the stored test output on every pixel."""
    from export import jdll
    from export.runtimes import OnnxRuntime, SavedModelRuntime

    model = jdll.JdllModel.from_rdf(yaml.safe_load((info.root / "rdf.yaml").read_text()))
    rows = []
    for key, label, make in (
            ("deepimagej-onnx", "DeepImageJ 3.1 (JDLL 0.6 semantics), ONNX Runtime",
             lambda: OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"])),
            ("deepimagej-savedmodel", "DeepImageJ 3.1 (JDLL 0.6 semantics), SavedModel",
             lambda: SavedModelRuntime(info.savedmodel_zip))):
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


# --------------------------------------------------------------------------------------------
# (d) files and packages


def check_files(root: Path, doc: dict) -> list[dict]:
    listed = ((doc.get("config") or {}).get("w2sr") or {}).get("files") or {}
    rows = []
    for rel, digest in sorted(listed.items()):
        p = root / rel
        if not p.is_file():
            rows.append({"file": rel, "status": "missing"})
        elif sha256_file(p) != digest:
            rows.append({"file": rel, "status": "sha256 mismatch"})
        else:
            rows.append({"file": rel, "status": PASSED})
    return rows


def check_deepimagej_zip(zip_path: Path, doc: dict) -> dict:
    """The Fiji zip: rdf.yaml and every file it names at the zip root; the weights zip itself has
    saved_model.pb at its root."""
    need = ["rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy",
            "sample_input.tif", "sample_output.tif"]
    need += [w["source"] for w in doc.get("weights", {}).values()]
    need += list((doc.get("attachments") or {}).get("files", []))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = set(zf.namelist())
            missing = [n for n in need if n not in names]
            inner_ok = False
            tf_src = doc.get("weights", {}).get("tensorflow_saved_model_bundle", {}).get("source")
            if tf_src in names:
                import io

                with zipfile.ZipFile(io.BytesIO(zf.read(tf_src))) as inner:
                    inner_ok = "saved_model.pb" in inner.namelist()
    except zipfile.BadZipFile as exc:
        return {"package": zip_path.name, "status": FAILED, "detail": f"bad zip: {exc}"}
    if missing:
        return {"package": zip_path.name, "status": FAILED, "detail": f"missing at the zip root: {missing}"}
    if not inner_ok:
        return {"package": zip_path.name, "status": FAILED, "detail": "no saved_model.pb at the root of the weights zip"}
    return {"package": zip_path.name, "status": PASSED,
            "detail": f"{len(names)} entries, rdf.yaml and weights at the root"}


def check_packages(root: Path, doc: dict, bioimageio: bool = True) -> tuple[list[dict], list[dict]]:
    packages, tests = [], []
    pkg_dir = root / "packages"
    for z in sorted(pkg_dir.glob("*_deepimagej.zip")) if pkg_dir.is_dir() else []:
        packages.append(check_deepimagej_zip(z, doc))
    for z in sorted(pkg_dir.glob("*_zoo-0.5.zip")) if pkg_dir.is_dir() else []:
        packages.append({"package": z.name, "status": PASSED, "detail": "format 0.5 package"})
        if bioimageio:
            tests += run_bioimageio_test(z)
    return packages, tests


# --------------------------------------------------------------------------------------------


def percentile_definition_note(info: Any) -> str:
    """How far bioimageio.core's percentile (numpy ``linear``, interpolated) is from JDLL's (the one the
    bundle's test output and every w2sr consumer use) on the test input, and what that does to the
    output: the residual ``bioimageio test`` sees."""
    from w2sr.core.normalization import InputMap
    from export.runtimes import OnnxRuntime

    norm = info.normalization
    raw = np.load(info.test_input)[0, :, :, 0].astype(np.float32)
    expected = np.load(info.test_output)[0, :, :, 0].astype(np.float32)
    jdll_map = norm.measure(raw)
    lo, hi = (float(np.percentile(raw, q, method="linear")) for q in (norm.low_percentile, norm.high_percentile))
    rt = OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"])
    theirs = norm.output(rt.predict(InputMap(lo, hi).apply(raw)[None, :, :, None]))[0, :, :, 0]
    cmp_ = Comparison.of(theirs, expected)
    return (f"percentile definitions on the test input: JDLL / w2sr (sorted[int(N p / 100)]) lo {jdll_map.lo:.6g}, "
            f"hi {jdll_map.hi:.6g}; bioimageio.core (numpy linear) lo {lo:.6g}, hi {hi:.6g}; output with the "
            f"latter vs test_output.npy: max diff {cmp_.max_abs_diff:.3g}, {cmp_.n_bad} px outside the zoo tolerance")


def validate_bundle(path: str | Path, *, keras_path: Optional[Path] = None, bioimageio: bool = True,
                    sizes: Sequence[tuple[int, int]] = ((333, 517),), packages: bool = True,
                    engines: bool | Sequence[str] = False,
                    progress: Callable[[str], None] = log.info) -> ValidationReport:
    """Run every check on the bundle at ``path`` (folder or its rdf.yaml); never raises for a failed
    check (see ``report.ok`` / ``report.failures``), only for a path that is not a bundle."""
    from export.bundle_info import read_bundle

    t0 = time.perf_counter()
    info = read_bundle(path)
    root = info.root
    doc = yaml.safe_load((root / "rdf.yaml").read_text())
    report = ValidationReport(bundle=str(root), machine=_machine())
    kp = _keras_path(info, keras_path)

    if bioimageio:
        progress("(a) bioimageio test of rdf.yaml, every weight format")
        report.bioimageio += run_bioimageio_test(root / "rdf.yaml", format_version=RDF04_TEST_FORMAT)

    progress("(b) parity matrix on the test input")
    rows, keras_out = parity_matrix(info, kp)
    report.parity = rows

    if info.normalization.percentile:
        report.notes.append(percentile_definition_note(info))

    if sizes:
        progress(f"(c) odd sizes {list(sizes)} and 8/16-bit inputs through the bundle path")
        report.sizes, notes = size_checks(info, kp, sizes)
        report.notes += notes

    report.files = check_files(root, doc)
    if packages:
        report.packages, tests = check_packages(root, doc, bioimageio=bioimageio)
        report.bioimageio += tests

    if engines:
        from export import engines as engines_mod

        selected = None if engines is True else list(engines)
        progress("(e) old runtimes DeepImageJ embeds (export.engines)")
        report.engines = [r.to_dict() for r in engines_mod.check_engines(root, selected)]
    report.seconds = round(time.perf_counter() - t0, 1)
    return report


# --------------------------------------------------------------------------------------------
# output


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def format_report(report: ValidationReport) -> str:
    parts = [f"Validation of `{report.bundle}`: **{'PASSED' if report.ok else 'FAILED'}** "
             f"(tolerance {RULE} on postprocessed outputs; {report.seconds} s)", ""]
    if report.bioimageio:
        parts += ["### bioimageio test", "", _table(
            ["target", "weight format", "status", "details"],
            [[b["target"], b["weight_format"], b["status"],
              "; ".join(b.get("details", []))[:300] if b["status"] != PASSED else
              f"{sum(t['status'] == PASSED for t in b.get('tests', []))} of {len(b.get('tests', []))} tests passed"
              f" (format {b.get('format_version', 'discover')}, {b.get('seconds')} s)"]
             for b in report.bioimageio]), ""]
    if report.parity:
        parts += ["### Parity matrix (stored test input)", "", _table(
            ["runtime", "status", "vs test_output", "vs Keras", "tiled vs whole", "s", "notes"],
            [[r.label, r.status, r.vs_test_output.cell(), r.vs_keras.cell(), r.tiled_vs_whole.cell(),
              "-" if r.seconds is None else r.seconds, r.reason] for r in report.parity]), ""]
    if report.sizes:
        parts += ["### Odd sizes and bit depths (bundle path vs the reference on the whole image)", "", _table(
            ["input", "dtype", "runtime", "canvas", "tiles", "reference", "max abs diff", "status"],
            [[f"{s.shape[0]} x {s.shape[1]}", s.dtype, s.runtime, f"{s.canvas[0]} x {s.canvas[1]}", s.tiles,
              s.reference, f"{s.vs_keras_whole.max_abs_diff:.2e}", s.status] for s in report.sizes]), ""]
    if report.packages:
        parts += ["### Packages", "", _table(["package", "status", "detail"],
                                             [[p["package"], p["status"], p["detail"]] for p in report.packages]), ""]
    if report.files:
        bad = [f for f in report.files if f["status"] != PASSED]
        parts += [f"### Files: {len(report.files) - len(bad)} of {len(report.files)} match their sha256"
                  + (": " + ", ".join(f"{f['file']} ({f['status']})" for f in bad) if bad else ""), ""]
    if report.engines:
        parts += ["### Old runtimes (export.engines)", "", _table(
            ["engine", "loader", "status", "max abs diff", "notes"],
            [[e.get("label"), e.get("loader"), e.get("status"),
              "-" if e.get("max_abs_diff") is None else f"{e['max_abs_diff']:.2e}", e.get("reason", "")]
             for e in report.engines]), ""]
    if report.notes:
        parts += ["Notes:", ""] + [f"- {n}" for n in report.notes] + [""]
    m = report.machine
    parts.append(f"Machine: {m.get('platform')}, {m.get('cpus')} CPUs, Python {m.get('python')}, "
                 f"TensorFlow {m.get('tensorflow')}, ONNX Runtime {m.get('onnxruntime')}.")
    if not report.ok:
        parts += ["", "Failures:", ""] + [f"- {f}" for f in report.failures]
    return "\n".join(parts) + "\n"


def write_report(report: ValidationReport, folder: Path) -> tuple[Path, Path]:
    from w2sr.core.files import atomic_write_text

    folder = Path(folder)
    md = folder / "parity.md"
    js = folder / "parity.json"
    atomic_write_text(md, "# Validation\n\n" + format_report(report))
    atomic_write_text(js, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return md, js
