"""One inference backend per weight format, all with the same call.

``predict(x)`` takes a float32 batch ``(B, H, W, 1)`` that is already normalised (the rdf's
preprocessing applied) and returns the network output ``(B, 2H, 2W, 1)`` (before postprocessing)::

    KerasRuntime(path_or_model, padding=0, math="fp32")  # generator.keras (the training artefact);
                                                # ``padding``: the exported graph's, applied around it
    SavedModelRuntime(dir_or_zip, device=None, math="fp32")  # the frozen SavedModel, TF2 signature call
    OnnxRuntime(path, providers=None, threads=None, math="fp32")  # ONNX Runtime; CPU unless CUDA asked for
    OpenVinoRuntime(path, precision="fp32"|"bf16", threads=None)  # OpenVINO on the same ONNX file (CPU)

``math`` is the arithmetic a GPU does (:data:`MATH_MODES`). "fp32" is strict float32: TensorFlow's
TensorFloat-32 switched off around every call, ONNX Runtime's CUDA provider given ``use_tf32=0``.
Both frameworks use TF32 *by default* on Ampere and newer NVIDIA GPUs (TensorFlow since 2.4,
ONNX Runtime's ``use_tf32`` defaults to 1), which moves the full model's output by up to 1e-2:
parity is only ever measured in "fp32". "tf32", "bf16" and "fp16" (Keras mixed precision) are the
fast modes, reported with their deviation and never counted as parity. On a CPU every mode but
bf16/fp16 computes float32 (TF32 exists only on NVIDIA tensor cores).

:func:`available_runtimes` lists every (format, device) row the parity matrix may show, with the
reason a row cannot run here (for example no GPU); :func:`fast_runtimes` the fast-mode rows.
:func:`measure_in_subprocess` times one runtime in a fresh process and reports its peak memory
(used by the rdf's test_information and the benchmark).

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


#: a GPU's arithmetic: strict float32, TensorFloat-32 (10-bit mantissa in the tensor cores), and
#: Keras mixed precision with bfloat16 or float16 activations (the last layer stays float32)
MATH_MODES = ("fp32", "tf32", "bf16", "fp16")
#: the only mode parity is measured in
STRICT_MATH = "fp32"
#: Keras mixed-precision policy of each reduced-precision mode
MIXED_POLICY = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def _check_math(math: str, allowed: Sequence[str] = MATH_MODES, what: str = "this runtime") -> str:
    if math not in allowed:
        raise UserError(f"math mode {math!r} is not available in {what} (choose from {', '.join(allowed)})")
    return math


class tf_math:
    """Context manager: TensorFlow's TensorFloat-32 switched on for "tf32" and off for every other
    mode while a call runs, then restored. The switch is global to the process, so each runtime sets
    it around its own calls instead of once: a strict row never runs under a fast row's setting."""

    def __init__(self, math: str):
        self.enable = _check_math(math) == "tf32"

    def __enter__(self) -> "tf_math":
        import tensorflow as tf

        self._before = tf.config.experimental.tensor_float_32_execution_enabled()
        tf.config.experimental.enable_tensor_float_32_execution(self.enable)
        return self

    def __exit__(self, *exc) -> None:
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(self._before)


def cuda_provider(math: str = STRICT_MATH, device_id: int = 0) -> tuple[str, dict]:
    """ONNX Runtime's CUDA provider with its options: ``use_tf32`` (a CUDA provider option since
    onnxruntime 1.18, default "1") is "0" unless TF32 is asked for."""
    _check_math(math, ("fp32", "tf32"), "ONNX Runtime's CUDA provider")
    return "CUDAExecutionProvider", {"device_id": str(int(device_id)), "use_tf32": "1" if math == "tf32" else "0"}


def session_providers(names: Sequence[str], math: str = STRICT_MATH) -> list:
    """What an ONNX Runtime session is given for provider ``names``: the CUDA provider always with
    :func:`cuda_provider`'s options (never ONNX Runtime's TF32 default), the others by name."""
    return [cuda_provider(math) if n == "CUDAExecutionProvider" else n for n in names]


def mixed_precision_copy(model: Any, math: str) -> Any:
    """The Keras model rebuilt with a mixed-precision policy (bf16/fp16 activations and matmuls,
    float32 variables) and the same weights; its last layer stays float32, as in training."""
    import keras

    policy = MIXED_POLICY[math]
    last = model.layers[-1].name

    def rebuild(layer):
        config = layer.get_config()
        if layer.name != last:
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return copy


def _check_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected a float32 batch (B, H, W, 1), got shape {x.shape}")
    return x


class KerasRuntime:
    """The Keras generator (``generator.keras`` or a live ``keras.Model``)."""

    format = "keras"

    def __init__(self, path_or_model: Any, device: Optional[str] = None, padding: int = 0,
                 math: str = STRICT_MATH, scale: int = 2, multiple: int = 1):
        from training.models import load_generator

        if isinstance(path_or_model, (str, Path)):
            self.path: Optional[Path] = Path(path_or_model)
            self.model = load_generator(self.path)
        else:
            self.path = None
            self.model = path_or_model
        self.math = _check_math(math)
        if math in MIXED_POLICY:
            self.model = mixed_precision_copy(self.model, math)
        self.device = device or "cpu"
        self.padding = int(padding)  # compare with the bundle's graph, which pads itself (w2sr.core.padding)
        self.scale = int(scale)      # output / input side (the padding's crop)
        self.multiple = int(multiple)  # a pooling network's size multiple (padded to it, like the graph)
        self._tf_device = "/GPU:0" if self.device == "gpu" else "/CPU:0"
        self.name = f"Keras ({self.device.upper()}, {self.math})"
        import tensorflow as tf

        # One graph for every input size. Calling a functional Keras model eagerly keeps every
        # layer's output alive until the call returns: ~24 GB for the full RRDBNet on 333 x 517.
        model = self.model
        channels = int(model.inputs[0].shape[-1]) if getattr(model, "inputs", None) else 1
        self._fn = tf.function(lambda x: model(x, training=False), autograph=False,
                               input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32)])

    def predict(self, x: np.ndarray) -> np.ndarray:
        from w2sr.core.padding import wrap_numpy

        return wrap_numpy(self._predict_plain, self.padding, self.scale, self.multiple)(_check_batch(x))

    def _predict_plain(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        with tf.device(self._tf_device), tf_math(self.math):
            return np.asarray(self._fn(tf.constant(x)), dtype=np.float32)


class SavedModelRuntime:
    """The frozen SavedModel (folder or zip), loaded with TF2's ``tf.saved_model.load`` and called
    through its ``serving_default`` signature (``input`` -> ``{"output": ...}``), as bioimageio.core does."""

    format = "tensorflow_saved_model_bundle"

    def __init__(self, path: str | Path, device: Optional[str] = None, math: str = STRICT_MATH):
        import tensorflow as tf

        from export.savedmodel import SIGNATURE_KEY, unzip_savedmodel
        from w2sr.core.contract import INPUT_NAME, OUTPUT_NAME

        self.path = Path(path)
        # a frozen float32 graph: TF32 can be switched, its dtypes cannot
        self.math = _check_math(math, ("fp32", "tf32"), "the frozen SavedModel")
        self._sm = unzip_savedmodel(self.path)
        self.device = device or "cpu"
        self._tf_device = "/GPU:0" if self.device == "gpu" else "/CPU:0"
        self.name = f"SavedModel TF {tf.__version__} ({self.device.upper()}, {self.math})"
        try:
            self._loaded = tf.saved_model.load(str(self._sm.dir), tags=["serve"])
            self._fn = self._loaded.signatures[SIGNATURE_KEY]
        except Exception as exc:
            raise UserError(f"{self.path}: cannot load the SavedModel signature '{SIGNATURE_KEY}': {exc}") from None
        self._in, self._out = INPUT_NAME, OUTPUT_NAME

    def predict(self, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        x = _check_batch(x)
        with tf.device(self._tf_device), tf_math(self.math):
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
    """ONNX Runtime session; ``providers=None`` is the CPU (a GPU is always asked for explicitly).

    The CUDA provider always gets its options from :func:`cuda_provider` (strict fp32 unless
    ``math="tf32"``); asking for CUDA and getting a CPU session (CUDA or cuDNN libraries missing) is
    an error, not a silent fallback."""

    format = "onnx"

    def __init__(self, path: str | Path, providers: Optional[Sequence[str]] = None,
                 threads: Optional[int] = None, math: str = STRICT_MATH):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: ONNX file not found")
        self.math = _check_math(math, ("fp32", "tf32"), "ONNX Runtime")
        available = ort.get_available_providers()
        if providers is None:
            providers = ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise UserError(f"{self.path}: ONNX Runtime providers {missing} not available (have {available})")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        #: what the session is given: the CUDA provider always with its math options
        self.providers = session_providers(providers, self.math)
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=self.providers)
        except Exception as exc:
            raise UserError(f"{self.path}: ONNX Runtime cannot load it: {exc}") from None
        used = self.session.get_providers()
        self.device = "gpu" if used and used[0] == "CUDAExecutionProvider" else "cpu"
        if "CUDAExecutionProvider" in providers and self.device != "gpu":
            raise UserError(f"{self.path}: ONNX Runtime {ort.__version__} lists CUDAExecutionProvider but the session "
                            f"runs on {used[0] if used else 'nothing'} (CUDA or cuDNN libraries missing?)")
        self.name = (f"ONNX Runtime {ort.__version__} (CUDA, {self.math})" if self.device == "gpu"
                     else f"ONNX Runtime {ort.__version__} (CPU)")
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
    """One (weight format, device, math mode) combination and whether it can run on this machine."""

    key: str            # "keras-cpu", "savedmodel-gpu", "onnx-cuda", "keras-gpu-bf16", ...
    format: str         # keras | tensorflow_saved_model_bundle | onnx
    device: str         # cpu | gpu
    available: bool
    reason: str = ""    # why not, when not available
    math: str = STRICT_MATH   # fp32 (strict: TF32 off) for parity rows; tf32 / bf16 / fp16 for fast rows

    @property
    def strict(self) -> bool:
        return self.math == STRICT_MATH


def _tf_gpus() -> list:
    try:
        import tensorflow as tf

        return tf.config.list_physical_devices("GPU")
    except Exception:  # pragma: no cover - TF always importable in this project
        return []


def tf_gpu_missing() -> str:
    """Why TensorFlow cannot use a GPU here ("" when it can)."""
    if _tf_gpus():
        return ""
    import tensorflow as tf

    return ("no GPU visible to TensorFlow" if tf.test.is_built_with_cuda()
            else f"TensorFlow {tf.__version__} here is a CPU-only build (tensorflow-cpu)")


def ort_cuda_missing() -> str:
    """Why ONNX Runtime cannot use CUDA here ("" when its CUDA provider is installed)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ""
    return (f"onnxruntime {ort.__version__} here has no CUDAExecutionProvider "
            f"(providers: {', '.join(ort.get_available_providers())}; pip install onnxruntime-gpu)")


def available_runtimes() -> list[RuntimeRow]:
    """Every parity row (strict fp32), GPU rows marked unavailable with the reason."""
    tf_why, ort_why = tf_gpu_missing(), ort_cuda_missing()
    return [
        RuntimeRow("keras-cpu", "keras", "cpu", True),
        RuntimeRow("savedmodel-cpu", "tensorflow_saved_model_bundle", "cpu", True),
        RuntimeRow("onnx-cpu", "onnx", "cpu", True),
        RuntimeRow("keras-gpu", "keras", "gpu", not tf_why, tf_why),
        RuntimeRow("savedmodel-gpu", "tensorflow_saved_model_bundle", "gpu", not tf_why, tf_why),
        RuntimeRow("onnx-cuda", "onnx", "gpu", not ort_why, ort_why),
    ]


def fast_runtimes(device: str = "gpu") -> list[RuntimeRow]:
    """The fast modes of each runtime on ``device`` (GPU: TF32 in every runtime, bf16 and fp16 through
    Keras mixed precision). ``device="cpu"`` gives the modes a CPU has (bf16, fp16 in Keras): they
    exercise the same code where there is no GPU."""
    if device == "cpu":
        return [RuntimeRow(f"keras-cpu-{m}", "keras", "cpu", True, math=m) for m in ("bf16", "fp16")]
    tf_why, ort_why = tf_gpu_missing(), ort_cuda_missing()
    return ([RuntimeRow(f"keras-gpu-{m}", "keras", "gpu", not tf_why, tf_why, m) for m in ("tf32", "bf16", "fp16")]
            + [RuntimeRow("savedmodel-gpu-tf32", "tensorflow_saved_model_bundle", "gpu", not tf_why, tf_why, "tf32"),
               RuntimeRow("onnx-cuda-tf32", "onnx", "gpu", not ort_why, ort_why, "tf32")])


def make_runtime(key: str, *, keras_path: Optional[Path] = None, savedmodel: Optional[Path] = None,
                 onnx_path: Optional[Path] = None, threads: Optional[int] = None, padding: int = 0,
                 scale: int = 2, multiple: int = 1) -> Any:
    """Build the runtime of a :class:`RuntimeRow` key, ``format-device[-math]`` (``padding``: the
    bundle graph's, for Keras). Without a math suffix the runtime is strict fp32."""
    fmt, device, *rest = key.split("-")
    math = rest[0] if rest else STRICT_MATH
    gpu = device in ("gpu", "cuda")
    if fmt == "keras":
        if keras_path is None:
            raise UserError("no Keras generator given")
        return KerasRuntime(keras_path, device="gpu" if gpu else "cpu", padding=padding, math=math, scale=scale,
                            multiple=multiple)
    if fmt == "savedmodel":
        if savedmodel is None:
            raise UserError("no SavedModel given")
        return SavedModelRuntime(savedmodel, device="gpu" if gpu else "cpu", math=math)
    if fmt == "onnx":
        if onnx_path is None:
            raise UserError("no ONNX file given")
        providers = ["CUDAExecutionProvider"] if gpu else ["CPUExecutionProvider"]
        return OnnxRuntime(onnx_path, providers=providers, threads=threads, math=math)
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
