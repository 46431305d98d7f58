#!/usr/bin/env python
"""How fast `w2sr predict` is on this CPU per inference path, against this CPU's own limits, and what
each path costs in accuracy. One run measures, in order:

1. the machine's limit per data type (``benchmarks/limits.py``: the best of numpy, TensorFlow, ONNX
   Runtime and OpenVINO over GEMM and convolution shapes, each in a fresh process, min of 10 runs);
2. every inference path (``w2sr.predict.paths``: onnx-fp32, openvino-fp32, openvino-bf16 where
   the CPU has native bf16, and what ``--runtime auto --precision auto`` picks) on the FULL generator
   (nb 23 / nf 64 / gc 32, random weights with non-zero biases so that convolution, bias and
   LeakyReLU fuse as in a trained model; exported once and cached in ``~/.cache/w2sr/bench``),
   through ``w2sr predict``'s own path (``Model.predict_slice``: its tiling, normalisation and
   runtime) on a 512^2 image; min and median of ``--repeats`` runs, the paths interleaved; seconds
   and the share of the matching limit (9.39 TFLOP per 512^2 input, counted on the exported graph
   with its in-graph padding; the Keras network alone is 8.77);
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
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import limits as machine_limits  # noqa: E402  (benchmarks/limits.py)
import machine  # noqa: E402
import workloads  # noqa: E402
from w2sr.core.cpu import cpu_flags, native_bf16  # noqa: E402

log = logging.getLogger("bench_precision")


def make_model(bundle: Path, runtime: str, precision: str, threads: int):
    from w2sr.predict.model import Model, Settings

    settings = Settings(bundle=str(bundle), runtime=runtime, precision=precision, threads=threads, progress=False)
    return Model.load(settings), settings


def time_paths(bundle: Path, paths: dict, side: int, repeats: int) -> dict:
    """{path: {"min": s, "median": s}}: the paths interleaved, one warm-up call each first."""
    image = workloads.test_image(side)
    for model, settings in paths.values():
        model.predict_slice(image, settings)
    times = {name: [] for name in paths}
    for r in range(repeats):
        for name, (model, settings) in paths.items():
            t0 = time.perf_counter()
            model.predict_slice(image, settings)
            times[name].append(time.perf_counter() - t0)
            log.info("run %d/%d %s %dx%d: %.1f s", r + 1, repeats, name, side, side, times[name][-1])
    return {name: {"min": min(t), "median": statistics.median(t)} for name, t in times.items()}


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
    ap.add_argument("--full-bundle", type=Path, default=None,
                    help="the full generator's bundle (default: exported once and cached by benchmarks/workloads.py)")
    ap.add_argument("--quick-limits", action="store_true", help="one runtime and shape per limit (a smoke run)")
    ap.add_argument("--out", type=Path, help="write .md and .json here (path without suffix)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    record = machine_limits.machine_record("cpu")
    result = {"machine": record, "cpu_bf16": native_bf16(cpu_flags()), "threads": args.threads}
    log.info("limits of this machine (each in a fresh process) ...")
    lim = result["limits"] = machine_limits.measure_limits("cpu", args.threads, quick=args.quick_limits,
                                                           progress=log.info)
    bundle = args.full_bundle or workloads.full_bundle()
    flops = workloads.graph_flops(bundle / "weights.onnx", 512, 512)
    result["tflop_per_512"] = {"exported_graph": round(flops / 1e12, 3),
                               "keras_model": round(workloads.keras_flops(bundle / "generator.keras", 512) / 1e12, 3)}

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

    def limit_of(path):
        dtype = "bf16" if path.endswith("bf16") else "fp32"
        return lim["limits"].get(dtype) or lim["limits"]["fp32"]

    rows = [f"| path | s (512^2, min / median of {args.repeats}) | GFLOP/s (min) | % of its dtype's limit | "
            "held-out PSNR loss vs fp32 (dB) |", "|---|---|---|---|---|"]
    fp32_psnr = accuracy["psnr"]["onnx-fp32"] if accuracy else None
    ratios = {}
    for name, s in seconds.items():
        p = auto_path if name == "auto" else name
        rate = flops / s["min"] / 1e9
        ratios[name] = machine_limits.ratio_to_limit(flops, s["min"], limit_of(p), name)
        loss = f"{fp32_psnr - accuracy['psnr'][p]:+.3f}" if accuracy and p in accuracy["psnr"] else "-"
        rows.append(f"| {name}{' (' + auto_path + ')' if name == 'auto' else ''} | {s['min']:.1f} / {s['median']:.1f} | "
                    f"{rate:.0f} | {100 * ratios[name]:.0f} % | {loss} |")
    md = ["# w2sr predict per inference path: full generator, 512 x 512", "", machine.one_line(record),
          f"native bf16: {result['cpu_bf16'] or 'no'}; {args.threads} threads.", ""]
    md += machine_limits.limits_markdown(lim)
    md += ["", f"The network: {result['tflop_per_512']['exported_graph']} TFLOP per 512^2 input on the exported "
               f"graph (in-graph padding included; the Keras model alone: {result['tflop_per_512']['keras_model']})."
               " Rates use the exported graph's count and the minimum time.", ""] + rows
    if accuracy:
        md += ["", f"Held-out accuracy: {args.demo} on {accuracy['n_images']} held-out FOVs, mean PSNR vs the SIM "
                   f"target: " + ", ".join(f"{k} {v:.3f} dB" for k, v in accuracy["psnr"].items())]
    if "seconds_2048" in result:
        md += ["", "2048^2, one run: " + ", ".join(f"{k} {v['min']:.0f} s" for k, v in result["seconds_2048"].items())]
    fp32_s, auto_s = seconds["onnx-fp32"]["min"], seconds["auto"]["min"]
    dpsnr = (fp32_psnr - accuracy["psnr"][auto_path]) if accuracy and auto_path in accuracy["psnr"] else float("nan")
    bench = (f"BENCH predict-full-512 fp32_s={fp32_s:.1f} auto_s={auto_s:.1f} speedup={fp32_s / auto_s:.2f} "
             f"auto_path={auto_path} dpsnr_db={dpsnr:.3f} limit_ratio={ratios['auto']:.2f}")
    text = "\n".join(md) + "\n\n" + bench + "\n"
    print(text)
    if args.out:
        machine.write_result(args.out, text, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
