#!/usr/bin/env python
"""How fast `w2sr predict` is on this CPU per inference path, against this CPU's own limits, and what
each path costs in accuracy. One run measures, in order:

1. the machine's matrix-multiply limit per data type (2 threads unless ``--threads``; best of 10):
   fp32 and bf16 with OpenVINO (a 2048^2 MatMul), int8 with ONNX Runtime's MatMulInteger;
2. every inference path (``w2sr.predict.paths``: onnx-fp32, openvino-fp32, openvino-bf16 where
   the CPU has native bf16, and what ``--runtime auto --precision auto`` picks) on the FULL generator
   (nb 23 / nf 64 / gc 32, random weights with non-zero biases so that convolution, bias and
   LeakyReLU fuse as in a trained model; exported once and cached in ``~/.cache/w2sr/bench``),
   through ``w2sr predict``'s own path (``Model.predict_slice``: its tiling, normalisation and
   runtime) on a 512^2 image; median of ``--repeats`` runs, the paths interleaved; seconds and the
   share of the matching limit (8.77 TFLOP per 512^2 input, counted from the network's convolutions);
3. accuracy on held-out data: PSNR against the SIM target of the demo bundle (trained; ``--demo``,
   default ``bundle``) on its held-out simulated FOVs, per path, minus the fp32 reference.

The last line is machine-readable::

    BENCH predict-full-512 fp32_s=<x> auto_s=<y> speedup=<x/y> auto_path=<name> dpsnr_db=<d> limit_ratio=<r>

(``limit_ratio``: the auto path's achieved FLOP/s over the limit of its data type.) 2048^2 images
are 16x the work of 512^2 (``--big`` adds one run of fp32 and auto at 2048^2; about 20 minutes here).

    .venv/bin/python benchmarks/bench_precision.py --out benchmarks/results/bench_precision
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import machine  # noqa: E402
from w2sr.core.cpu import cpu_flags, native_bf16  # noqa: E402

CACHE = Path.home() / ".cache" / "w2sr" / "bench"
log = logging.getLogger("bench_precision")


# --------------------------------------------------------------------------------------------
# limits


def _best(fn, n: int = 10) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_limits(threads: int, n: int = 2048) -> dict:
    """GFLOP/s (GOP/s for int8) of one n x n x n matrix product per data type."""
    import onnx
    import onnxruntime as ort
    import openvino as ov
    from onnx import TensorProto, helper

    ops = 2.0 * n ** 3
    limits = {}
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    param = ov.opset13.parameter([n, n], ov.Type.f32)
    const = ov.opset13.constant(np.random.default_rng(1).standard_normal((n, n)).astype(np.float32))
    model = ov.Model([ov.opset13.matmul(param, const, False, False)], [param])
    for dtype, hint in (("fp32", "f32"), ("bf16", "bf16")):
        req = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
        limits[dtype] = ops / _best(lambda: req.infer({0: a})) / 1e9
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "mm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [helper.make_tensor("b", TensorProto.INT8, [n, n],
                            np.random.default_rng(2).integers(-128, 127, (n, n), dtype=np.int8).tobytes(), raw=True)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                opts, providers=["CPUExecutionProvider"])
    a8 = np.random.default_rng(3).integers(0, 255, (n, n), dtype=np.uint8)
    limits["int8"] = ops / _best(lambda: sess.run(None, {"a": a8})) / 1e9
    del onnx
    return {k: round(v, 1) for k, v in limits.items()}


def network_flops(bundle: Path, side: int) -> float:
    """2 x multiply-adds of every convolution of the bundle's generator for a side x side input."""
    from training.models import load_generator

    model = load_generator(bundle / "generator.keras")
    total, scale = 0.0, 1
    for layer in model.layers:
        if "UpSampling" in type(layer).__name__:
            scale = 2
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and "Conv" in type(layer).__name__:
            kh, kw, cin, cout = kernel.shape
            total += 2.0 * (side * scale) ** 2 * kh * kw * cin * cout
    return total


# --------------------------------------------------------------------------------------------
# the full model


def full_bundle() -> Path:
    """Export the full generator (random weights, non-zero biases) once; cached."""
    bundle = CACHE / "full-bundle"
    if (bundle / "rdf.yaml").is_file():
        return bundle
    import keras

    from export.bundle import export_bundle
    from training.config import dump_config, load_config, packaged_config
    from training.models import build_generator

    run = CACHE / "full-run"
    run.mkdir(parents=True, exist_ok=True)
    cfg = load_config(packaged_config("w2s"))
    cfg.data.root = run / "no-data"  # the exporter simulates its sample image
    keras.utils.set_random_seed(0)
    model = build_generator(cfg.generator)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # zero biases would let grappler drop BiasAdd and skip the fusions
        weights = layer.get_weights()
        if len(weights) == 2:
            layer.set_weights([weights[0], rng.normal(0, 0.01, weights[1].shape).astype(np.float32)])
    model.save(run / "generator.keras")
    dump_config(cfg, run / "config.yaml")
    (run / "DONE").write_text("benchmark run (random weights)\n")
    log.info("exporting the full generator once (minutes) -> %s", bundle)
    export_bundle(run, bundle, name="bench-full", tile=512, bioimageio=False, measure=False, odd_sizes=())
    return bundle


def make_model(bundle: Path, runtime: str, precision: str, threads: int):
    from w2sr.predict.model import Model, Settings

    settings = Settings(bundle=str(bundle), runtime=runtime, precision=precision, threads=threads, progress=False)
    return Model.load(settings), settings


def time_paths(bundle: Path, paths: dict, side: int, repeats: int) -> dict:
    image = np.random.default_rng(0).gamma(4.0, 100.0, (side, side)).astype(np.float32)
    times = {name: [] for name in paths}
    for r in range(repeats):
        for name, (model, settings) in paths.items():
            t0 = time.perf_counter()
            model.predict_slice(image, settings)
            times[name].append(time.perf_counter() - t0)
            log.info("run %d/%d %s %dx%d: %.1f s", r + 1, repeats, name, side, side, times[name][-1])
    return {name: statistics.median(t) for name, t in times.items()}


# --------------------------------------------------------------------------------------------
# accuracy on held-out data


def held_out_psnr(demo: Path, paths: list[str], threads: int) -> dict:
    """Mean PSNR vs the SIM target over the demo's held-out FOVs, per path."""
    import yaml

    from training import metrics
    from training.data.layouts import load_pairs

    cfg = yaml.safe_load((demo / "training_config.yaml").read_text())
    data = cfg["data"]
    root = Path(data["root"]) if Path(data["root"]).is_absolute() else ROOT / data["root"]
    pairs = load_pairs(root, data.get("layout", "auto"), data["noise_level"], data["channels"], data["test_fovs"],
                       progress=False, npy_as_counts=data.get("npy_as_counts", True))
    out = {}
    for path in paths:
        runtime, precision = path.split("-")
        model, settings = make_model(demo, runtime, precision, threads)
        norm = model.info.normalization
        scores = [metrics.psnr(model.predict_slice(p.lr, settings), norm.reference(p.hr)) for p in pairs]
        out[path] = float(np.mean(scores))
    return {"n_images": len(pairs), "psnr": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--demo", type=Path, default=ROOT / "bundle", help="a trained bundle (held-out accuracy)")
    ap.add_argument("--big", action="store_true", help="also one run of fp32 and auto at 2048^2")
    ap.add_argument("--out", type=Path, help="write .md and .json here (path without suffix)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    result = {"machine": machine.describe_machine("numpy", "onnxruntime", "openvino", "tensorflow"),
              "cpu_bf16": native_bf16(cpu_flags()), "threads": args.threads}
    log.info("GEMM limits ...")
    limits = result["limits_gops"] = gemm_limits(args.threads)
    bundle = full_bundle()
    flops = network_flops(bundle, 512)
    result["tflop_per_512"] = round(flops / 1e12, 3)

    paths = {"onnx-fp32": make_model(bundle, "onnx", "fp32", args.threads),
             "openvino-fp32": make_model(bundle, "openvino", "fp32", args.threads)}
    if result["cpu_bf16"]:
        paths["openvino-bf16"] = make_model(bundle, "openvino", "bf16", args.threads)
    auto_model, auto_settings = make_model(bundle, "auto", "auto", args.threads)
    auto_path = auto_model.name
    paths["auto"] = (auto_model, auto_settings)
    seconds = time_paths(bundle, paths, 512, args.repeats)
    accuracy = held_out_psnr(args.demo, [p for p in paths if p != "auto"], args.threads) if args.demo.is_dir() else None
    result.update(seconds_512=seconds, auto_path=auto_path, held_out=accuracy)
    if args.big:
        result["seconds_2048"] = time_paths(bundle, {k: paths[k] for k in ("onnx-fp32", "auto")}, 2048, 1)

    def dtype(path):
        return "bf16" if path.endswith("bf16") else "fp32"

    rows = ["| path | s (512^2, median of %d) | GFLOP/s | %% of %s limit | held-out PSNR loss vs fp32 (dB) |" % (
        args.repeats, "its dtype's"), "|---|---|---|---|---|"]
    fp32_psnr = accuracy["psnr"]["onnx-fp32"] if accuracy else None
    for name, s in seconds.items():
        p = auto_path if name == "auto" else name
        rate = flops / s / 1e9
        loss = f"{fp32_psnr - accuracy['psnr'][p]:+.3f}" if accuracy and p in accuracy["psnr"] else "-"
        rows.append(f"| {name}{' (' + auto_path + ')' if name == 'auto' else ''} | {s:.1f} | {rate:.0f} | "
                    f"{100 * rate / limits[dtype(p)]:.0f} % | {loss} |")
    m = result["machine"]
    md = ["# w2sr predict per inference path: full generator, 512 x 512", "",
          f"Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB, load {m['load_average']}; "
          f"native bf16: {result['cpu_bf16'] or 'no'}; {args.threads} threads.", "",
          "GEMM limits (best of 10, 2048^3): " + ", ".join(f"{k} {v:,.0f} G{'OP' if k == 'int8' else 'FLOP'}/s"
                                                          for k, v in limits.items())
          + f"; the network: {result['tflop_per_512']} TFLOP per 512^2 input.", ""] + rows
    if accuracy:
        md += ["", f"Held-out accuracy: {args.demo} on {accuracy['n_images']} held-out FOVs, mean PSNR vs the SIM "
                   f"target: " + ", ".join(f"{k} {v:.3f} dB" for k, v in accuracy["psnr"].items())]
    if "seconds_2048" in result:
        md += ["", "2048^2, one run: " + ", ".join(f"{k} {v:.0f} s" for k, v in result["seconds_2048"].items())]
    fp32_s, auto_s = seconds["onnx-fp32"], seconds["auto"]
    dpsnr = (fp32_psnr - accuracy["psnr"][auto_path]) if accuracy and auto_path in accuracy["psnr"] else float("nan")
    bench = (f"BENCH predict-full-512 fp32_s={fp32_s:.1f} auto_s={auto_s:.1f} speedup={fp32_s / auto_s:.2f} "
             f"auto_path={auto_path} dpsnr_db={dpsnr:.3f} limit_ratio={flops / auto_s / 1e9 / limits[dtype(auto_path)]:.2f}")
    text = "\n".join(md) + "\n\n" + bench + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
