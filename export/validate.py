"""Validate a bundle: ``bioimageio test``, a parity matrix across runtimes, odd sizes and bit depths.

``validate_bundle(path) -> ValidationReport``:

(a) ``bioimageio test`` (bioimageio.core's CLI, in a subprocess whose working folder is a temporary
    one: its TF backend unpacks the weights into the current folder) for every weight format of the
    0.4.10 rdf, and for the format-0.5 package in ``packages/`` when there is one.
(b) Parity matrix on the stored test input: Keras (``generator.keras`` in the bundle folder, or one
    given), the SavedModel (TF2 signature call, and the TF1 session API DeepImageJ's TF 1.15 uses)
    and ONNX Runtime, each against the stored ``test_output.npy`` and against Keras, plus tiled
    (bundle halo) against whole-image; all within the zoo tolerance ``|a-b| <= 1.5e-4 + 1e-4|b|`` on
    postprocessed outputs. GPU rows (TF GPU, ONNX Runtime CUDA) run in strict fp32 (TensorFloat-32
    off: ``export.runtimes``), and are skipped with the reason when this machine has none. The fast
    GPU modes (TF32, Keras bf16/fp16) follow as extra rows with their deviation (PSNR, pixels outside
    the tolerance), never counted as parity.
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

from w2sr.bundle.reader import sha256_file
from export.parity import (FAILED, PASSED, RuntimePool, _keras_path, fast_mode_rows, parity_matrix,
                           percentile_definition_note, size_checks)
from w2sr.core.contract import ATOL, RTOL, RULE
from w2sr.core.proc import die_with_parent
from w2sr.core.files import scratch_dir

log = logging.getLogger(__name__)



@dataclass
class ValidationReport:
    bundle: str
    bioimageio: list = field(default_factory=list)     # dicts: target, weight_format, status, details
    parity: list = field(default_factory=list)         # ParityRow (strict fp32: TF32 off on GPUs)
    fast_modes: list = field(default_factory=list)     # FastModeRow: TF32 / bf16 / fp16, reported only
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
# (d) files and packages


def deepimagej_direct_note(doc: dict) -> str:
    """Which image sides DeepImageJ called directly (no Fiji macro) does not run exactly with this rdf."""
    from w2sr.bundle import jdll

    model = jdll.JdllModel.from_rdf(doc)
    if model.y.step or model.x.step:
        return "DeepImageJ 3.1 called directly: the rdf has a size step, so JDLL runs each image as one tile"
    shifted, refused_below = jdll.exposed_sides(model.y.min, model.y.halo, int(model.y.scale))
    exposed = f"odd sides {min(shifted)}-{max(shifted)} px come out shifted by one pixel" if shifted else "none is shifted"
    if model.multiple > 1:
        return (f"DeepImageJ 3.1 called directly (GUI, any macro but the bundle's), tile {model.y.min} px, halo "
                f"{model.y.halo} px: sides under {refused_below} px are refused; a pooling network (size multiple "
                f"{model.multiple}) gives whole-image pixels only on sides of at least {model.y.min - 2 * model.y.halo} px "
                f"divisible by {model.multiple} (the bundle's Fiji macro pads every other size)")
    return (f"DeepImageJ 3.1 called directly (GUI, any macro but the bundle's), tile {model.y.min} px, halo "
            f"{model.y.halo} px: sides under {refused_below} px are refused, {exposed}; every other side gives "
            f"whole-image pixels (the bundle's Fiji macro pads small images: every size)")


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


def validate_bundle(path: str | Path, *, keras_path: Optional[Path] = None, bioimageio: bool = True,
                    sizes: Sequence[tuple[int, int]] = ((333, 517),), packages: bool = True,
                    engines: bool | Sequence[str] = False,
                    progress: Callable[[str], None] = log.info) -> ValidationReport:
    """Run every check on the bundle at ``path`` (folder or its rdf.yaml); never raises for a failed
    check (see ``report.ok`` / ``report.failures``), only for a path that is not a bundle."""
    from w2sr.bundle.reader import read_bundle

    t0 = time.perf_counter()
    info = read_bundle(path)
    root = info.root
    doc = info.doc
    report = ValidationReport(bundle=str(root), machine=_machine())
    kp = _keras_path(info, keras_path)

    if bioimageio:
        progress("(a) bioimageio test of rdf.yaml, every weight format")
        report.bioimageio += run_bioimageio_test(root / "rdf.yaml", format_version=RDF04_TEST_FORMAT)

    progress("(b) parity matrix on the test input")
    pool = RuntimePool(info, kp)  # each runtime opened once for all the checks below
    rows, keras_out = parity_matrix(info, kp, pool)
    report.parity = rows
    report.fast_modes = fast_mode_rows(info, kp, "gpu", pool)

    if info.normalization.percentile:
        report.notes.append(percentile_definition_note(info, pool))
    report.notes.append(deepimagej_direct_note(doc))

    if sizes:
        progress(f"(c) odd sizes {list(sizes)} and 8/16-bit inputs through the bundle path")
        report.sizes, notes = size_checks(info, kp, sizes, pool=pool)
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
    if report.fast_modes:
        parts += ["### Fast GPU modes (reported with their deviation, never counted as parity)", "", _table(
            ["runtime", "status", "vs test_output", "s", "notes"],
            [[r.label, r.status, r.vs_test_output.cell(), "-" if r.seconds is None else r.seconds, r.reason]
             for r in report.fast_modes]), ""]
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
