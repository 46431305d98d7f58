"""``w2sr train`` and ``w2sr evaluate``.

TensorFlow is imported only inside the handlers, so ``w2sr --help`` stays instant.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

_TRAIN_EPILOG = """\
examples:
  w2sr train --config demo --run-dir runs/demo
  w2sr train --config tiny --run-dir runs/tiny --set train.global_batch_size=8 --set train.pretrain.epochs=2
  w2sr train --config my_w2s.yaml --run-dir runs/w2s --set data.root=/data/W2S
  w2sr train --run-dir runs/w2s --resume            # continue after an interruption

The run folder receives config.yaml (resolved, with the normalisation measured on the training
images), checkpoints/, metrics.csv, panels/*.png, loss_curves.png, tensorboard/, and at the end
generator_pretrain.keras, generator.keras and DONE. An existing non-empty run folder is only
continued with --resume, never overwritten.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the generator (phase 1: pixel loss; phase 2: ESRGAN) into a run folder",
        description=(
            "Two-phase ESRGAN training for joint denoising + 2x super-resolution:\n"
            "  phase 1 trains the RRDBNet generator on the pixel loss;\n"
            "  phase 2 adds the VGG19 perceptual loss and the relativistic (RaGAN) adversarial loss,\n"
            "  with a discriminator trained alongside.\n"
            "Adam (AMSGrad), learning rate halved every epoch. Checkpoints make it resumable."
        ),
        epilog=_TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="NAME_OR_PATH",
                   help="a YAML config file, or a packaged config name: demo, tiny, w2s "
                        "(default: demo; with --resume, the run's own config.yaml)")
    p.add_argument("--run-dir", type=Path, required=True, metavar="DIR",
                   help="run folder to write (must be empty or absent unless --resume)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its newest checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value by its dotted key, e.g. train.global_batch_size=32, "
                        "data.root=/data/W2S, data.channels=[0,1]; VALUE is parsed as YAML; repeatable")
    p.set_defaults(handler=run_train)

    e = subparsers.add_parser(
        "evaluate",
        help="PSNR/SSIM of a trained run vs bicubic on test images, against the SIM target",
        description=(
            "Evaluates RUN_DIR/generator.keras on the test FOVs (by default the run's config: data "
            "folder, layout, noise level, test_fovs), with the run's normalisation, and compares it "
            "with bicubic upsampling. PSNR/SSIM use the SIM target's range; outputs are not stretched."
        ),
    )
    e.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished training run folder")
    e.add_argument("--data", type=Path, metavar="DIR", help="data folder (default: the run's data.root)")
    e.add_argument("--layout", choices=("auto", "raw", "npy", "png"),
                   help="data layout (default: the run's data.layout)")
    e.add_argument("--noise-level", type=int, choices=(1, 2, 4, 8, 16, 400),
                   help="avgN input level to evaluate (default: the run's data.noise_level)")
    e.add_argument("--fovs", metavar="LIST",
                   help="FOVs to evaluate: '81-120' or '81,82,90' (default: the run's test_fovs)")
    e.add_argument("--out", type=Path, metavar="CSV", help="write per-image results to this CSV")
    e.set_defaults(handler=run_evaluate)


# --------------------------------------------------------------------------- handlers


def run_train(args: argparse.Namespace) -> int:
    if args.resume and (not args.run_dir.is_dir() or not any(args.run_dir.iterdir())):
        state = "does not exist" if not args.run_dir.exists() else "is empty"
        raise UserError(f"{args.run_dir}: nothing to resume (the folder {state}); "
                        f"drop --resume to start a new training there")
    from training.config import load_train_config

    cfg = load_train_config(args.config, args.run_dir, args.resume, args.overrides)
    from training.train import train

    from w2sr.core.files import disk_problem

    try:
        run = train(cfg, args.run_dir, resume=args.resume)
    except Exception as exc:  # OSError, or TensorFlow's ResourceExhaustedError from the checkpoint writer
        problem = disk_problem(exc)
        if not problem:
            raise
        raise UserError(f"{args.run_dir}: {problem}; checkpoints written so far are kept: "
                        f"fix it and rerun with --resume") from None
    print(f"run folder: {run}  (generator.keras, metrics.csv, panels/, loss_curves.png)")
    return 0


def parse_fovs(text: str) -> list[int]:
    """'81-120' / '81,82,90' / '1-3,7' -> sorted FOV numbers."""
    fovs: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if not part:
                continue
            if "-" in part:
                a, b = (int(v) for v in part.split("-", 1))
                if b < a:
                    raise ValueError
                fovs.update(range(a, b + 1))
            else:
                fovs.add(int(part))
    except ValueError:
        raise UserError(f"--fovs: cannot read '{text}' (use e.g. 81-120 or 81,82,90)") from None
    if not fovs:
        raise UserError("--fovs: no FOV given")
    return sorted(fovs)


def run_evaluate(args: argparse.Namespace) -> int:
    run_dir: Path = args.run_dir
    if not (run_dir / "generator.keras").exists():
        raise UserError(f"{run_dir}: no generator.keras (not a finished training run)")
    from training.evaluate import evaluate_run, format_table

    kwargs = {}
    if args.data is not None:
        kwargs["data_root"] = args.data
    if args.layout is not None:
        kwargs["layout"] = args.layout
    if args.noise_level is not None:
        kwargs["noise_level"] = args.noise_level
    if args.fovs is not None:
        kwargs["fovs"] = parse_fovs(args.fovs)
    rows = evaluate_run(run_dir, out_csv=args.out, **kwargs)
    print(format_table(rows))
    if args.out:
        print(f"per-image results: {args.out}")
    return 0
