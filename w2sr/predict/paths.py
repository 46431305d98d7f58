"""Which inference path `w2sr predict` takes on this machine: runtime x precision, chosen from the CPU's
own flags at run time and kept only if an accuracy guard passes.

Paths (``runtime-precision``):

* ``onnx-fp32``: ONNX Runtime, float32 (the reference path);
* ``tensorflow-fp32``: the frozen SavedModel in TensorFlow;
* ``openvino-fp32``, ``openvino-bf16``: OpenVINO reading the same ``weights.onnx``; bf16 keeps
  activations in bfloat16 (``INFERENCE_PRECISION_HINT``), fast only where the CPU computes bf16
  natively (AVX512-BF16 or AMX-BF16; elsewhere OpenVINO would emulate it, slower than fp32);
* on an NVIDIA GPU (``--device gpu``, or ``auto`` where one is usable): ``onnx-cuda-fp32`` /
  ``onnx-cuda-tf32`` (onnxruntime-gpu) and ``tensorflow-gpu-fp32`` / ``tensorflow-gpu-tf32`` (the
  SavedModel in a CUDA build of TensorFlow). fp32 is strict (TensorFloat-32 off); tf32 is the
  frameworks' default on Ampere and newer, about twice as fast, with a deviation the guard measures.

``--precision auto --runtime auto --device auto`` (the default) takes the fastest path the machine
supports natively (:func:`candidates`), then checks it on the bundle's own test input against
``test_output.npy`` (:func:`guard`: PSNR >= :data:`GUARD_PSNR_DB` relative to it, the range of the
stored output as the peak). A path that fails falls back to the next one, and finally to
``onnx-fp32`` on the CPU, with one log line saying why. Every path but that reference is guarded,
GPU fp32 included (it catches a broken CUDA set-up). Verdicts are cached per weights file, path and
processor (``~/.cache/w2sr/guard.json``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from w2sr.core.cpu import cpu_flags, cpu_model, native_bf16
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "onnx", "openvino", "tensorflow")
PRECISIONS = ("auto", "fp32", "bf16", "tf32")
DEVICES = ("auto", "cpu", "gpu")
#: the GPU runtime each --runtime maps to (OpenVINO's GPU plugin is for Intel GPUs: not offered)
GPU_RUNTIME = {"onnx": "onnx-cuda", "tensorflow": "tensorflow-gpu"}
REFERENCE = "onnx-fp32"
#: a path is kept when its output on the whole test input is within this PSNR of test_output.npy:
#: an RMS error of 0.32 % of the output's range. Against the model's own error (about 31 dB vs the SIM
#: target on held-out data) it adds at most 0.05 dB of held-out PSNR (errors add in quadrature)
GUARD_PSNR_DB = 50.0
#: ... and no block of GUARD_BLOCK x GUARD_BLOCK output pixels below this (an RMS error of 1 % of the
#: range there): a badly damaged 16 x 16 patch in a 512^2 output still scores 50 dB over the whole image
GUARD_BLOCK_PSNR_DB = 40.0
GUARD_BLOCK = 64
def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def gpu_runtimes() -> dict[str, str]:
    """{"onnx": why not or "", "tensorflow": why not or ""}: which GPU runtimes work here."""
    from w2sr.bundle.runtimes import ort_cuda_missing, tf_gpu_missing

    return {"onnx": ort_cuda_missing(), "tensorflow": tf_gpu_missing()}


def resolve_device(device: str, runtime: str, precision: str, gpu: dict[str, str]) -> str:
    """"cpu" or "gpu" for ``--device``; ``gpu`` maps each GPU runtime to why it cannot run ("" when
    it can). ``auto`` takes the GPU when a runtime asked for (or any, for ``--runtime auto``) can use
    one and the precision is one a GPU path has; explicit choices that cannot run are refused."""
    if device not in DEVICES:
        raise UserError(f"--device {device}: choose from {', '.join(DEVICES)}")
    usable = [r for r, why in gpu.items() if not why and (runtime in ("auto", r))]
    if device == "cpu":
        if precision == "tf32":
            raise UserError("--precision tf32 is a GPU mode (NVIDIA tensor cores): use --device gpu or auto")
        return "cpu"
    if device == "gpu":
        if runtime == "openvino":
            raise UserError("--runtime openvino runs on the CPU here; on an NVIDIA GPU use --runtime onnx "
                            "(onnxruntime-gpu) or tensorflow (a CUDA build)")
        if precision == "bf16":
            raise UserError("--precision bf16 is a CPU path (OpenVINO); a GPU runs the bundle in fp32 or tf32")
        if not usable:
            wanted = [runtime] if runtime != "auto" else list(gpu)
            raise UserError("--device gpu: no GPU runtime here: " + "; ".join(f"{r}: {gpu[r]}" for r in wanted))
        return "gpu"
    # auto
    if precision == "tf32" and not usable:
        raise UserError("--precision tf32 needs an NVIDIA GPU and a GPU runtime: "
                        + "; ".join(f"{r}: {why}" for r, why in gpu.items()))
    if usable and runtime != "openvino" and precision != "bf16":
        return "gpu"
    return "cpu"


def candidates(runtime: str, precision: str, flags: frozenset[str], have_openvino: bool,
               have_savedmodel: bool = True, device: str = "cpu",
               gpu: Optional[dict[str, str]] = None, cpu_fallback: bool = True) -> list[tuple[str, str]]:
    """The paths to try, fastest first, each with why it is on the list; the last one is accurate.

    Explicit choices are honoured (and refused in one line where they cannot run); ``auto`` uses
    bf16 only where the CPU has it natively, OpenVINO where it is installed. ``device`` is the
    resolved one (:func:`resolve_device`); ``gpu`` as there. GPU lists end with the CPU reference
    when ``cpu_fallback`` (``--device auto``); with ``--device gpu`` they stay on the GPU."""
    if runtime not in RUNTIMES:
        raise UserError(f"--runtime {runtime}: choose from {', '.join(RUNTIMES)}")
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}: choose from {', '.join(PRECISIONS)}")
    if runtime == "tensorflow" and not have_savedmodel:
        raise UserError("--runtime tensorflow: the bundle has no SavedModel weights")
    if device == "gpu":
        paths = _gpu_candidates(runtime, precision, have_savedmodel, gpu or {})
        return paths + [(REFERENCE, "CPU fallback")] if cpu_fallback else paths
    if precision == "tf32":
        raise UserError("--precision tf32 is a GPU mode (NVIDIA tensor cores): use --device gpu or auto")
    bf16 = native_bf16(flags)
    if precision == "bf16" and runtime not in ("auto", "openvino"):
        raise UserError(f"--precision bf16 runs on OpenVINO only (--runtime openvino or auto), not {runtime}")
    if runtime == "openvino" or (precision == "bf16" and runtime == "auto"):
        if not have_openvino:
            raise UserError("--runtime openvino: OpenVINO is not installed (pip install openvino)")
    if precision == "bf16":
        why = f"asked for; CPU {'has ' + bf16 if bf16 else 'has no native bf16 (emulated: slow)'}"
        return [("openvino-bf16", why)]
    if runtime in ("onnx", "tensorflow", "openvino"):
        if precision == "fp32" or runtime != "openvino" or not bf16:
            return [(f"{runtime}-fp32", "asked for")]
        return [("openvino-bf16", f"CPU has {bf16}"), ("openvino-fp32", "fallback")]
    # runtime auto
    if precision == "fp32":
        return [(REFERENCE, "asked for fp32")]
    paths = []
    if bf16 and have_openvino:
        paths.append(("openvino-bf16", f"CPU has {bf16}"))
    paths.append((REFERENCE, "accurate reference path" if paths else
                  ("CPU has no native bf16" if not bf16 else "OpenVINO not installed")))
    return paths


def _gpu_candidates(runtime: str, precision: str, have_savedmodel: bool,
                    gpu: dict[str, str]) -> list[tuple[str, str]]:
    """GPU paths: the runtime asked for (auto: onnxruntime-gpu, else TensorFlow), TF32 first under
    ``--precision auto``, strict fp32 after it."""
    if runtime == "auto":
        usable = [r for r in ("onnx", "tensorflow") if not gpu.get(r, "missing")
                  and (r != "tensorflow" or have_savedmodel)]
        if not usable:
            raise UserError("--device gpu: no GPU runtime can run this bundle: "
                            + "; ".join(f"{r}: {why}" for r, why in gpu.items() if why))
        rt = usable[0]
    else:
        rt = runtime
    base = GPU_RUNTIME[rt]
    if precision == "fp32":
        return [(f"{base}-fp32", "asked for fp32 (TF32 off)")]
    if precision == "tf32":
        return [(f"{base}-tf32", "asked for tf32")]
    return [(f"{base}-tf32", "GPU, TensorFloat-32 (the framework's default on Ampere and newer)"),
            (f"{base}-fp32", "GPU, strict fp32 (TF32 off)")]


# --------------------------------------------------------------------------------------------
# the accuracy guard


def guard_sample(info) -> tuple[np.ndarray, np.ndarray]:
    """(the whole normalised test input (1,h,w,1), test_output.npy as (H,W)): the guard sees every
    pixel of the test input, so damage that depends on content (bright structures, borders) is seen."""
    raw = np.load(info.test_input)[0, :, :, 0].astype(np.float32)
    expected = np.load(info.test_output)[0, :, :, 0].astype(np.float32)
    x = info.normalization.measure(raw).apply(raw)  # the whole image's normalisation, as in use
    return x[None, :, :, None], expected


@dataclass(frozen=True)
class GuardResult:
    """A path's agreement with test_output.npy: PSNR over the whole output and in its worst block."""
    psnr_db: float
    worst_block_db: float
    pixels: int

    @property
    def passed(self) -> bool:
        return self.psnr_db >= GUARD_PSNR_DB and self.worst_block_db >= GUARD_BLOCK_PSNR_DB

    @property
    def margin_db(self) -> float:
        """How far the path is above the nearer of the two thresholds (negative: it fails)."""
        return min(self.psnr_db - GUARD_PSNR_DB, self.worst_block_db - GUARD_BLOCK_PSNR_DB)

    def describe(self) -> str:
        return (f"{self.psnr_db:.1f} dB PSNR vs test_output.npy over {self.pixels} output pixels, worst "
                f"{GUARD_BLOCK}x{GUARD_BLOCK} block {self.worst_block_db:.1f} dB (margin {self.margin_db:+.1f} dB)")


def guard_scores(got: np.ndarray, want: np.ndarray) -> GuardResult:
    """Whole-image PSNR and the lowest PSNR of any :data:`GUARD_BLOCK`-pixel block (same peak: the
    reference's range), so a small region damaged badly cannot hide in a large clean image."""
    from w2sr.core.metrics import psnr_of_mse

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    peak = float(want.max() - want.min()) or 1.0
    err = (got - want) ** 2

    def db(mse: float) -> float:
        return psnr_of_mse(mse, peak)

    h, w = err.shape
    b = min(GUARD_BLOCK, h, w)
    hb, wb = h // b, w // b
    blocks = err[: hb * b, : wb * b].reshape(hb, b, wb, b).mean(axis=(1, 3))
    # the right and bottom remainders, as blocks flush with the border
    edges = [err[h - b:, x0:x0 + b].mean() for x0 in range(0, w - b + 1, b)] + \
            [err[y0:y0 + b, w - b:].mean() for y0 in range(0, h - b + 1, b)] + [err[h - b:, w - b:].mean()]
    worst = max(float(blocks.max()), max(float(e) for e in edges))
    return GuardResult(db(float(err.mean())), db(worst), int(err.size))


def guard(info, predict: Callable[[np.ndarray], np.ndarray]) -> GuardResult:
    """A path's output on the whole test input against test_output.npy."""
    x, want = guard_sample(info)
    got = info.normalization.output(predict(x))[0, :, :, 0]
    return guard_scores(got, want)


@dataclass
class Choice:
    path: str                # e.g. "openvino-bf16"
    reason: str              # why this path
    guard_db: Optional[float] = None
    rejected: tuple = ()     # (path, reason) of paths that were tried and dropped
    margin_db: Optional[float] = None   # how far above the nearer guard threshold


def _cache_file() -> Path:
    return Path(os.environ.get("W2SR_CACHE", Path.home() / ".cache" / "w2sr")) / "guard.json"


def _processor(path: str) -> str:
    """The processor a path's verdict belongs to: the GPU's name for GPU paths, else the CPU's."""
    if "-cuda-" in path or "-gpu-" in path:
        from w2sr.core.gpu import first_gpu

        gpu = first_gpu()
        return gpu.name if gpu else "unknown GPU"
    return cpu_model()


def _cache_key(info, path: str) -> str:
    weights = info.weight_sha256.get(info.onnx_path) or str(info.onnx_path)
    return f"{weights}|{path}|{_processor(path)}"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict) -> None:
    from w2sr.core.files import atomic_write_text

    try:
        _cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_cache_file(), json.dumps(cache, indent=1) + "\n")
    except OSError as exc:  # a read-only home only costs the guard's time next run
        log.debug("guard cache not written: %s", exc)


def choose(info, runtime: str, precision: str, load: Callable[[str], object],
           flags: Optional[frozenset[str]] = None, device: str = "auto",
           gpu: Optional[dict[str, str]] = None) -> tuple[Choice, object]:
    """Walk :func:`candidates`; load each path with ``load(path)``; keep the first whose guard passes
    (explicitly asked-for paths are kept but still checked and reported). Returns (choice, runtime).

    ``gpu`` (default: :func:`gpu_runtimes`, probed only when ``device`` is not "cpu") says which
    GPU runtimes work here."""
    flags = cpu_flags() if flags is None else flags
    if gpu is None:
        gpu = gpu_runtimes() if device != "cpu" else {}
    where = resolve_device(device, runtime, precision, gpu)
    paths = candidates(runtime, precision, flags, openvino_available(), info.savedmodel_zip is not None,
                       where, gpu, cpu_fallback=device == "auto")
    explicit = runtime != "auto" or precision != "auto" or device == "gpu"
    cache = _read_cache()
    rejected = []
    for i, (path, reason) in enumerate(paths):
        last = i == len(paths) - 1
        rt = load(path)
        if path == REFERENCE:  # the reference needs no guard: test_output.npy is its own output
            return Choice(path, reason, rejected=tuple(rejected)), rt
        key = _cache_key(info, path)
        cached = cache.get(key)
        result = GuardResult(**cached) if isinstance(cached, dict) else None
        if result is None:
            t0 = time.perf_counter()
            try:
                result = guard(info, rt.predict)
            except ValueError as exc:  # e.g. a test input the normalisation refuses: nothing to check on
                log.warning("accuracy guard for %s cannot run on %s (%s)", path, info.test_input, exc)
                result = GuardResult(float("-inf"), float("-inf"), 0)
            log.info("accuracy guard for %s: %s (%.1f s)", path, result.describe(), time.perf_counter() - t0)
            if result.pixels:
                cache[key] = {k: (v if np.isfinite(v) else 999.0) for k, v in
                              (("psnr_db", result.psnr_db), ("worst_block_db", result.worst_block_db))}
                cache[key]["pixels"] = result.pixels
                _write_cache(cache)
        db = result.psnr_db
        if result.passed or (explicit and last):
            if not result.passed:
                log.warning("%s: %s, below the guard (%g dB whole, %g dB per block); kept because it was asked "
                            "for", path, result.describe(), GUARD_PSNR_DB, GUARD_BLOCK_PSNR_DB)
            return Choice(path, reason, db, tuple(rejected), result.margin_db), rt
        why = (f"{result.describe()}: below the guard ({GUARD_PSNR_DB:g} dB whole, {GUARD_BLOCK_PSNR_DB:g} dB "
               f"per block)")
        log.warning("not using %s: %s; falling back to %s", path, why, paths[i + 1][0] if not last else REFERENCE)
        rejected.append((path, why))
    return Choice(REFERENCE, "fallback after the guard", rejected=tuple(rejected)), load(REFERENCE)
