#!/usr/bin/env python
"""Every GPU mode of the bundle's runtimes: its deviation from the CPU reference and its speed per
image size, beside the card's own limit per data type measured in the same run.

Modes (``export.runtimes``): the parity rows in strict fp32 (TensorFlow with TF32 off, ONNX Runtime
CUDA with ``use_tf32=0``) and the fast rows (TF32 in each runtime, bf16 and fp16 through Keras mixed
precision). Each mode runs the whole image (batch 1) through the runtime the bundle's weights load
in; ``--repeats`` timed runs after one warm-up, min and median printed. Deviation: against ONNX
Runtime fp32 on the CPU (the project's reference) at the ``--parity-sizes``: PSNR (peak = the
reference's range) and the fraction of pixels outside the zoo tolerance. The limit per data type is
``benchmarks/limits.py`` on the GPU; each mode's rate is counted on the exported graph (its
in-graph padding included).

``--device cpu`` runs the same script on the CPU (the CPU's fast modes, bf16 and fp16 in Keras): a
dry run where there is no GPU. The last line is machine-readable::

    BENCH gpu-<model>-<size> fp32_s=<x> tf32_s=<y> bf16_s=<z> fp16_s=<w> best_ratio=<r>

    .venv/bin/python benchmarks/bench_gpu.py --model full --sizes 512 2048 --out benchmarks/results/bench_gpu
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import limits as machine_limits  # noqa: E402  (benchmarks/limits.py)
import machine  # noqa: E402  (benchmarks/machine.py)
import workloads  # noqa: E402  (benchmarks/workloads.py)

log = logging.getLogger("bench_gpu")
REFERENCE = "onnx-cpu"


@dataclass
class ModeResult:
    key: str
    label: str
    math: str
    status: str = "measured"     # measured | skipped | failed
    reason: str = ""
    min_s: dict = field(default_factory=dict)       # side -> seconds
    median_s: dict = field(default_factory=dict)
    deviation: dict = field(default_factory=dict)   # side -> {psnr_db, outside, max_abs_diff}
    peak_mib: dict = field(default_factory=dict)    # side -> TensorFlow's peak GPU memory, where known


def modes(device: str) -> list:
    """The parity rows and fast rows of ``device``, as ``export.runtimes.RuntimeRow``s."""
    from export.runtimes import available_runtimes, fast_runtimes

    return [r for r in available_runtimes() if r.device == device] + fast_runtimes(device)


def tf_gpu_peak_mib(reset: bool = False) -> Optional[float]:
    """TensorFlow's peak GPU memory since the last reset (None without a TensorFlow GPU)."""
    try:
        import tensorflow as tf

        if not tf.config.list_physical_devices("GPU"):
            return None
        if reset:
            tf.config.experimental.reset_memory_stats("GPU:0")
            return None
        return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    except Exception:  # noqa: BLE001 - memory statistics are a bonus
        return None


def run_mode(row, info, images: dict, references: dict, repeats: int) -> ModeResult:
    from export.parity import Deviation, _row_label
    from export.runtimes import make_runtime

    result = ModeResult(row.key, _row_label(row), row.math)
    if not row.available:
        result.status, result.reason = "skipped", row.reason
        return result
    try:
        rt = make_runtime(row.key, keras_path=info.keras_path or info.root / "generator.keras",
                          savedmodel=info.savedmodel_zip, onnx_path=info.onnx_path, padding=info.padding,
                          scale=info.scale)
        for side, x in images.items():
            tf_gpu_peak_mib(reset=True)
            out = rt.predict(x)  # warm-up (graph build, cuDNN autotune)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = rt.predict(x)
                times.append(time.perf_counter() - t0)
            result.min_s[side], result.median_s[side] = min(times), statistics.median(times)
            peak = tf_gpu_peak_mib()
            if peak is not None and row.format != "onnx":
                result.peak_mib[side] = round(peak)
            if side in references:
                result.deviation[side] = asdict(Deviation.of(info.normalization.output(out), references[side]))
            log.info("%s %dx%d: min %.3f s, median %.3f s", row.key, side, side, result.min_s[side],
                     result.median_s[side])
    except Exception as exc:  # noqa: BLE001 - one mode failing is a row, not the end of the run
        result.status, result.reason = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    ap.add_argument("--model", default="full", help="'full' (random weights, exported once and cached) or a bundle folder")
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    ap.add_argument("--parity-sizes", type=int, nargs="*", help="sizes compared with the CPU reference (default: the smallest)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick-limits", action="store_true", help="one runtime and shape per limit (a smoke run)")
    ap.add_argument("--out", type=Path, help="write .md and .json here (path without suffix)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    record = machine.describe_machine(*machine_limits.RUNTIME_MODULES, device=args.device)
    if args.device == "gpu" and not record["gpus"]:
        print("error: --device gpu: nvidia-smi lists no GPU on this machine; nothing to measure "
              "(--device cpu runs the same benchmark on the CPU)", file=sys.stderr)
        return 2
    print(machine.one_line(record))

    from w2sr.bundle.reader import read_bundle
    from w2sr.bundle.runtimes import OnnxRuntime

    bundle = workloads.full_bundle() if args.model == "full" else Path(args.model)
    info = read_bundle(bundle)
    sides = sorted({info.valid_size_at_least(s) for s in args.sizes})
    parity_sides = sorted({info.valid_size_at_least(s) for s in (args.parity_sizes or sides[:1])} & set(sides))
    images = {s: info.normalization.input(workloads.test_image(s))[None, :, :, None] for s in sides}
    log.info("CPU reference (%s) at %s ...", REFERENCE, parity_sides)
    reference_rt = OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"])
    references = {s: info.normalization.output(reference_rt.predict(images[s])) for s in parity_sides}
    del reference_rt

    log.info("limits of this %s ...", args.device)
    lim = machine_limits.measure_limits(args.device, quick=args.quick_limits, progress=log.info)
    flops = {s: workloads.graph_flops(info.onnx_path, s, s) for s in sides}
    results = [run_mode(row, info, images, references, args.repeats) for row in modes(args.device)]

    md = [machine.one_line(record), "", f"Model: {bundle} ({flops[sides[0]] / 1e12:.3f} TFLOP per {sides[0]}^2 on the "
          "exported graph, padding included)", ""] + machine_limits.limits_markdown(lim) + [""]
    md += [f"| mode | size | s (min / median of {args.repeats}) | TFLOP/s | % of its dtype's limit | peak GPU MiB | "
           f"vs CPU reference (PSNR, px outside zoo tolerance, max diff) |", "|---|---|---|---|---|---|---|"]
    best_ratio = 0.0
    for r in results:
        if r.status != "measured":
            md.append(f"| {r.label} | - | {r.status}: {r.reason} | | | | |")
            continue
        limit = lim["limits"].get(r.math)
        for s in sides:
            rate = flops[s] / r.min_s[s]
            ratio = machine_limits.ratio_to_limit(flops[s], r.min_s[s], limit, r.key) if limit else None
            best_ratio = max(best_ratio, ratio or 0.0)
            dev = r.deviation.get(s)
            dev_cell = (f"{dev['psnr_db']:.1f} dB, {dev['outside']:.2%}, {dev['max_abs_diff']:.1e}" if dev else "-")
            md.append(f"| {r.label} | {s}^2 | {r.min_s[s]:.3f} / {r.median_s[s]:.3f} | {rate / 1e12:.2f} | "
                      f"{f'{100 * ratio:.0f} %' if ratio else '-'} | {r.peak_mib.get(s, '-')} | {dev_cell} |")

    def fastest(math: str, side: int) -> str:
        times = [r.min_s[side] for r in results if r.status == "measured" and r.math == math and side in r.min_s]
        return f"{min(times):.3f}" if times else "nan"

    name = "full" if args.model == "full" else Path(args.model).name
    bench = (f"BENCH gpu-{name}-{sides[0]} device={args.device} " + " ".join(
        f"{m}_s={fastest(m, sides[0])}" for m in ("fp32", "tf32", "bf16", "fp16")) + f" best_ratio={best_ratio:.2f}")
    text = "\n".join(md) + "\n\n" + bench + "\n"
    print("\n" + text)
    if args.out:
        machine.write_result(args.out, text, {"machine": record, "limits": lim, "sizes": sides,
                                              "flops": flops, "modes": [asdict(r) for r in results]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
