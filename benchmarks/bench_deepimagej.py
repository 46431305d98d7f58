#!/usr/bin/env python
"""How long a Fiji user waits: the bundle in DeepImageJ's engines, run as JDLL 0.6.1 runs it, against
this machine's fp32 limit measured in the same run.

For a bundle (``--bundle DIR``; default the FULL generator, nb 23 / nf 64 / gc 32, random weights with
non-zero biases, exported once and cached by ``benchmarks/workloads.py``):

1. JDLL's tiles (``w2sr.bundle.jdll``: TileCalculator's formula, TileMaker's grid) for 512^2, 1024^2,
   2048^2, 4096^2 and 8000 x 3000 images, and whether JDLL would hang;
2. per engine (TF 1.15 and TF 2.7 with the SavedModel through a TF1 session, as JDLL's Java engines
   load it; ONNX Runtime 1.13.1 with default session options, as JDLL's ``OnnxInterface`` opens it):
   one DeepImageJ tile, preprocessed as DeepImageJ preprocesses it, one call per tile, ``--repeats``
   timed calls after a first one (reported apart: graph optimisation happens there); seconds per
   image = JDLL's tile count x the minimum seconds per tile; peak memory of the engine process;
3. with ``--profile``, seconds by operator type in each engine (TF: one traced run; ORT: its profiler);
4. the fp32 limit (``benchmarks/limits.py``) and the FLOPs of the exported graph per tile, so
   ``limit_s`` = FLOPs of JDLL's tiles / limit, and each engine's ratio to it.

The last line is machine-readable::

    BENCH deepimagej-<model>-512 tf115_s=<s> tf27_s=<s> ort1131_s=<s> limit_s=<s> ratio_best=<r>

    .venv/bin/python benchmarks/bench_deepimagej.py --repeats 2 --profile --out benchmarks/results/bench_deepimagej_full
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import limits as machine_limits  # noqa: E402  (benchmarks/limits.py)
import machine  # noqa: E402  (benchmarks/machine.py)
import workloads  # noqa: E402  (benchmarks/workloads.py)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TILE_SIZES = [(512, 512), (1024, 1024), (2048, 2048), (4096, 4096), (8000, 3000)]
TIMED_SIDES = (512, 1024, 2048)
ENGINES = ("tf1.15", "tf2.7", "ort1.13")
BENCH_KEYS = {"tf1.15": "tf115_s", "tf2.7": "tf27_s", "ort1.13": "ort1131_s"}
log = logging.getLogger("bench_deepimagej")


def tile_table(jmodel) -> list[dict]:
    from w2sr.bundle import jdll

    rows = []
    for h, w in TILE_SIZES:
        row = {"image": f"{h} x {w}", "hangs": jdll.never_returns(jmodel, (h, w))}
        try:
            tp = jdll.plan(jmodel, (h, w))
            row.update(tile=f"{tp.tile[0]} x {tp.tile[1]}", halo=tp.halo[0], tiles=tp.n_tiles,
                       tiles_per_axis=f"{len(tp.in_y.patch_starts)} x {len(tp.in_x.patch_starts)}")
        except jdll.JdllError as exc:
            row.update(tile="-", tiles="-", error=str(exc))
        rows.append(row)
    return rows


def one_tile(info, jmodel) -> tuple[np.ndarray, tuple[int, int]]:
    """The first DeepImageJ tile of a 512^2 image, preprocessed as DeepImageJ does: (1, th, tw, 1)."""
    from w2sr.bundle import jdll

    raw = workloads.test_image(512)[None, :, :, None]
    tp = jdll.plan(jmodel, (512, 512))
    x = jdll.apply_processing(raw, jmodel.preprocessing, jmodel.axes)[0, :, :, 0]
    return jdll.cut_tiles(x, tp)[:1], tp.tile


def time_engine(key: str, info, tile: np.ndarray, repeats: int, profile: bool, work: Path) -> dict:
    """One engine process: a first call, ``repeats`` timed calls, optionally a profile."""
    from export.engine_envs import ENGINES as ALL, EngineUnavailable, ensure_engine_env
    from export.engines import EngineJobFailed, read_engine_bundle, run_engine_job

    engine = ALL[key]
    try:
        env_dir = ensure_engine_env(engine)
    except EngineUnavailable as exc:
        return {"engine": key, "status": "skipped", "reason": exc.reason}
    folder = work / key
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "tile.npy", tile)
    job = {"input_npy": str(folder / "tile.npy"), "out_dir": str(folder), "per_sample": True,
           "repeats": repeats + 1, "profile": profile}
    if engine.runtime == "tensorflow":
        keys = read_engine_bundle(info.root)
        job.update(savedmodel_zip=str(info.savedmodel_zip.resolve()), input_key=keys.input_key,
                   output_key=keys.output_key, tf2_loader=False)
    else:
        job.update(onnx=str(info.onnx_path.resolve()), threads=None)  # JDLL: plain SessionOptions
    log.info("%s: a first call and %d timed calls of one %dx%d tile ...", engine.label, repeats, *tile.shape[1:3])
    try:
        res, seconds = run_engine_job(engine, env_dir, job, folder, timeout=3600)
    except EngineJobFailed as exc:
        return {"engine": key, "status": "failed", "reason": exc.reason}
    entry = next(iter(res["loaders"].values()))
    if not entry.get("ran"):
        return {"engine": key, "status": "failed", "reason": entry.get("error", "did not run")}
    times = entry["run_times_s"]
    return {"engine": key, "label": engine.label, "status": "measured", "version": res["version"],
            "first_s": times[0], "min_s": min(times[1:]), "median_s": statistics.median(times[1:]),
            "load_s": entry.get("load_s"), "peak_rss_mb": res.get("peak_rss_mb"),
            "profile_s": entry.get("profile_s"), "process_s": seconds}


def profile_lines(rows: list[dict], top: int = 10) -> list[str]:
    lines = []
    for r in rows:
        prof = r.get("profile_s")
        if not prof:
            continue
        total = sum(prof.values())
        lines += ["", f"{r['label']}: time by operator type (sum over ops, which may overlap; {total:.1f} s)", "",
                  "| op | s | share |", "|---|---|---|"]
        for op, s in sorted(prof.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"| {op} | {s:.2f} | {100 * s / total:.1f} % |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", type=Path, default=None, help="default: the full generator (random weights)")
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per engine after the first")
    ap.add_argument("--profile", action="store_true", help="also time each engine by operator type")
    ap.add_argument("--quick-limits", action="store_true", help="one runtime and shape per limit (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="write .md/.json here (without suffix)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    import yaml

    from w2sr.bundle import jdll
    from w2sr.bundle.reader import read_bundle

    record = machine_limits.machine_record("cpu")
    print(machine.one_line(record), flush=True)
    lim = machine_limits.measure_limits("cpu", quick=args.quick_limits, progress=log.info)
    bundle = args.bundle or workloads.full_bundle()
    info = read_bundle(bundle)
    jmodel = jdll.JdllModel.from_rdf(yaml.safe_load((bundle / "rdf.yaml").read_text()))
    tile, tile_shape = one_tile(info, jmodel)
    tile_flops = workloads.graph_flops(info.onnx_path, *tile_shape)
    fp32 = lim["limits"]["fp32"]
    n_tiles = {s: jdll.plan(jmodel, (s, s)).n_tiles for s in TIMED_SIDES}
    limit_s = {s: n_tiles[s] * tile_flops / (fp32["gops"] * 1e9) for s in TIMED_SIDES}

    with tempfile.TemporaryDirectory(prefix="w2sr-bench-dij-") as work:
        rows = [time_engine(k, info, tile, args.repeats, args.profile, Path(work)) for k in args.engines]

    md = [f"# DeepImageJ's engines on {bundle}", "", machine.one_line(record), ""]
    md += machine_limits.limits_markdown(lim)
    md += ["", f"JDLL's tile for this bundle: {tile_shape[0]} x {tile_shape[1]} ({tile_flops / 1e12:.3f} TFLOP on the "
               "exported graph, in-graph padding included).", "",
           "| image | JDLL tile | halo | tiles | JDLL hangs |", "|---|---|---|---|---|"]
    md += [f"| {r['image']} | {r['tile']} | {r.get('halo', '-')} | {r['tiles']} | {r['hangs']} |" for r in tile_table(jmodel)]
    head = " | ".join(f"s per {s}² ({n_tiles[s]} tile{'s' if n_tiles[s] > 1 else ''})" for s in TIMED_SIDES)
    md += ["", f"| engine | first tile s | s per tile (min / median of {args.repeats}) | {head} | x the fp32 limit "
               "| peak RSS MB |", "|---|---|---|" + "---|" * len(TIMED_SIDES) + "---|---|"]
    md.append("| fp32 limit (this machine) | | " + f"{limit_s[512] / n_tiles[512]:.1f} | "
              + " | ".join(f"{limit_s[s]:.1f}" for s in TIMED_SIDES) + " | 1.00 | |")
    for r in rows:
        if r["status"] != "measured":
            md.append(f"| {r['engine']} | {r['status']}: {r['reason']} |" + " |" * (len(TIMED_SIDES) + 3))
            continue
        r["seconds_per_image"] = {s: n_tiles[s] * r["min_s"] for s in TIMED_SIDES}
        r["ratio"] = r["min_s"] * n_tiles[512] / limit_s[512]
        md.append(f"| {r['label']} | {r['first_s']:.1f} | {r['min_s']:.1f} / {r['median_s']:.1f} | "
                  + " | ".join(f"{r['seconds_per_image'][s]:.1f}" for s in TIMED_SIDES)
                  + f" | {r['ratio']:.2f} | {r['peak_rss_mb']:.0f} |")
    md += ["", "Seconds per image: JDLL's tile count x the minimum seconds per tile (JDLL runs every tile "
               "through the same call, one at a time)."]
    md += profile_lines(rows)
    measured = [r for r in rows if r["status"] == "measured"]
    name = "full" if args.bundle is None else bundle.name
    bench = (f"BENCH deepimagej-{name}-512 " + " ".join(
        f"{BENCH_KEYS[r['engine']]}={r['seconds_per_image'][512]:.1f}" for r in measured)
        + f" limit_s={limit_s[512]:.1f} ratio_best={min((r['ratio'] for r in measured), default=float('nan')):.2f}")
    text = "\n".join(md) + "\n\n" + bench + "\n"
    print(text)
    if args.out:
        machine.write_result(args.out, text, {"machine": record, "limits": lim, "bundle": str(bundle),
                                              "tile": tile_shape, "tile_flops": tile_flops, "n_tiles": n_tiles,
                                              "limit_s": limit_s, "engines": rows})
    return 0 if measured else 1


if __name__ == "__main__":
    sys.exit(main())
