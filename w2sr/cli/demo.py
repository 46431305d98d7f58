"""``w2sr demo``: the whole product on the embedded default, end to end.

simulate W2S-like data -> train the small demo model (both phases) -> evaluate on held-out
simulated FOVs -> export and validate the DeepImageJ / BioImage.IO bundle. Re-running it resumes:
a finished training is reused, an interrupted one continues from its last checkpoint.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="simulate data, train the demo model, evaluate it and export bundle/ (the main job)",
        description=(
            "Runs the whole pipeline on the embedded default: simulated W2S-like data (avg1-like "
            "noise), a small RRDBNet, both training phases, evaluation against bicubic on held-out "
            "FOVs, then export + validation of a DeepImageJ / BioImage.IO bundle. Resumable: run it "
            "again after an interruption and it continues."
        ),
    )
    p.add_argument("--out", type=Path, default=Path("bundle"), help="bundle folder to write (default: bundle)")
    p.add_argument("--config", default="demo", help="packaged config name or YAML path (default: demo)")
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="training run folder (default: runs/demo)")
    p.add_argument("--retrain", action="store_true", help="train again even if the run folder holds a finished run")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    import shutil

    from training.config import load_train_config
    from training.evaluate import evaluate_run, format_table
    from training.train import train
    from export.bundle import export_bundle

    t0 = time.perf_counter()
    cfg = load_train_config(args.config, run_dir=args.run_dir, resume=False, overrides=[])
    run_dir: Path = args.run_dir
    if args.retrain and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / "DONE").exists():
        log.info("reusing the finished training run in %s (--retrain to train again)", run_dir)
    else:
        resume = run_dir.exists() and any(run_dir.iterdir())
        log.info("%s training in %s", "resuming" if resume else "starting", run_dir)
        train(cfg, run_dir, resume=resume)
    t_train = time.perf_counter()

    rows = evaluate_run(run_dir, out_csv=run_dir / "evaluation.csv")
    print(format_table(rows))
    t_eval = time.perf_counter()

    bundle = export_bundle(run_dir, args.out)
    t_export = time.perf_counter()
    print(
        f"\ndemo finished in {t_export - t0:.0f} s "
        f"(training {t_train - t0:.0f} s, evaluation {t_eval - t_train:.0f} s, export {t_export - t_eval:.0f} s)\n"
        f"  run folder : {run_dir}  (panels/, loss_curves.png, metrics.csv, evaluation.csv)\n"
        f"  bundle     : {bundle}  (rdf.yaml, parity.md, packages/)\n"
        f"  next       : bioimageio test {bundle}/rdf.yaml    |    w2sr predict {bundle} IMAGES --out OUT"
    )
    return 0
