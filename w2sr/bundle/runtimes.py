"""One inference backend per weight format of a finished bundle, all with the same call (the
:class:`Runtime` protocol): ``predict(x)`` takes a float32 batch ``(B, H, W, C)`` that is already
normalised (the rdf's preprocessing applied) and returns the network output (before postprocessing)::

    SavedModelRuntime(dir_or_zip, device=None, math="fp32")  # the frozen SavedModel, TF2 signature call
    OnnxRuntime(path, providers=None, threads=None, math="fp32")  # ONNX Runtime; CPU unless CUDA asked for
    OpenVinoRuntime(path, precision="fp32"|"bf16", threads=None)  # OpenVINO on the same ONNX file (CPU)

``math`` is the arithmetic a GPU does (:data:`MATH_MODES`). "fp32" is strict float32: TensorFlow's
TensorFloat-32 switched off around every call, ONNX Runtime's CUDA provider given ``use_tf32=0``.
Both frameworks use TF32 *by default* on Ampere and newer NVIDIA GPUs (TensorFlow since 2.4,
ONNX Runtime's ``use_tf32`` defaults to 1), which moves the full model's output by up to 1e-2:
parity is only ever measured in "fp32". "tf32", "bf16" and "fp16" are the fast modes, reported with
their deviation and never counted as parity. On a CPU every mode but bf16/fp16 computes float32.

The Keras model (``export.runtimes.KerasRuntime``) is the exporter's reference, not a weight format,
and lives with the exporter. TensorFlow and ONNX Runtime are imported inside the classes.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence

import numpy as np

from w2sr.core.errors import UserError

log = logging.getLogger(__name__)


class Runtime(Protocol):
    """What every backend offers: a name for reports, its weight format, and one call."""

    name: str
    format: str

    def predict(self, x: np.ndarray) -> np.ndarray: ...

#: a GPU's arithmetic: strict float32, TensorFloat-32 (10-bit mantissa in the tensor cores), and
#: Keras mixed precision with bfloat16 or float16 activations (the last layer stays float32)
MATH_MODES = ("fp32", "tf32", "bf16", "fp16")


#: the only mode parity is measured in
STRICT_MATH = "fp32"


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


def _check_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"expected a float32 batch (B, H, W, 1), got shape {x.shape}")
    return x


class SavedModelRuntime:
    """The frozen SavedModel (folder or zip), loaded with TF2's ``tf.saved_model.load`` and called
    through its ``serving_default`` signature (``input`` -> ``{"output": ...}``), as bioimageio.core does."""

    format = "tensorflow_saved_model_bundle"

    def __init__(self, path: str | Path, device: Optional[str] = None, math: str = STRICT_MATH):
        import tensorflow as tf

        from w2sr.bundle.savedmodel import SIGNATURE_KEY, unzip_savedmodel
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
