"""One inference backend per weight format, all with the same call.

``predict(x)`` takes a float32 batch ``(B, H, W, 1)`` that is already normalised (the rdf's
preprocessing applied) and returns the network output ``(B, 2H, 2W, 1)`` (before postprocessing)::

    KerasRuntime(path_or_model, padding=0)      # generator.keras (the training artefact); ``padding``:
                                                # the exported graph's symmetric padding, applied around it
    SavedModelRuntime(dir_or_zip, device=None)  # the frozen SavedModel, TF2 signature call
    OnnxRuntime(path, providers=None, threads=None)   # ONNX Runtime; CUDA when available
    OpenVinoRuntime(path, precision="fp32"|"bf16", threads=None)  # OpenVINO on the same ONNX file (CPU)

:func:`available_runtimes` lists every (format, device) row the parity matrix may show, with the
reason a row cannot run here (for example no GPU). :func:`measure_in_subprocess` times one runtime
in a fresh process and reports its peak memory (used by the rdf's test_information and the benchmark).

TensorFlow and ONNX Runtime are imported inside the classes, never at module import.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from export.proc import die_with_parent

from w2sr.core.errors import UserError

log = logging.getLogger(__name__)


def _check_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected a float32 batch (B, H, W, 1), got shape {x.shape}")
    return x


class KerasRuntime:
    """The Keras generator (``generator.keras`` or a live ``keras.Model``)."""

    format = "keras"

    def __init__(self, path_or_model: Any, device: Optional[str] = None, padding: int = 0):
        from training.models import load_generator

        if isinstance(path_or_model, (str, Path)):
            self.path: Optional[Path] = Path(path_or_model)
            self.model = load_generator(self.path)
        else:
            self.path = None
            self.model = path_or_model
        self.device = device or "cpu"
        self.padding = int(padding)  # compare with the bundle's graph, which pads itself (w2sr.core.padding)
        self._tf_device = "/GPU:0" if self.device == "gpu" else "/CPU:0"
        self.name = f"Keras ({self.device.upper()})"
        import tensorflow as tf

        # One graph for every input size. Calling a functional Keras model eagerly keeps every
        # layer's output alive until the call returns: ~24 GB for the full RRDBNet on 333 x 517.
        model = self.model
        self._fn = tf.function(lambda x: model(x, training=False), autograph=False,
                               input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])

    def predict(self, x: np.ndarray) -> np.ndarray:
        from w2sr.core.padding import wrap_numpy

        return wrap_numpy(self._predict_plain, self.padding)(_check_batch(x))

    def _predict_plain(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with tf.device(self._tf_device):
            return np.asarray(self._fn(tf.constant(x)), dtype=np.float32)


class SavedModelRuntime:
    """The frozen SavedModel (folder or zip), loaded with TF2's ``tf.saved_model.load`` and called
    through its ``serving_default`` signature (``input`` -> ``{"output": ...}``), as bioimageio.core does."""

    format = "tensorflow_saved_model_bundle"

    def __init__(self, path: str | Path, device: Optional[str] = None):
        import tensorflow as tf

        from export.savedmodel import SIGNATURE_KEY, unzip_savedmodel
        from w2sr.core.contract import INPUT_NAME, OUTPUT_NAME

        self.path = Path(path)
        self._sm = unzip_savedmodel(self.path)
        self.device = device or "cpu"
        self._tf_device = "/GPU:0" if self.device == "gpu" else "/CPU:0"
        self.name = f"SavedModel TF {tf.__version__} ({self.device.upper()})"
        try:
            self._loaded = tf.saved_model.load(str(self._sm.dir), tags=["serve"])
            self._fn = self._loaded.signatures[SIGNATURE_KEY]
        except Exception as exc:
            raise UserError(f"{self.path}: cannot load the SavedModel signature '{SIGNATURE_KEY}': {exc}") from None
        self._in, self._out = INPUT_NAME, OUTPUT_NAME

    def predict(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = _check_batch(x)
        with tf.device(self._tf_device):
            result = self._fn(**{self._in: tf.constant(x)})
        if not isinstance(result, dict) or self._out not in result:
            raise UserError(f"{self.path}: signature returned {type(result).__name__}, expected {{'{self._out}': ...}}")
        return np.asarray(result[self._out], dtype=np.float32)

    def close(self) -> None:
        self._sm.cleanup()

    def __del__(self) -> None:  # the temp folder of an unzipped model
        try:
            self.close()
        except Exception:
            pass


class OnnxRuntime:
    """ONNX Runtime session; ``providers=None`` picks CUDA when this onnxruntime has it, else CPU."""

    format = "onnx"

    def __init__(self, path: str | Path, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX file not found")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            raise UserError(f"{self.path}: ONNX Runtime providers {missing} not available (have {available})")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(providers))
        except Exception as exc:
            raise UserError(f"{self.path}: ONNX Runtime cannot load it: {exc}") from None
        used = self.session.get_providers()
        self.device = "gpu" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        self.name = f"ONNX Runtime {ort.__version__} ({'CUDA' if self.device == 'gpu' else 'CPU'})"
        self._in = self.session.get_inputs()[0].name
        self._out = self.session.get_outputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = _check_batch(x)
        return np.asarray(self.session.run([self._out], {self._in: x})[0], dtype=np.float32)


class OpenVinoRuntime:
    """OpenVINO on the CPU, reading ``weights.onnx`` directly; ``precision`` "bf16" keeps activations
    in bfloat16 (fast where the CPU has AVX512-BF16 or AMX), "fp32" computes in float32."""

    format = "onnx"
    device = "cpu"

    def __init__(self, path: str | Path, precision: str = "fp32", threads: Optional[int] = None):
        import openvino as ov

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX file not found")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r}: fp32 or bf16")
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            self.compiled = ov.Core().compile_model(str(self.path), "CPU", config)
        except Exception as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("Exception from")]
            raise UserError(f"{self.path}: OpenVINO cannot load it: {' '.join(lines)[:300] or type(exc).__name__}") from None
        self.request = self.compiled.create_infer_request()
        self.precision = precision
        self.name = f"OpenVINO {ov.__version__.split('-')[0]} (CPU, {precision})"

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = _check_batch(x)
        result = self.request.infer({0: x})
        return np.asarray(result[self.compiled.output(0)], dtype=np.float32)


# --------------------------------------------------------------------------------------------


@dataclass
class RuntimeRow:
    """One (weight format, device) combination and whether it can run on this machine."""

    key: str            # "keras-cpu", "savedmodel-gpu", "onnx-cuda", ...
    format: str         # keras | tensorflow_saved_model_bundle | onnx
    device: str         # cpu | gpu
    available: bool
    reason: str = ""    # why not, when not available


def _tf_gpus() -> list:
    try:
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    except Exception:  # pragma: no cover - TF always importable in this project
        return []


def available_runtimes() -> list[RuntimeRow]:
    """Every row of the parity matrix, GPU rows marked unavailable with the reason."""
    rows = [
        RuntimeRow("keras-cpu", "keras", "cpu", True),
        RuntimeRow("savedmodel-cpu", "tensorflow_saved_model_bundle", "cpu", True),
        RuntimeRow("onnx-cpu", "onnx", "cpu", True),
    ]
    gpus = _tf_gpus()
    if gpus:
        rows += [RuntimeRow("keras-gpu", "keras", "gpu", True),
                 RuntimeRow("savedmodel-gpu", "tensorflow_saved_model_bundle", "gpu", True)]
    else:
        import tensorflow as tf

        built_cuda = tf.test.is_built_with_cuda()
        why = ("no GPU visible to TensorFlow" if built_cuda
               else f"TensorFlow {tf.__version__} here is a CPU-only build (tensorflow-cpu)")
        rows += [RuntimeRow("keras-gpu", "keras", "gpu", False, why),
                 RuntimeRow("savedmodel-gpu", "tensorflow_saved_model_bundle", "gpu", False, why)]
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        rows.append(RuntimeRow("onnx-cuda", "onnx", "gpu", True))
    else:
        rows.append(RuntimeRow("onnx-cuda", "onnx", "gpu", False,
                               f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider "
                               f"(providers: {', '.join(ort.get_available_providers())})"))
    return rows


def make_runtime(key: str, *, keras_path: Optional[Path] = None, savedmodel: Optional[Path] = None,
                 onnx_path: Optional[Path] = None, threads: Optional[int] = None, padding: int = 0) -> Any:
    """Build the runtime of a :class:`RuntimeRow` key (``padding``: the bundle graph's, for Keras)."""
    fmt, device = key.split("-", 1)
    if fmt == "keras":
        if keras_path is None:
            raise UserError("no Keras generator given")
        return KerasRuntime(keras_path, device=device, padding=padding)
    if fmt == "savedmodel":
        if savedmodel is None:
            raise UserError("no SavedModel given")
        return SavedModelRuntime(savedmodel, device=device)
    if fmt == "onnx":
        if onnx_path is None:
            raise UserError("no ONNX file given")
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        return OnnxRuntime(onnx_path, providers=providers, threads=threads)
    raise ValueError(f"unknown runtime key {key!r}")


# --------------------------------------------------------------------------------------------
# timing and peak memory in a fresh process


@dataclass
class Measurement:
    runtime: str
    name: str
    size: int
    repeats: int
    load_s: float
    first_s: float           # first call (graph building, allocations)
    median_s: float          # median of the following calls
    times_s: list
    peak_rss_mb: float       # the whole process, TensorFlow/ORT included
    baseline_rss_mb: float   # after imports, before loading the model


def peak_rss_mb() -> float:
    """Peak RSS of this process image in MiB: VmHWM (ru_maxrss survives exec on Linux and would
    start at the parent's RSS), falling back to ru_maxrss elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _measure_here(kind: str, path: Path, size: int, repeats: int, threads: Optional[int]) -> Measurement:
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if kind in ("keras", "savedmodel"):
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
    else:
        import onnxruntime  # noqa: F401
    base = peak_rss_mb()
    t0 = time.perf_counter()
    if kind == "keras":
        rt: Any = KerasRuntime(path)
    elif kind == "savedmodel":
        rt = SavedModelRuntime(path)
    elif kind == "onnx":
        rt = OnnxRuntime(path, threads=threads)
    else:
        raise ValueError(kind)
    load_s = time.perf_counter() - t0
    x = np.random.default_rng(0).standard_normal((1, size, size, 1)).astype(np.float32)
    t0 = time.perf_counter()
    rt.predict(x)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        rt.predict(x)
        times.append(time.perf_counter() - t0)
    return Measurement(runtime=kind, name=rt.name, size=size, repeats=repeats, load_s=load_s,
                       first_s=first, median_s=float(np.median(times)) if times else first,
                       times_s=times, peak_rss_mb=peak_rss_mb(), baseline_rss_mb=base)


def measure_in_subprocess(kind: str, path: str | Path, size: int, repeats: int = 3,
                          threads: Optional[int] = None, timeout: float = 1800) -> Measurement:
    """Time ``kind`` (keras | savedmodel | onnx) on a ``size`` x ``size`` input in a new process."""
    cmd = [sys.executable, "-m", "export.runtimes", "measure", kind, str(path),
           "--size", str(size), "--repeats", str(repeats)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          preexec_fn=die_with_parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise UserError(f"{path}: measuring {kind} failed: {' | '.join(tail)}")
    return Measurement(**json.loads(lines[-1]))


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.runtimes",
                                     description="Time one runtime on a random square input (prints JSON).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("kind", choices=["keras", "savedmodel", "onnx"])
    m.add_argument("path", type=Path)
    m.add_argument("--size", type=int, default=512)
    m.add_argument("--repeats", type=int, default=3)
    m.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    result = _measure_here(args.kind, args.path, args.size, args.repeats, args.threads)
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
