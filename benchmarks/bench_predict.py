#!/usr/bin/env python
"""Benchmark ``w2sr predict``: time and peak memory per image, by size, runtime and model.

Each (model, runtime, size) is measured in a fresh subprocess so that its peak RSS (``VmHWM``)
belongs to that measurement alone. In the subprocess: write a random uint16 TIFF of size x size,
load the bundle, then predict the file ``--repeats`` times through ``w2sr.predict.job.predict_file``
(read + normalise + tiles + stitch + atomic TIFF write: what a user waits for). Reported: median
seconds per image, seconds per input megapixel, peak RSS, RSS after loading the model, tiles per
image, and how the time grows from one size to the next (4x the pixels each step).

Models: ``demo`` (training/configs/demo.yaml generator) and ``full`` (w2s.yaml: nb 23, nf 64, gc 32).
Give a built bundle with ``--bundle demo=PATH --bundle full=PATH``; otherwise a bundle is built
from a freshly initialised (random) generator: for the demo model by ``export.bundle.export_bundle``
(halo measured), for the full model by the exporter's SavedModel + ONNX conversion only
(``export.savedmodel`` / ``export.onnx_export``, in-graph padding = ``--halo``, default 32 px) with
the exporter's own rdf (``export.rdf.build_rdf``), because the exporter's parity checks take many
minutes on the full model (``--build`` chooses).
Random weights cost the same time as trained ones; the halo only changes the tile overlap.

The full model takes about 45 s per 512^2 image on the 2-core machine, so by default it is measured
at 512 only, once (``--full-sizes``, ``--full-repeats`` for more).

    .venv/bin/python benchmarks/bench_predict.py                       # demo: 512..4096, onnx + tf; full: 512
    .venv/bin/python benchmarks/bench_predict.py --models demo --sizes 512,1024 --runtimes onnx
    .venv/bin/python benchmarks/bench_predict.py --bundle demo=bundle/ --full-sizes 512,1024

Results: a Markdown table on stdout and ``--out`` (.md and .json side by side).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import limits as machine_limits  # noqa: E402  (benchmarks/limits.py)
import machine  # noqa: E402  (benchmarks/machine.py)
import workloads  # noqa: E402  (benchmarks/workloads.py)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"demo": "demo", "full": "w2s"}


# ------------------------------------------------------------------------------------------------
# the child: one measurement
# ------------------------------------------------------------------------------------------------
def _rss_mib() -> float:
    """Peak RSS of this process image, MiB (the project's one VmHWM reader)."""
    from export.runtimes import peak_rss_mb

    return peak_rss_mb()


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import tifffile

    from w2sr.predict.job import predict_file
    from w2sr.predict.model import Model, Settings
    from w2sr.core.tiling import balanced_tile, count_tiles

    work = Path(args.workdir)
    src = work / f"in_{args.size}.tif"
    if not src.exists():
        rng = np.random.default_rng(0)
        img = rng.integers(0, 4000, size=(args.size, args.size), dtype=np.uint16)
        tifffile.imwrite(src, img)
        del img
    rss_start = _rss_mib()
    settings = Settings(bundle=args.bundle, runtime=args.runtime, threads=args.threads, tile=args.tile,
                        batch=1, fmt="float32", overwrite=True, progress=False)
    t0 = time.perf_counter()
    model = Model.load(settings)
    load_s = time.perf_counter() - t0
    rss_loaded = _rss_mib()
    info = model.info
    tile = balanced_tile((args.size, args.size), args.tile, info.halo, info.valid_size_at_least)  # as predict does
    times = []
    out = work / f"out_{args.runtime}_{args.size}" / "img_sr.tif"
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        predict_file(src, out, model, settings)
        times.append(time.perf_counter() - t0)
    print(json.dumps({
        "times_s": times, "load_s": load_s, "rss_start_mib": rss_start, "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": _rss_mib(), "halo": info.halo,
        "tile": "x".join(map(str, tile)),
        "tiles": count_tiles((args.size, args.size), tile, info.halo, info.valid_size_at_least),
    }))


# ------------------------------------------------------------------------------------------------
# building a bundle from a random generator
# ------------------------------------------------------------------------------------------------
def build_with_exporter(kind: str, root: Path, halo) -> Path:
    """The real exporter (export.bundle.export_bundle) on a random generator saved as a run folder.

    ``halo=None`` lets the exporter measure it (quick for the demo model, minutes for the full one).
    bioimageio test and the exporter's own timing are skipped: this is only the model to time.
    """
    from export.bundle import export_bundle
    from training.config import dump_config, load_config, packaged_config
    from training.models import build_generator

    if (root / "rdf.yaml").exists():
        return root
    cfg = load_config(packaged_config(CONFIGS[kind]))
    cfg.normalization.input_mean, cfg.normalization.input_std = 2000.0, 1000.0
    cfg.normalization.target_mean, cfg.normalization.target_std = 2000.0, 1000.0
    run = root.parent / f"run_{kind}"
    run.mkdir(parents=True, exist_ok=True)
    model = build_generator(cfg.generator)
    model.save(run / "generator.keras")
    dump_config(cfg, run / "config.yaml")
    (run / "DONE").write_text("random weights for the benchmark\n")
    print(f"[build] {kind}: random RRDBNet nb={cfg.generator.nb} nf={cfg.generator.nf} gc={cfg.generator.gc}, "
          f"{model.count_params():,} parameters -> export_bundle -> {root}", flush=True)
    export_bundle(run, root, name=f"bench-random-{kind}", halo=halo, bioimageio=False, measure=False)
    return root


def build_random_bundle(kind: str, root: Path, halo: int) -> Path:
    """A bundle around a freshly initialised generator, without the exporter's checks: the SavedModel
    with the exporter's in-graph padding (``halo`` px, as ``export.bundle`` writes it before any growth
    its parity checks may ask for), its ONNX conversion, test tensors (a random tile in camera counts
    and the ONNX output on it: the accuracy guard of ``w2sr predict`` checks faster paths on them) and
    the rdf of the exporter's own builder (``export.rdf.build_rdf``)."""
    import datetime as _dt

    import numpy as np

    from export.onnx_export import export_onnx
    from export.rdf import RdfParams, build_rdf, write_rdf
    from export.savedmodel import export_savedmodel
    from training.config import load_config, packaged_config
    from training.models import build_generator
    from w2sr.bundle.reader import sha256_file
    from w2sr.bundle.runtimes import OnnxRuntime
    from w2sr.core.contract import ONNX_WEIGHTS, RDF, SAVEDMODEL_ZIP, TEST_INPUT, TEST_OUTPUT, deepimagej_tile
    from w2sr.core.normalization import Normalization

    root.mkdir(parents=True, exist_ok=True)
    if (root / RDF).exists():
        return root
    cfg = load_config(packaged_config(CONFIGS[kind]))
    model = build_generator(cfg.generator)
    print(f"[build] {kind}: random RRDBNet nb={cfg.generator.nb} nf={cfg.generator.nf} "
          f"gc={cfg.generator.gc}, {model.count_params():,} parameters -> {root}", flush=True)
    export_savedmodel(model, root / SAVEDMODEL_ZIP, source=f"random {kind} generator", padding=halo)
    export_onnx(root / SAVEDMODEL_ZIP, root / ONNX_WEIGHTS)
    # the normalisation build_with_exporter gives the same random generators
    norm = Normalization(mode="fixed", input_mean=2000.0, input_std=1000.0, target_mean=2000.0, target_std=1000.0)
    tile = deepimagej_tile(halo)
    raw = np.random.default_rng(0).integers(0, 4000, size=(tile, tile)).astype(np.float32)
    y = OnnxRuntime(root / ONNX_WEIGHTS).predict(norm.input(raw)[None, :, :, None])
    np.save(root / TEST_INPUT, raw[None, :, :, None])
    np.save(root / TEST_OUTPUT, norm.output(y).astype(np.float32))
    params = RdfParams(
        name=f"bench-random-{kind}", normalization=norm, halo=halo, tile=tile, padding=halo,
        any_size_from=max(1, halo), savedmodel_sha256=sha256_file(root / SAVEDMODEL_ZIP),
        onnx_sha256=sha256_file(root / ONNX_WEIGHTS),
        timestamp=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        description=f"Random-weight {kind} generator for benchmarks/bench_predict.py (not a trained model).",
        w2sr={"benchmark": f"random {CONFIGS[kind]}.yaml generator, halo {halo} px given, not measured"},
    )
    write_rdf(build_rdf(params), root / RDF)
    return root


# ------------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------------
def describe_machine() -> dict:
    return machine_limits.machine_record("cpu")


def measure(bundle: Path, runtime: str, size: int, repeats: int, tile: int, threads, workdir: Path,
            timeout: int) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--bundle-path", str(bundle),
           "--runtime", runtime, "--size", str(size), "--repeats", str(repeats), "--tile", str(tile),
           "--workdir", str(workdir)]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}",
                "wall_s": time.perf_counter() - t0}
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    m["median_s"] = statistics.median(m["times_s"])
    m["min_s"] = min(m["times_s"])
    m["s_per_mpx"] = m["median_s"] / (size * size / 1e6)
    m["wall_s"] = time.perf_counter() - t0
    return m


def markdown(rows: list[dict], record: dict, note: str, lim: dict) -> str:
    lines = [
        "# w2sr predict benchmark", "", machine.one_line(record),
        f"Python {record['python']}, onnxruntime {record['onnxruntime']}, TensorFlow {record['tensorflow']}, "
        f"numpy {record['numpy']}.", note, ""] + machine_limits.limits_markdown(lim) + ["",
        "| model | runtime | input | tiles (tile, halo) | s/image (min / median) | s per input MPx (median) "
        "| x time vs previous size | % of the fp32 limit (min) | peak RSS MiB | RSS after load MiB | runs |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    prev: dict = {}
    for r in rows:
        key = (r["model"], r["runtime"])
        if "error" in r:
            lines.append(f"| {r['model']} | {r['runtime']} | {r['size']}² | | failed: {r['error']} | | | | | |")
            continue
        growth = f"{r['median_s'] / prev[key]:.2f}" if key in prev else ""
        prev[key] = r["median_s"]
        lines.append(
            f"| {r['model']} | {r['runtime']} | {r['size']}² | {r['tiles']} ({r['tile']}, {r['halo']}) "
            f"| {r['min_s']:.2f} / {r['median_s']:.2f} | {r['s_per_mpx']:.2f} | {growth} "
            f"| {100 * r['limit_ratio']:.0f} % | {r['peak_rss_mib']:.0f} "
            f"| {r['rss_loaded_mib']:.0f} | {len(r['times_s'])} |")
    lines += ["", "Each size has 4x the pixels of the previous one: a time ratio near 4 means cost linear in "
              "pixels (constant s/MPx). Peak RSS is the whole process (Python, runtime, model, image, output). "
              "% of the limit: the exported graph's FLOPs over every tile run (halo and in-graph padding "
              "included), at the minimum time, over the fp32 limit measured in the same run."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", default=[], metavar="MODEL=PATH",
                   help="use a built bundle for MODEL (demo or full) instead of a random one")
    p.add_argument("--models", default="demo,full", help="comma list of demo, full")
    p.add_argument("--runtimes", default="onnx,tensorflow", help="comma list of onnx, tensorflow")
    p.add_argument("--sizes", default="512,1024,2048,4096", help="input sides for the demo model")
    p.add_argument("--full-sizes", default="512", help="input sides for the full model (45 s per 512² each)")
    p.add_argument("--repeats", type=int, default=3, help="runs per measurement (median), demo model")
    p.add_argument("--full-repeats", type=int, default=1, help="runs per measurement, full model")
    p.add_argument("--large-repeats", type=int, default=1,
                   help="runs per measurement for inputs of 4096² and more (minutes each)")
    p.add_argument("--tile", type=int, default=512, help="tile side in input pixels (as w2sr predict --tile)")
    p.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    p.add_argument("--build", choices=("auto", "exporter", "minimal"), default="auto",
                   help="how a random bundle is built: export.bundle.export_bundle, or only SavedModel + ONNX + "
                        "test tensors + the exporter's rdf, without its checks; auto = exporter for demo, minimal "
                        "for full (the exporter's parity checks on the full model take many minutes)")
    p.add_argument("--halo", type=int, default=None,
                   help="halo for random bundles (exporter: default measured; minimal: default 32)")
    p.add_argument("--workdir", default=None, help="where bundles and images go (default: a temp folder)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per measurement")
    p.add_argument("--quick-limits", action="store_true", help="one runtime and shape per limit (a smoke run)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_predict.md"),
                   help="Markdown report (a .json with the raw numbers is written beside it)")
    # child mode
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bundle-path", help=argparse.SUPPRESS)
    p.add_argument("--runtime", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.bundle = args.bundle_path
        child(args)
        return 0

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="w2sr-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    given = dict(b.split("=", 1) for b in args.bundle)
    record = describe_machine()
    print(machine.one_line(record), flush=True)
    lim = machine_limits.measure_limits("cpu", args.threads, quick=args.quick_limits)
    rows = []
    notes = []
    for model in [m for m in args.models.split(",") if m]:
        if model in given:
            bundle = Path(given[model])
            notes.append(f"{model}: bundle {bundle}")
        else:
            build = args.build if args.build != "auto" else ("exporter" if model == "demo" else "minimal")
            if build == "exporter":
                bundle = build_with_exporter(model, workdir / f"bundle_{model}_exporter", args.halo)
            else:
                bundle = build_random_bundle(model, workdir / f"bundle_{model}", args.halo or 32)
            from w2sr.bundle.reader import read_bundle
            notes.append(f"{model}: random-weight generator ({CONFIGS[model]}.yaml architecture), bundle built "
                         f"by the {build} path, halo {read_bundle(bundle).halo} px")
        sizes = args.sizes if model == "demo" else args.full_sizes
        repeats = args.repeats if model == "demo" else args.full_repeats
        for runtime in [r for r in args.runtimes.split(",") if r]:
            for size in [int(s) for s in sizes.split(",") if s]:
                n = min(repeats, args.large_repeats) if size >= 4096 else repeats
                print(f"[run] {model} {runtime} {size}x{size} x{n} ...", flush=True)
                m = measure(bundle, runtime, size, n, args.tile, args.threads, workdir, args.timeout)
                m.update(model=model, runtime=runtime, size=size)
                if "error" not in m:
                    from w2sr.bundle.reader import read_bundle

                    info = read_bundle(bundle)
                    th, tw = (int(v) for v in m["tile"].split("x"))
                    m["tflop"] = workloads.tiled_flops(info.onnx_path, (size, size), (th, tw), info.halo,
                                                       info.valid_size_at_least) / 1e12
                    m["limit_ratio"] = machine_limits.ratio_to_limit(m["tflop"] * 1e12, m["min_s"],
                                                                     lim["limits"]["fp32"], f"{runtime} {size}")
                rows.append(m)
                if "error" in m:
                    print(f"      failed: {m['error']}", flush=True)
                else:
                    print(f"      median {m['median_s']:.2f} s ({m['s_per_mpx']:.2f} s/MPx), "
                          f"peak RSS {m['peak_rss_mib']:.0f} MiB, {m['tiles']} tiles", flush=True)
    note = (f"Tile {args.tile} px (w2sr predict default), threads {args.threads or 'runtime default'}. "
            + "; ".join(notes) + ".")
    report = markdown(rows, record, note, lim)
    print(report)
    out = Path(args.out)
    machine.write_result(out, report, {"machine": record, "limits": lim, "args": vars(args), "rows": rows})
    print(f"written: {out} and {out.with_suffix('.json')}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
