"""The exporter's side of running a bundle: the Keras model as the reference, the rows of the parity
matrix, and timing in a fresh process. The weight formats themselves run in ``w2sr.bundle.runtimes``
(one backend per format, the ``Runtime`` protocol)::

    KerasRuntime(path_or_model, padding=0, math="fp32", scale=2, multiple=1)  # the Keras model file
        # (not a weight format); ``padding``/``multiple``: the exported graph's, applied around it
    make_runtime("onnx-cpu" | "savedmodel-gpu-tf32" | "keras-cpu" ..., keras_path=, savedmodel=, onnx_path=)

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

from w2sr.core.proc import die_with_parent

from w2sr.core.errors import UserError

from w2sr.bundle.runtimes import (MATH_MODES, STRICT_MATH, OnnxRuntime, OpenVinoRuntime, SavedModelRuntime,
                                  _check_batch, _check_math, cuda_provider, ort_cuda_missing, session_providers,
                                  tf_gpu_missing, tf_math)

log = logging.getLogger(__name__)


#: Keras mixed-precision policy of each reduced-precision mode
MIXED_POLICY = {"bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


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
