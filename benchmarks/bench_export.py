#!/usr/bin/env python
"""Benchmark the exporter: export time, bundle sizes, and per-runtime inference on a 512 x 512 image.

For each model (``demo``: training/configs/demo.yaml generator; ``full``: w2s.yaml, nb 23 / nf 64 /
gc 32, 16.6 M parameters), a generator with RANDOM weights (seed 0; costs the same as trained ones)
is saved as a run folder (normalisation of z-scored data, see W2S_NORM), then:

1. weights only: freeze + SavedModel zip, and tf2onnx -> ONNX, timed in this process;
2. the whole ``export_bundle`` (halo measurement, test tensors, ``bioimageio test`` of the 0.4.10 rdf
   and the 0.5 package, parity matrix, odd-size check, packages), timed; file sizes recorded;
3. inference on one 512 x 512 image for Keras, the SavedModel (TF2 signature) and ONNX Runtime,
   each in its own fresh subprocess (``export.runtimes.measure_in_subprocess``): load time, first
   call, median of ``--repeats`` further calls, and the process's peak RSS (VmHWM; TensorFlow / ONNX
   Runtime included) next to its RSS after the imports.

The full model takes ~45 s per 512^2 image per runtime on the 2-core machine and its whole export
several minutes, so its defaults are fewer repeats (``--full-repeats``) and ``--full-export``
``quick`` (weights + halo + parity, no ``bioimageio test``; say ``full`` to include it).

    .venv/bin/python benchmarks/bench_export.py                     # demo and full
    .venv/bin/python benchmarks/bench_export.py --models demo --repeats 5
    .venv/bin/python benchmarks/bench_export.py --full-export full --full-repeats 3

Writes a Markdown table to stdout and ``--out`` (.md and .json side by side); the figures of the
last run here are in benchmarks/results/bench_export_{demo,full}.md.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402  (benchmarks/machine.py)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = {"demo": "demo", "full": "w2s"}
#: statistics of z-scored data (like W2S's normalised npy release). With raw-ADU statistics
#: (std ~66) a RANDOM full model has many outputs near 0 ADU, where float32 noise (~1e-5 in network
#: units, x66) exceeds the zoo's absolute tolerance 1.5e-4 and the export is (rightly) refused.
W2S_NORM = dict(input_mean=0.0, input_std=1.0, target_mean=0.1, target_std=1.1)


def describe_machine() -> dict:
    return machine.describe_machine("numpy", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime")


def make_run(kind: str, folder: Path) -> Path:
    import keras

    from training.config import NormalizationConfig, dump_config, load_config, packaged_config
    from training.models import build_generator

    cfg = load_config(packaged_config(CONFIGS[kind]))
    cfg.data.root = folder / "no-data"  # the exporter then simulates its sample image
    cfg.normalization = NormalizationConfig(**W2S_NORM)
    keras.utils.set_random_seed(0)
    model = build_generator(cfg.generator)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "generator.keras")
    dump_config(cfg, folder / "config.yaml")
    (folder / "DONE").write_text("benchmark run (random weights)\n")
    return folder


def bench_model(kind: str, work: Path, repeats: int, export_mode: str, size: int, threads) -> dict:
    from export.bundle import export_bundle
    from export.onnx_export import export_onnx
    from export.runtimes import measure_in_subprocess
    from export.savedmodel import export_savedmodel
    from training.models import load_generator

    run = make_run(kind, work / f"run-{kind}")
    model = load_generator(run / "generator.keras")
    row: dict = {"model": kind, "params": int(model.count_params()), "export_mode": export_mode}

    t0 = time.perf_counter()
    sm = export_savedmodel(model, work / f"{kind}-weights" / "tf_saved_model.zip")
    row["savedmodel_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    on = export_onnx(sm.zip_path, work / f"{kind}-weights" / "weights.onnx")
    row["onnx_s"] = round(time.perf_counter() - t0, 2)
    del model

    t0 = time.perf_counter()
    quick = export_mode == "quick"
    bundle = export_bundle(run, work / f"bundle-{kind}", name=f"bench-{kind}", bioimageio=not quick,
                           measure=not quick)
    row["export_bundle_s"] = round(time.perf_counter() - t0, 1)
    sizes = {p.relative_to(bundle).as_posix(): p.stat().st_size for p in bundle.rglob("*") if p.is_file()}
    row["sizes_mb"] = {k: round(v / 1e6, 2) for k, v in sorted(sizes.items())
                       if k in ("tf_saved_model.zip", "weights.onnx", "generator.keras")
                       or k.startswith("packages/") and k.endswith(".zip")}
    row["bundle_total_mb"] = round(sum(sizes.values()) / 1e6, 2)
    import yaml

    doc = yaml.safe_load((bundle / "rdf.yaml").read_text())
    row["halo"] = doc["config"]["w2sr"]["halo"]["halo"]
    row["min_size"] = doc["inputs"][0]["shape"]["min"][1]

    row["inference"] = {}
    for runtime, path in (("keras", bundle / "generator.keras"), ("savedmodel", bundle / "tf_saved_model.zip"),
                          ("onnx", bundle / "weights.onnx")):
        print(f"  {kind}: {runtime} on {size}x{size}, {repeats} repeats ...", flush=True)
        m = measure_in_subprocess(runtime, path, size=size, repeats=repeats, threads=threads, timeout=7200)
        row["inference"][runtime] = {
            "load_s": round(m.load_s, 2), "first_s": round(m.first_s, 2), "median_s": round(m.median_s, 3),
            "times_s": [round(t, 3) for t in m.times_s], "peak_rss_mib": round(m.peak_rss_mb, 1),
            "rss_after_imports_mib": round(m.baseline_rss_mb, 1), "name": m.name}
    return row


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# Export benchmark ({time.strftime('%Y-%m-%d %H:%M', time.localtime(result['started']))})", "",
             f"Machine: {m['cpu']}, {m['cpus_usable']} usable CPUs, {m['memory_gib']} GiB RAM, {m['gpu']}; "
             f"load average at start {m['load_average']} (the CPUs are shared: timings are noisy). "
             f"Python {m['python']}, TensorFlow {m['tensorflow']}, Keras {m['keras']}, tf2onnx {m['tf2onnx']}, "
             f"ONNX Runtime {m['onnxruntime']}. Random weights (seed 0), z-scored normalisation.", "",
             "## Export", "",
             "| model | params | SavedModel (freeze+zip) s | ONNX (tf2onnx) s | export_bundle s | mode | halo | "
             "tf_saved_model.zip MB | weights.onnx MB | generator.keras MB | deepimagej zip MB | zoo-0.5 zip MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        s = r["sizes_mb"]
        dij = next((v for k, v in s.items() if k.endswith("_deepimagej.zip")), None)
        zoo = next((v for k, v in s.items() if k.endswith("_zoo-0.5.zip")), None)
        lines.append(f"| {r['model']} | {r['params']:,} | {r['savedmodel_s']} | {r['onnx_s']} | {r['export_bundle_s']} | "
                     f"{r['export_mode']} | {r['halo']} | {s.get('tf_saved_model.zip')} | {s.get('weights.onnx')} | "
                     f"{s.get('generator.keras')} | {dij} | {zoo} |")
    lines += ["", f"## Inference, one {result['size']} x {result['size']} image (each runtime in its own process)", "",
              "| model | runtime | load s | first call s | median s (runs) | peak RSS MiB | RSS after imports MiB |",
              "|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        for rt, v in r["inference"].items():
            lines.append(f"| {r['model']} | {v['name']} | {v['load_s']} | {v['first_s']} | {v['median_s']} "
                         f"({len(v['times_s'])}) | {v['peak_rss_mib']} | {v['rss_after_imports_mib']} |")
    lines += ["", "export_bundle 'full' = everything `w2sr export` does (bioimageio test of the 0.4.10 rdf and of "
              "the 0.5 package included); 'quick' = the same without bioimageio test and the subprocess timing."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="demo,full", help="comma-separated: demo, full")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls after the first, demo model")
    ap.add_argument("--full-repeats", type=int, default=2, help="timed calls after the first, full model")
    ap.add_argument("--demo-export", choices=["full", "quick"], default="full")
    ap.add_argument("--full-export", choices=["full", "quick"], default="quick")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads per runtime (default: all)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_export")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("tensorflow", "absl", "tf2onnx", "h5py", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = {"started": time.time(), "machine": describe_machine(), "size": args.size, "models": []}
    with tempfile.TemporaryDirectory(prefix="w2sr-bench-export-") as tmp:
        for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
            if kind not in CONFIGS:
                ap.error(f"unknown model {kind!r}")
            print(f"== {kind} ==", flush=True)
            result["models"].append(bench_model(
                kind, Path(tmp), args.full_repeats if kind == "full" else args.repeats,
                args.full_export if kind == "full" else args.demo_export, args.size, args.threads))
    md = to_markdown(result)
    print(md)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(md)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out.with_suffix('.md')}, {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
