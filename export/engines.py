"""Run a bundle in the old runtimes DeepImageJ embeds: TF 1.15, TF 2.7, TF 2.10.1, ONNX Runtime 1.13.1.

DeepImageJ (through JDLL) runs a SavedModel in TensorFlow 1.15 or 2.7/2.10 and an ONNX file in ONNX
Runtime <= 1.13.1, whatever TensorFlow wrote the bundle. The Java engines are not installable here,
but their C++ cores are, as the Python wheels of the same versions. So each engine gets its own
virtual environment (``export.engine_envs``), and a small script
from ``export/engine_scripts/`` loads the bundle there the way JDLL does:

* TensorFlow: the weights zip is unpacked as DeepImageJ unpacks it (its root becomes the model
  folder), then loaded with the TF1-style loader both of JDLL's TF engines use (a session,
  tag ``serve``, signature ``serving_default``, tensors looked up by the rdf tensor names). On 2.x
  the TF2 loader (``tf.saved_model.load``) is tried too and reported for information.
* ONNX Runtime: a CPU session, fed by position.

The rdf's preprocessing is applied to ``test_input.npy`` here with ``w2sr.core.normalization`` (the one
definition of the bundle's normalisation; DeepImageJ applies it in Java, outside the engine),
the engine's raw output is postprocessed the same way and compared with ``test_output.npy`` within
the model zoo's tolerance ``|a - b| <= 1.5e-4 + 1e-4 |b|``.

With ``deepimagej=True`` (the default) each engine also runs the test input the way DeepImageJ 3.1
runs it: ``w2sr.bundle.jdll`` applies JDLL 0.6.1's processing and cuts its tiles (mirror-padded by the
halo) here, the engine runs them one per call (so the process's peak memory is that of one tile),
and they are stitched and postprocessed as JDLL does (loader ``<loader>+deepimagej``).

``check_engines(bundle)`` returns one :class:`EngineResult` per engine and loader;
``format_table`` prints them. ``w2sr check-engines`` (``w2sr.cli.engines``) wraps both.
"""
from __future__ import annotations

import contextlib
import json
import logging
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from export.engine_envs import ENGINES, Engine, EngineUnavailable, clean_env, ensure_engine_env, tail
from w2sr.core.proc import die_with_parent
from w2sr.core.contract import RULE, zoo_close
from w2sr.core.files import scratch_dir

log = logging.getLogger(__name__)


@dataclass
class EngineResult:
    """One engine x loader: did the bundle load, and does it reproduce test_output.npy?"""

    engine: str                      # key, e.g. "tf2.7"
    label: str                       # "TensorFlow 2.7.0"
    loader: str                      # "v1_session" | "tf2_load" | "ort_session" | "-"
    status: str                      # "passed" | "failed" | "skipped"
    required: bool = True            # False: reported for information, not what DeepImageJ runs
    runtime_version: Optional[str] = None  # as reported by the runtime itself
    python: Optional[str] = None
    loaded: Optional[bool] = None
    max_abs_diff: Optional[float] = None
    within_tolerance: Optional[bool] = None
    seconds: Optional[float] = None  # wall time of the engine process (import + load + run)
    load_seconds: Optional[float] = None
    run_seconds: Optional[float] = None
    env_seconds: Optional[float] = None  # time spent getting the environment (0 when cached)
    peak_rss_mb: Optional[float] = None  # peak resident memory of the engine process
    reason: str = ""                 # why skipped / failed, or notes

    @property
    def ok(self) -> bool:
        """False only for a required row that ran and failed."""
        return not (self.required and self.status == "failed")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class EngineBundle:
    """What the engines need of a bundle: its info, the tensor names JDLL looks up, the declared TF."""
    root: Path
    info: object
    input_key: str
    output_key: str
    tensorflow_version: Optional[str]
    rdf_doc: dict = field(default_factory=dict)


@contextlib.contextmanager
def _open_bundle(path: Path) -> Iterator[Path]:
    """A bundle folder, its rdf.yaml, or a zipped bundle (as DeepImageJ's installer gets it)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".zip":
        with scratch_dir("bundle") as tmp:
            with zipfile.ZipFile(path) as zf:
                zf.extractall(tmp)
            rdfs = sorted(Path(tmp).glob("rdf.yaml")) or sorted(Path(tmp).glob("*/rdf.yaml"))
            if not rdfs:
                from w2sr.core.errors import UserError

                raise UserError(f"{path}: zip has no rdf.yaml at its root or one folder down")
            yield rdfs[0].parent
    else:
        yield path


def read_engine_bundle(path: Path) -> EngineBundle:
    from w2sr.bundle.reader import read_bundle

    info = read_bundle(path)
    doc = info.doc
    inp, out = doc["inputs"][0], doc["outputs"][0]
    tfw = (doc.get("weights") or {}).get("tensorflow_saved_model_bundle") or {}
    return EngineBundle(
        root=info.root, info=info,
        # format 0.4 names tensors with "name" (0.5 uses "id"); JDLL strips a ":0" suffix
        input_key=str(inp.get("name", inp.get("id", "input"))).split(":")[0],
        output_key=str(out.get("name", out.get("id", "output"))).split(":")[0],
        tensorflow_version=str(tfw["tensorflow_version"]) if tfw.get("tensorflow_version") else None,
        rdf_doc=doc,
    )


def _resolve(engines: Optional[Iterable[Union[str, Engine]]]) -> list[Engine]:
    if engines is None:
        return list(ENGINES.values())
    out = []
    for e in engines:
        if isinstance(e, Engine):
            out.append(e)
        elif e in ENGINES:
            out.append(ENGINES[e])
        else:
            from w2sr.core.errors import UserError

            raise UserError(f"unknown engine '{e}'; choose from {', '.join(ENGINES)}")
    return out


def check_engines(bundle_path: Union[str, Path], engines: Optional[Sequence[Union[str, Engine]]] = None,
                  cache_dir: Optional[Path] = None, rebuild: bool = False,
                  timeout: int = 1800, deepimagej: bool = True) -> list[EngineResult]:
    """Load the bundle in each engine and compare with its test output. One row per engine x loader.

    ``engines``: keys of :data:`ENGINES` (or Engine objects); default all four. An engine whose
    environment cannot be had is one "skipped" row with the reason. Nothing is raised for a model
    that fails to load or to match: that is a "failed" row. ``deepimagej``: also run the test input
    the way DeepImageJ 3.1 does (``w2sr.bundle.jdll``: JDLL 0.6.1's tiles, mirror-padded by the halo, one
    tile per call, stitched as JDLL stitches), rows with loader ``<loader>+deepimagej``.
    """
    selected = _resolve(engines)
    results: list[EngineResult] = []
    with _open_bundle(Path(bundle_path)) as root:
        bundle = read_engine_bundle(root)
        from w2sr.bundle import jdll
        info = bundle.info
        raw = np.load(info.test_input)
        expected = np.load(info.test_output).astype(np.float32)
        x = info.normalization.input(raw[0, :, :, 0])[None, :, :, None]
        post = info.normalization.output
        log.info("bundle %s: test input %s -> expected output %s; input '%s', output '%s'",
                 info.root, tuple(raw.shape), tuple(expected.shape), bundle.input_key, bundle.output_key)
        with scratch_dir("engines") as tmp:
            x_path = Path(tmp) / "network_input.npy"
            np.save(x_path, x)
            tiles_job = None
            if deepimagej:
                jmodel = jdll.JdllModel.from_rdf(bundle.rdf_doc)
                try:  # DeepImageJ's own processing of the raw test input, then its tiles
                    tp = jdll.plan(jmodel, raw.shape[1:3])
                    xj = jdll.apply_processing(raw, jmodel.preprocessing, jmodel.axes)[0, :, :, 0]
                    tiles_path = Path(tmp) / "deepimagej_tiles.npy"
                    np.save(tiles_path, jdll.cut_tiles(xj, tp))

                    def stitch_post(y: np.ndarray, tp=tp, jmodel=jmodel) -> np.ndarray:
                        out = jdll.stitch(y, tp)[None, :, :, None]
                        return jdll.apply_processing(out, jmodel.postprocessing, jmodel.axes)

                    tiles_job = (tiles_path, stitch_post, f"{tp.n_tiles} tiles of {tp.tile[0]} x {tp.tile[1]}, "
                                                          f"halo {tp.halo[0]}")
                except jdll.JdllError as exc:
                    results.append(EngineResult(engine="deepimagej", label="DeepImageJ 3.1", loader="-",
                                                status="failed", reason=f"JDLL {jdll.JDLL_VERSION} throws: {exc}"))
            for engine in selected:
                rows = _check_one(engine, bundle, x_path, expected, Path(tmp), cache_dir, rebuild, timeout, post)
                if tiles_job is not None and any(r.loaded for r in rows):
                    rows += _check_one(engine, bundle, tiles_job[0], expected, Path(tmp), cache_dir, rebuild,
                                       timeout, tiles_job[1], mode="deepimagej", note=tiles_job[2])
                for r in rows:
                    log.info("%-8s %-24s %s%s", r.engine, r.loader, r.status.upper(),
                             f" - {r.reason}" if r.reason else "")
                results += rows
    return results


def _check_one(engine: Engine, bundle: EngineBundle, x_path: Path, expected: np.ndarray, tmp: Path,
               cache_dir: Optional[Path], rebuild: bool, timeout: int, post, mode: str = "whole",
               note: str = "") -> list[EngineResult]:
    """Run one job in ``engine``'s environment. ``mode`` "whole": ``x_path`` holds the whole
    preprocessed test input; "deepimagej": it holds DeepImageJ's tiles, run one per call, and
    ``post`` stitches and postprocesses them."""
    base = dict(engine=engine.key, label=engine.label)
    info = bundle.info
    weights = info.savedmodel_zip if engine.runtime == "tensorflow" else info.onnx_path
    fmt = "tensorflow_saved_model_bundle" if engine.runtime == "tensorflow" else "onnx"
    if weights is None:
        return [EngineResult(**base, loader="-", status="skipped",
                             reason=f"the rdf declares no {fmt} weights")]
    if not Path(weights).exists():
        return [EngineResult(**base, loader="-", status="failed",
                             reason=f"the rdf names {weights.name} but the file is missing")]
    from w2sr.core.errors import UserError

    try:
        info.check_weights(weights)
    except UserError as exc:
        return [EngineResult(**base, loader="-", status="failed", reason=str(exc))]
    t0 = time.time()
    try:
        env_dir = ensure_engine_env(engine, cache_dir=cache_dir, rebuild=rebuild)
    except EngineUnavailable as exc:
        return [EngineResult(**base, loader="-", status="skipped", reason=exc.reason,
                             env_seconds=round(time.time() - t0, 1))]
    env_s = round(time.time() - t0, 1)

    work = tmp / f"{engine.key}-{mode}"
    work.mkdir()
    job = {"input_npy": str(x_path), "out_dir": str(work), "input_key": bundle.input_key,
           "output_key": bundle.output_key, "tf2_loader": mode == "whole", "per_sample": mode == "deepimagej"}
    job["savedmodel_zip" if engine.runtime == "tensorflow" else "onnx"] = str(Path(weights).resolve())
    log.info("engine %s: running %s (%s) in %s", engine.key, engine.script.name, mode, env_dir)
    try:
        res, seconds = run_engine_job(engine, env_dir, job, work, timeout)
    except EngineJobFailed as exc:
        return [EngineResult(**base, loader="-", status="failed", env_seconds=env_s, seconds=exc.seconds,
                             reason=exc.reason)]
    notes = [note] if note else []
    if engine.runtime == "tensorflow":
        declared = bundle.tensorflow_version
        if declared and declared.split(".")[0] != engine.version.split(".")[0]:
            notes.append(f"rdf declares tensorflow_version {declared} (DeepImageJ runs it in a "
                         f"TF{declared.split('.')[0]} engine)")
        if "saved_model.pb" not in res.get("unzipped", []):
            notes.append(f"zip root holds {res.get('unzipped')}, no saved_model.pb")
    rows = []
    for loader, entry in res["loaders"].items():
        row = EngineResult(
            **base, loader=loader if mode == "whole" else f"{loader}+{mode}", status="failed",
            required=(loader != "tf2_load"),
            runtime_version=res.get("version"), python=res.get("python"), loaded=entry.get("loaded"),
            seconds=seconds, load_seconds=_r(entry.get("load_s")), run_seconds=_r(entry.get("run_s")),
            env_seconds=env_s, peak_rss_mb=_r(res.get("peak_rss_mb")),
        )
        reasons = list(notes)
        if entry.get("ran"):
            y = post(np.load(entry["output_npy"]))
            if y.shape != expected.shape:
                reasons.append(f"output shape {y.shape} != test_output {expected.shape}")
                row.within_tolerance = False
            else:
                row.max_abs_diff, row.within_tolerance, n_bad = zoo_close(y, expected)
                if row.within_tolerance:
                    row.status = "passed"
                else:
                    reasons.append(f"{n_bad} of {expected.size} pixels outside {RULE}")
        else:
            reasons.append(entry.get("error", "did not run"))
        if res.get("version") != engine.version:
            reasons.append(f"environment runs {res.get('version')}, expected {engine.version}")
            row.status = "failed"
        if not row.required:
            reasons.append("informational: DeepImageJ does not use this loader")
        row.reason = "; ".join(reasons)
        rows.append(row)
    return rows


class EngineJobFailed(Exception):
    """The engine process timed out, crashed or wrote no result."""

    def __init__(self, reason: str, seconds: float):
        super().__init__(reason)
        self.reason, self.seconds = reason, seconds


def run_engine_job(engine: Engine, env_dir: Path, job: dict, work: Path, timeout: int = 1800) -> tuple[dict, float]:
    """Run one job file through ``engine``'s script in its environment (``engine_scripts/``: the job
    and result formats are documented there). Returns (result, wall seconds of the process)."""
    job_path, result_path = work / "job.json", work / "result.json"
    job_path.write_text(json.dumps(job))
    cmd = [str(env_dir / "bin" / "python"), str(engine.script), str(job_path), str(result_path)]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=timeout,
                              preexec_fn=die_with_parent, cwd=str(work))
    except subprocess.TimeoutExpired:
        raise EngineJobFailed(f"engine process ran over {timeout} s", round(time.time() - t0, 1)) from None
    seconds = round(time.time() - t0, 2)
    (work / "engine.log").write_text(proc.stdout + proc.stderr)
    log.debug("engine %s output:\n%s", engine.key, proc.stdout + proc.stderr)
    if proc.returncode != 0 or not result_path.exists():
        raise EngineJobFailed(f"engine process exited {proc.returncode}: {tail(proc.stderr, 4)}", seconds)
    return json.loads(result_path.read_text()), seconds


def _r(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(float(v), 3)


def _clip(text: str, n: int = 400) -> str:
    """TensorFlow's load errors run to paragraphs; the table keeps their start (to_dict keeps all)."""
    return text if len(text) <= n else text[: n - 3] + "..."


def format_table(results: Sequence[EngineResult]) -> str:
    """A fixed-width table of the rows, then one line per reason."""
    head = ("engine", "loader", "runtime", "python", "loaded", "max|diff|", "in tol", "seconds", "peak MB", "status")
    rows = []
    for r in results:
        rows.append((
            r.engine, r.loader, r.runtime_version or r.label.split()[-1], r.python or "-",
            "-" if r.loaded is None else ("yes" if r.loaded else "NO"),
            "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}",
            "-" if r.within_tolerance is None else ("yes" if r.within_tolerance else "NO"),
            "-" if r.seconds is None else f"{r.seconds:.1f}",
            "-" if r.peak_rss_mb is None else f"{r.peak_rss_mb:.0f}",
            r.status.upper() + ("" if r.required else " (info)"),
        ))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    lines += [fmt.format(*row) for row in rows]
    notes = [f"  {r.engine}/{r.loader}: {_clip(r.reason)}" for r in results if r.reason]
    if notes:
        lines += ["", "notes:"] + notes
    return "\n".join(lines)


if __name__ == "__main__":  # python -m export.engines BUNDLE  (same as w2sr check-engines)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    out = check_engines(sys.argv[1])
    print(format_table(out))
    sys.exit(0 if all(r.ok for r in out) else 1)
