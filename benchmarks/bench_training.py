#!/usr/bin/env python
"""Training-step time and peak memory, per config and phase (a script, not a test).

Each (config, phase) is measured in its own subprocess, so the peak resident memory
(``ru_maxrss``; tracemalloc does not see TensorFlow's allocations) belongs to that measurement
alone. A step is one optimisation step on a random batch of the config's global batch size
(LR 64 x 64 patches): phase 1 = generator on the pixel loss; phase 2 = generator on pixel +
perceptual (VGG19 to conv3_4) + adversarial loss and one discriminator step. Reported: the median
over the measured steps after warm-up (the first call traces the tf.function), plus min/max.

    python benchmarks/bench_training.py                 # tiny and demo configs
    python benchmarks/bench_training.py --full          # also the full W2S generator (slow on CPU)
    python benchmarks/bench_training.py --out benchmarks/results/training.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import limits as _limits  # noqa: E402  (benchmarks/limits.py)
import machine as _machine  # noqa: E402  (benchmarks/machine.py)


def machine() -> dict:
    return _limits.machine_record("cpu")


def worker(args: argparse.Namespace) -> None:
    """Runs in the subprocess: build, warm up, time ``steps`` steps, print one JSON line."""
    t0 = time.perf_counter()
    import keras
    import numpy as np
    import tensorflow as tf

    from training.config import apply_overrides, load_config, resolve_config_path
    from training.strategy import make_strategy
    from training.trainer import Trainer

    cfg = load_config(resolve_config_path(args.config))
    overrides = ["loss.vgg_weights=random", "train.strategy=default"]
    if args.batch:
        overrides.append(f"train.global_batch_size={args.batch}")
    if args.mixed:
        overrides.append(f"train.mixed_precision={args.mixed}")
        keras.mixed_precision.set_global_policy(f"mixed_{args.mixed}")  # what train() sets
    cfg = apply_overrides(cfg, overrides)
    keras.utils.set_random_seed(0)
    trainer = Trainer(cfg, make_strategy(cfg.train.strategy))
    t_build = time.perf_counter() - t0
    b, p = cfg.train.global_batch_size, cfg.data.lr_patch
    rng = np.random.default_rng(0)
    lr = tf.constant(rng.standard_normal((b, p, p, 1), dtype=np.float32))
    hr = tf.constant(rng.standard_normal((b, 2 * p, 2 * p, 1), dtype=np.float32))
    step = trainer.step_fn(args.phase)
    times = []
    first = None
    for i in range(args.warmup + args.steps):
        t = time.perf_counter()
        out = step(lr, hr)
        float(out["loss_g"])  # wait for the step to finish
        dt = time.perf_counter() - t
        if i == 0:
            first = dt
        if i >= args.warmup:
            times.append(dt)
    med = statistics.median(times)
    print("RESULT " + json.dumps({
        "config": args.config, "phase": args.phase, "batch": b, "lr_patch": p, "precision": args.mixed or "fp32",
        "generator_params": trainer.generator.count_params(),
        "discriminator_params": trainer.discriminator.count_params(),
        "steps": len(times), "warmup": args.warmup,
        "median_s": med, "min_s": min(times), "max_s": max(times),
        "steps_per_s": 1.0 / med, "patches_per_s": b / med,
        "first_step_s": first, "build_s": t_build,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "devices": [d.name for d in tf.config.list_logical_devices()],
    }), flush=True)


def run_one(config: str, phase: str, steps: int, warmup: int, batch: int | None, timeout: int,
            mixed: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--phase", phase,
           "--steps", str(steps), "--warmup", str(warmup)] + (["--mixed-precision", mixed] if mixed else [])
    if batch:
        cmd += ["--batch", str(batch)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            result["wall_s"] = time.perf_counter() - t
            return result
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-15:])
    raise RuntimeError(f"benchmark {config}/{phase} failed (exit {proc.returncode}):\n{tail}")


def table(results: list[dict]) -> str:
    head = ("| config | phase | precision | batch | G params | median step (s) | min-max (s) | patches/s | "
            "first step (s) | peak RSS (MB) |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        lines.append(
            f"| {r['config']} | {r['phase']} | {r.get('precision', 'fp32')} | {r['batch']} | {r['generator_params']:,} | "
            f"{r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {r['patches_per_s']:.1f} | "
            f"{r['first_step_s']:.1f} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--configs", default="tiny,demo", help="comma-separated configs (default: tiny,demo)")
    ap.add_argument("--phases", default="pretrain,gan", help="phases to time (default: both)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--full", action="store_true",
                    help="also time the full W2S generator (w2s config; ~10 s/step on 2 CPU cores)")
    ap.add_argument("--full-steps", type=int, default=2, help="timed steps for --full (default 2)")
    ap.add_argument("--full-batch", type=int, default=4,
                    help="batch for --full (default 4; the w2s config trains with 16, ~4x the memory)")
    ap.add_argument("--mixed-precision", dest="mixed", choices=("float16", "bfloat16"), default=None,
                    help="also time every measurement with train.mixed_precision set to this")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    ap.add_argument("--quick-limits", action="store_true", help="one runtime and shape per limit (a smoke run)")
    # internal: one measurement in this process
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--phase", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    plan = [(c, p, args.steps, args.warmup, None) for c in args.configs.split(",") if c
            for p in args.phases.split(",")]
    if args.full:
        plan += [("w2s", p, args.full_steps, 1, args.full_batch) for p in args.phases.split(",")]
    info = machine()
    print(_machine.one_line(info), flush=True)
    lim = _limits.measure_limits("cpu", quick=args.quick_limits)
    results = []
    for config, phase, steps, warmup, batch in plan:
        for mixed in [None] + ([args.mixed] if args.mixed else []):
            label = f" ({mixed})" if mixed else ""
            print(f"  timing {config} / {phase}{label}: {warmup} warm-up + {steps} steps ...", flush=True)
            r = run_one(config, phase, steps, warmup, batch, args.timeout, mixed)
            print(f"    median {r['median_s']:.3f} s/step, {r['patches_per_s']:.1f} patches/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
            results.append(r)
    if results:
        info["tensorflow"] = results[0]["tensorflow"]
        info["keras"] = results[0]["keras"]
    print()
    print(f"TensorFlow {info.get('tensorflow')}, Keras {info.get('keras')}, random weights, "
          f"LR patches 64x64 -> 128x128")
    print(table(results))
    print("\n" + _machine.one_line(info) + "\n\n" + "\n".join(_limits.limits_markdown(lim)))
    if args.out:
        from w2sr.core.files import atomic_write_text

        atomic_write_text(args.out, json.dumps({"machine": info, "limits": lim, "results": results}, indent=2) + "\n")
        print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
