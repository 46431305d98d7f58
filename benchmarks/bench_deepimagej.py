#!/usr/bin/env python
"""DeepImageJ 3.1's tiles for a bundle, and the memory of one tile in DeepImageJ's engines.

For a bundle (``--bundle DIR``), or one exported here from a RANDOM-weight generator (``--model
full``: nb 23 / nf 64 / gc 32, or ``demo``; same cost as trained weights), prints:

1. for 512^2, 2048^2, 4096^2 and 8000 x 3000 images, the tile JDLL 0.6.1 computes from the rdf
   (``export.jdll``: TileCalculator's formula, TileMaker's grid), the number of tiles, and whether
   JDLL would hang (TileCalculator.checkOutputSize);
2. the bundle's test input run the way DeepImageJ runs it (its tiles, mirror-padded by the halo, one
   tile per call) in the TF 2.7 and ONNX Runtime 1.13.1 engine environments (``export.engines``),
   with the peak resident memory of that engine process (one tile at a time: the peak of one tile,
   the runtime and the model included) and the seconds per tile; the median of ``--repeats`` runs.

    .venv/bin/python benchmarks/bench_deepimagej.py --model full --tile 512
    .venv/bin/python benchmarks/bench_deepimagej.py --bundle bundle --repeats 3

Writes Markdown to stdout and ``--out`` (.md and .json); figures of the last run here are in
benchmarks/results/bench_deepimagej_*.md.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import limits as machine_limits  # noqa: E402  (benchmarks/limits.py)
import machine  # noqa: E402  (benchmarks/machine.py)
import workloads  # noqa: E402  (benchmarks/workloads.py)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SIZES = [(512, 512), (2048, 2048), (4096, 4096), (8000, 3000)]
ENGINES = ["tf2.7", "ort1.13"]


def tile_table(bundle: Path) -> list[dict]:
    import yaml

    from export import jdll

    model = jdll.JdllModel.from_rdf(yaml.safe_load((bundle / "rdf.yaml").read_text()))
    rows = []
    for h, w in SIZES:
        row = {"image": f"{h} x {w}", "hangs": jdll.never_returns(model, (h, w))}
        try:
            tp = jdll.plan(model, (h, w))
            row.update(tile=f"{tp.tile[0]} x {tp.tile[1]}", halo=tp.halo[0], tiles=tp.n_tiles,
                       tiles_per_axis=f"{len(tp.in_y.patch_starts)} x {len(tp.in_x.patch_starts)}")
        except jdll.JdllError as exc:
            row.update(tile="-", tiles="-", error=str(exc))
        rows.append(row)
    return rows


def engine_memory(bundle: Path, repeats: int) -> list[dict]:
    from export.engines import check_engines

    runs: dict[str, list] = {}
    for _ in range(repeats):
        for r in check_engines(bundle, engines=ENGINES):
            if r.loader.endswith("+deepimagej"):
                runs.setdefault(r.engine, []).append(r)
    rows = []
    for engine, rs in runs.items():
        tiles = int(rs[0].reason.split(" tiles")[0]) if " tiles" in rs[0].reason else 1
        rows.append({
            "engine": engine, "runtime": rs[0].runtime_version, "status": [r.status for r in rs],
            "max_abs_diff_vs_test_output": max(r.max_abs_diff or 0.0 for r in rs),
            "peak_rss_mb": statistics.median(r.peak_rss_mb for r in rs if r.peak_rss_mb is not None),
            "s_per_tile": round(statistics.median(r.run_seconds for r in rs if r.run_seconds) / tiles, 1),
            "min_s_per_tile": round(min(r.run_seconds for r in rs if r.run_seconds) / tiles, 1),
            "tiles_in_test_input": tiles, "runs": len(rs),
        })
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--model", choices=("demo", "full"), default="full")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--work", type=Path, default=None, help="where to export (default: a temp folder)")
    ap.add_argument("--quick-limits", action="store_true", help="one runtime and shape per limit (a smoke run)")
    ap.add_argument("--out", type=Path, default=None, help="write .md/.json here (without suffix)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    result: dict = {"machine": machine_limits.machine_record("cpu")}
    lim = result["limits"] = machine_limits.measure_limits("cpu", quick=args.quick_limits)
    work = args.work or Path(tempfile.mkdtemp(prefix="w2sr-bench-dij-"))
    bundle = args.bundle
    if bundle is None:
        from bench_export import make_run

        from export.bundle import export_bundle

        run = make_run(args.model, work / f"run-{args.model}")
        t0 = time.perf_counter()
        bundle = export_bundle(run, work / f"bundle-{args.model}", name=f"bench-{args.model}", tile=args.tile,
                               measure=False, odd_sizes=())
        result["export_s"] = round(time.perf_counter() - t0, 1)
    result["bundle"] = str(bundle)
    result["tiles"] = tile_table(bundle)
    result["engines"] = engine_memory(bundle, args.repeats)
    md = [f"# DeepImageJ 3.1 tiles and engine memory: {bundle}", "",
          "| image | JDLL tile | halo | tiles | JDLL hangs |", "|---|---|---|---|---|"]
    md += [f"| {r['image']} | {r['tile']} | {r.get('halo', '-')} | {r['tiles']} | {r['hangs']} |" for r in result["tiles"]]
    from export.bundle_info import read_bundle

    info = read_bundle(bundle)
    tile = info.deepimagej_tile or 512
    tile_flops = workloads.graph_flops(info.onnx_path, tile, tile)
    md += ["", f"| engine | runtime | peak RSS, one tile at a time (MB) | s per {tile}^2 tile (min / median) | "
               "% of the fp32 limit (min) | max diff vs test_output | status |", "|---|---|---|---|---|---|---|"]
    for r in result["engines"]:
        r["limit_ratio"] = machine_limits.ratio_to_limit(tile_flops, r["min_s_per_tile"], lim["limits"]["fp32"],
                                                         r["engine"]) if r["min_s_per_tile"] else None
        share = f"{100 * r['limit_ratio']:.0f} %" if r["limit_ratio"] else "-"
        md.append(f"| {r['engine']} | {r['runtime']} | {r['peak_rss_mb']:.0f} | {r['min_s_per_tile']} / "
                  f"{r['s_per_tile']} | {share} | {r['max_abs_diff_vs_test_output']:.2e} | {', '.join(r['status'])} |")
    md += ["", machine.one_line(result["machine"]), ""] + machine_limits.limits_markdown(lim)
    md += ["", f"{tile_flops / 1e12:.3f} TFLOP per {tile}^2 tile on the exported graph (in-graph padding included)."]
    text = "\n".join(md) + "\n"
    print(text)
    if args.out:
        machine.write_result(args.out, text, result)
    return 0 if all(s == "passed" for r in result["engines"] for s in r["status"]) else 1


if __name__ == "__main__":
    sys.exit(main())
