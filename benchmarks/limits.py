#!/usr/bin/env python
"""What this machine can compute per data type: the limit every benchmark divides by.

A limit is the best rate any runtime the project has reaches on this machine, over several matrix
products and over convolutions shaped like the generator's own (3x3, 64-192 channels in, 32/64 out),
each measured in a fresh process (no runtime's thread pool or JIT cache helps another), the minimum
of ``runs`` timed calls after one warm-up. Without the convolutions and the other runtimes, one
2048^3 product understated the limit and inference paths showed 101-103 % of it.

CPU: fp32 (numpy, TensorFlow, ONNX Runtime, OpenVINO), bf16 (TensorFlow, OpenVINO; on a CPU without
native bf16 this is what a bf16 request gets, i.e. about the fp32 rate or less), int8 (ONNX Runtime
MatMulInteger). GPU: fp32 with TF32 off, tf32, bf16, fp16 (TensorFlow, ONNX Runtime CUDA, PyTorch:
whichever is installed).

    .venv/bin/python benchmarks/limits.py [--device cpu|gpu] [--quick] [--out benchmarks/results/limits_cpu]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import machine  # noqa: E402

#: (M, K, N) matrix products: square, and the generator's im2col shape (pixels x 9*C_in x C_out)
GEMM_SHAPES = {"cpu": ((2048, 2048, 2048), (16384, 1152, 64)), "gpu": ((8192, 8192, 8192), (262144, 1152, 64))}
#: (H, W, C_in, C_out) 3x3 convolutions: a dense block's first and last layer, NHWC, batch 1
CONV_SHAPES = {"cpu": ((256, 256, 64, 32), (256, 256, 192, 64)), "gpu": ((1024, 1024, 64, 32), (1024, 1024, 192, 64))}
#: which runtime measures which op in which data type, per device
PLAN = {
    "cpu": {"fp32": {"numpy": ("gemm",), "tensorflow": ("gemm", "conv"), "onnxruntime": ("gemm", "conv"),
                     "openvino": ("gemm", "conv")},
            "bf16": {"tensorflow": ("gemm", "conv"), "openvino": ("gemm", "conv")},
            "int8": {"onnxruntime": ("gemm",)}},
    "gpu": {m: {"tensorflow": ("gemm", "conv"), "torch": ("gemm", "conv"), "onnxruntime": ("gemm", "conv")}
            for m in ("fp32", "tf32", "bf16", "fp16")},
}
#: the wider types a request for each type may end up computed in
WIDER = {"tf32": ("fp32",), "bf16": ("tf32", "fp32"), "fp16": ("tf32", "fp32"), "int8": ("bf16", "fp32")}
QUICK_PLAN = {"cpu": {"fp32": {"onnxruntime": ("gemm",)}}, "gpu": {"fp32": {"torch": ("gemm",)}}}
RUNTIME_MODULES = ("numpy", "tensorflow", "onnxruntime", "openvino", "torch")


def ops_of(op: str, shape) -> float:
    """Arithmetic operations (2 per multiply-add) of one call."""
    if op == "gemm":
        m, k, n = shape
        return 2.0 * m * k * n
    h, w, cin, cout = shape
    return 2.0 * h * w * 9 * cin * cout


# --------------------------------------------------------------------------------------------
# one measurement (runs in its own process)


def _timed(call, sync, runs: int) -> list[float]:
    call()
    sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _numpy(op, dtype, shape, device, threads):
    if op != "gemm" or dtype != "fp32" or device != "cpu":
        raise NotImplementedError
    m, k, n = shape
    a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    return (lambda: a @ b), (lambda: None)


def _tensorflow(op, dtype, shape, device, threads):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("TensorFlow sees no GPU")
    if dtype == "int8":
        raise NotImplementedError
    tf.config.experimental.enable_tensor_float_32_execution(dtype == "tf32")
    tdt = {"fp32": tf.float32, "tf32": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[dtype]
    with tf.device("/GPU:0" if device == "gpu" else "/CPU:0"):
        if op == "gemm":
            m, k, n = shape
            a = tf.cast(tf.random.normal((m, k)), tdt)
            b = tf.cast(tf.random.normal((k, n)), tdt)
            fn = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)[:1, :1]))
        else:
            h, w, cin, cout = shape
            x = tf.cast(tf.random.normal((1, h, w, cin)), tdt)
            f = tf.cast(tf.random.normal((3, 3, cin, cout)), tdt)
            fn = tf.function(lambda: tf.reduce_sum(tf.nn.conv2d(x, f, 1, "SAME")[:, :1, :1]))
    return (lambda: fn().numpy()), (lambda: None)


def _torch(op, dtype, shape, device, threads):
    import torch

    if device != "gpu" or not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no GPU" if device == "gpu" else "PyTorch is measured on GPUs only")
    if dtype == "int8":
        raise NotImplementedError
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = dtype == "tf32"
    tdt = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    gen = torch.Generator(device="cuda").manual_seed(0)
    if op == "gemm":
        m, k, n = shape
        a = torch.randn(m, k, device="cuda", dtype=tdt, generator=gen)
        b = torch.randn(k, n, device="cuda", dtype=tdt, generator=gen)
        call = lambda: a @ b  # noqa: E731
    else:
        h, w, cin, cout = shape
        x = torch.randn(1, cin, h, w, device="cuda", dtype=tdt, generator=gen)
        f = torch.randn(cout, cin, 3, 3, device="cuda", dtype=tdt, generator=gen)
        torch.backends.cudnn.benchmark = True
        call = lambda: torch.nn.functional.conv2d(x, f, padding=1)  # noqa: E731
    return call, torch.cuda.synchronize


def _onnxruntime(op, dtype, shape, device, threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from w2sr.bundle.runtimes import session_providers

    if device == "gpu" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise RuntimeError("this onnxruntime has no CUDA provider")
    if dtype == "bf16" or (device == "cpu" and dtype in ("tf32", "fp16")):
        raise NotImplementedError
    rng = np.random.default_rng(0)
    if dtype == "int8":
        if op != "gemm":
            raise NotImplementedError
        m, k, n = shape
        b = numpy_helper.from_array(rng.integers(-128, 127, (k, n), dtype=np.int8), "b")
        node, ins, out_t = helper.make_node("MatMulInteger", ["a", "b"], ["y"]), TensorProto.UINT8, TensorProto.INT32
        feed = rng.integers(0, 255, (m, k), dtype=np.uint8)
        in_shape = [m, k]
    else:
        ndt = np.float16 if dtype == "fp16" else np.float32
        ins = out_t = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
        if op == "gemm":
            m, k, n = shape
            b = numpy_helper.from_array(rng.standard_normal((k, n)).astype(ndt), "b")
            node, in_shape = helper.make_node("MatMul", ["a", "b"], ["y"]), [m, k]
        else:
            h, w, cin, cout = shape
            b = numpy_helper.from_array(rng.standard_normal((cout, cin, 3, 3)).astype(ndt), "b")
            node, in_shape = helper.make_node("Conv", ["a", "b"], ["y"], pads=[1, 1, 1, 1]), [1, cin, h, w]
        feed = rng.standard_normal(in_shape).astype(ndt)
    graph = helper.make_graph([node], "limit", [helper.make_tensor_value_info("a", ins, in_shape)],
                              [helper.make_tensor_value_info("y", out_t, None)], [b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    names = ["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=session_providers(names, "tf32" if dtype == "tf32" else "fp32"))
    if device == "gpu":  # keep the input on the card: the limit is the card's, not the PCIe bus's
        binding = sess.io_binding()
        binding.bind_ortvalue_input("a", ort.OrtValue.ortvalue_from_numpy(feed, "cuda", 0))
        binding.bind_output("y", "cuda")
        return (lambda: sess.run_with_iobinding(binding)), binding.synchronize_outputs
    return (lambda: sess.run(None, {"a": feed})), (lambda: None)


def _openvino(op, dtype, shape, device, threads):
    import openvino as ov

    if device != "cpu" or dtype not in ("fp32", "bf16"):
        raise NotImplementedError
    rng = np.random.default_rng(0)
    if op == "gemm":
        m, k, n = shape
        param = ov.opset13.parameter([m, k], ov.Type.f32)
        out = ov.opset13.matmul(param, ov.opset13.constant(rng.standard_normal((k, n)).astype(np.float32)), False, False)
        feed = rng.standard_normal((m, k)).astype(np.float32)
    else:
        h, w, cin, cout = shape
        param = ov.opset13.parameter([1, cin, h, w], ov.Type.f32)
        out = ov.opset13.convolution(param, ov.opset13.constant(rng.standard_normal((cout, cin, 3, 3)).astype(np.float32)),
                                     [1, 1], [1, 1], [1, 1], [1, 1])
        feed = rng.standard_normal((1, cin, h, w)).astype(np.float32)
    compiled = ov.Core().compile_model(ov.Model([out], [param]), "CPU", {
        "INFERENCE_PRECISION_HINT": "bf16" if dtype == "bf16" else "f32", "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    return (lambda: req.infer({0: feed})), (lambda: None)


RUNTIMES = {"numpy": _numpy, "tensorflow": _tensorflow, "onnxruntime": _onnxruntime, "openvino": _openvino,
            "torch": _torch}


def measure_one(spec: dict) -> dict:
    """Seconds (min and median of ``runs``) of one op in one runtime; ``error`` when it cannot run."""
    try:
        call, sync = RUNTIMES[spec["runtime"]](spec["op"], spec["dtype"], tuple(spec["shape"]), spec["device"],
                                               spec["threads"])
        times = _timed(call, sync, spec["runs"])
    except NotImplementedError:
        return {**spec, "error": "not measured in this runtime"}
    except Exception as exc:  # noqa: BLE001 - the parent reports it beside the other rows
        return {**spec, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    ops = ops_of(spec["op"], spec["shape"])
    return {**spec, "ops": ops, "min_s": min(times), "median_s": statistics.median(times),
            "gops_best": ops / min(times) / 1e9, "gops_median": ops / statistics.median(times) / 1e9}


def _in_fresh_process(spec: dict, timeout: float) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    try:
        out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": f"exit {out.returncode}: {tail[:200]}"}


# --------------------------------------------------------------------------------------------
# the limits


def measure_limits(device: str = "cpu", threads: Optional[int] = None, runs: Optional[int] = None,
                   quick: bool = False, progress=print) -> dict:
    """Every (dtype, runtime, op, shape) of the plan in its own process; per dtype the best row.

    Returns ``{"device", "threads", "rows": [...], "limits": {dtype: {"gops", "gops_median", "by"}}}``."""
    threads = threads or len(os.sched_getaffinity(0))
    runs = runs or (10 if device == "cpu" else 20)
    plan = (QUICK_PLAN if quick else PLAN)[device]
    rows = []
    for dtype, by_runtime in plan.items():
        for runtime, ops in by_runtime.items():
            for op in ops:
                shapes = (GEMM_SHAPES if op == "gemm" else CONV_SHAPES)[device][: 1 if quick else None]
                for shape in shapes:
                    spec = {"runtime": runtime, "device": device, "dtype": dtype, "op": op, "shape": list(shape),
                            "threads": threads, "runs": runs}
                    row = _in_fresh_process(spec, timeout=600)
                    rows.append(row)
                    progress(_row_text(row))
    limits = {}
    for dtype in plan:
        # a request for a narrower type may run in a wider one (bf16 on a CPU without it runs in fp32):
        # its limit is never below the wider type's
        ok = [r for r in rows if r["dtype"] in (dtype, *WIDER.get(dtype, ())) and "error" not in r]
        if ok:
            best = max(ok, key=lambda r: r["gops_best"])
            limits[dtype] = {"gops": round(best["gops_best"], 1), "gops_median": round(best["gops_median"], 1),
                             "by": _row_name(best) + (f" in {best['dtype']}" if best["dtype"] != dtype else "")}
    return {"device": device, "threads": threads, "runs": runs, "rows": rows, "limits": limits}


def _row_name(row: dict) -> str:
    return f"{row['runtime']} {row['op']} {'x'.join(map(str, row['shape']))}"


def _row_text(row: dict) -> str:
    if "error" in row:
        return f"  {row['dtype']:5s} {_row_name(row):42s} -- {row['error']}"
    return (f"  {row['dtype']:5s} {_row_name(row):42s} min {row['min_s'] * 1e3:9.2f} ms  median "
            f"{row['median_s'] * 1e3:9.2f} ms  {row['gops_best']:9.1f} G{'OP' if row['dtype'] == 'int8' else 'FLOP'}/s")


def limits_markdown(result: dict) -> list[str]:
    """The limits table (best row per dtype) as Markdown lines."""
    lines = [f"Limits on {result['device']} ({result['threads']} threads; each row its own process, min and median "
             f"of {result['runs']} runs):", "", "| dtype | best G(FL)OP/s (min time) | at median time | measured by |",
             "|---|---|---|---|"]
    for dtype, lim in result["limits"].items():
        lines.append(f"| {dtype} | {lim['gops']:,.1f} | {lim['gops_median']:,.1f} | {lim['by']} |")
    return lines


def ratio_to_limit(ops: float, seconds: float, limit: dict, name: str = "") -> float:
    """Achieved rate over the limit; a ratio above 1 means the limit was not the machine's, and says so."""
    ratio = ops / seconds / 1e9 / limit["gops"]
    if ratio > 1.0:
        print(f"warning: {name or 'a path'} reached {100 * ratio:.0f} % of the measured limit ({limit['by']}): "
              "the limit understates this machine", file=sys.stderr)
    return ratio


def machine_record(device: str = "cpu") -> dict:
    """The machine a result belongs to: CPU identity and flags, cores, memory, GPU, runtime versions."""
    return machine.describe_machine(*RUNTIME_MODULES, device=device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    ap.add_argument("--threads", type=int, help="default: every usable CPU")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--quick", action="store_true", help="one runtime, one shape (a smoke run)")
    ap.add_argument("--out", type=Path, help="write .md and .json here (path without suffix)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(measure_one(json.loads(args.child))))
        return 0
    record = machine_record(args.device)
    if args.device == "gpu" and not record.get("gpus"):
        print("error: --device gpu: nvidia-smi lists no GPU here; nothing to measure", file=sys.stderr)
        return 2
    print(machine.one_line(record))
    result = measure_limits(args.device, args.threads, args.runs, args.quick)
    result["machine"] = record
    text = "\n".join([machine.one_line(record), ""] + limits_markdown(result)) + "\n"
    print("\n" + text)
    if args.out:
        machine.write_result(args.out, text, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
