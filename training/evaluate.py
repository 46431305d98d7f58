"""Evaluate a trained run on whole test images: PSNR/SSIM of the model and of bicubic vs SIM.

Each test image goes through exactly the bundle's path (``w2sr/core/normalization.py``):
raw LR -> input normalisation -> generator -> output map, and is compared with its SIM target in the
output units (``Normalization.reference``: SIM counts in fixed mode, the target scaled by its own
percentiles in percentile mode), data range = the target's range (``training/metrics.py``).
The bicubic baseline goes through the same normalisation (``metrics.bicubic_baseline``).
"""
from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from w2sr.core.normalization import Normalization
from training import metrics
from training.run_folder import RunFolder
from w2sr.core.files import atomic_write_text
from w2sr.core.errors import UserError

logger = logging.getLogger(__name__)

COLUMNS = ["name", "fov", "channel", "psnr_model", "ssim_model", "psnr_bicubic", "ssim_bicubic",
           "data_range", "seconds"]
_METRIC_COLUMNS = ["psnr_model", "ssim_model", "psnr_bicubic", "ssim_bicubic"]


def load_run(run_dir: Path):
    """(Config, generator) of a run folder; UserError naming the missing or bad file."""
    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise UserError(f"run folder not found: {run.root}")
    return run.resolved_config(), run.load_generator()


def compare_with_target(run, pair, norm: Normalization) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(model output, bicubic baseline, target), all in output units, for one pair; ``run`` maps a
    normalised (1, H, W, 1) input to the network's (1, 2H, 2W, 1) output. The one comparison that
    validation during training and ``w2sr evaluate`` share."""
    from training.data.pipeline import map_pair

    x, target = map_pair(pair, norm.input, norm.reference)
    out = norm.output(np.asarray(run(x[None, :, :, None]), np.float32)[0, :, :, 0])
    if out.shape != target.shape:
        raise UserError(f"{pair.hr_source}: target shape {target.shape} is not 2x the input "
                        f"{pair.lr.shape} ({pair.lr_source})")
    return out, metrics.bicubic_baseline(pair.lr, norm), target


def _mean_row(rows: list[dict]) -> dict:
    row = {c: "" for c in COLUMNS}
    row["name"] = "mean"
    for c in _METRIC_COLUMNS + ["seconds"]:
        row[c] = float(np.mean([r[c] for r in rows]))
    return row


def evaluate_run(run_dir, data_root=None, layout: str = "auto", noise_level: Optional[int] = None,
                 fovs: Optional[Sequence[int]] = None, channels: Optional[Sequence[int]] = None,
                 out_csv=None) -> list[dict]:
    """Per-image PSNR/SSIM (model and bicubic) on the test FOVs, then a final "mean" row.

    Defaults come from the run's ``config.yaml``: data root, layout, noise level, channels and
    ``data.test_fovs``. The CSV (default ``RUN/evaluation_avg{N}.csv``) is written atomically.
    """
    from training.data.layouts import load_pairs, resolve_layout

    run_dir = Path(run_dir)
    cfg, model = load_run(run_dir)
    norm = cfg.normalization.maths
    root = Path(data_root) if data_root is not None else Path(cfg.data.root)
    if layout == "auto" and data_root is None and cfg.data.layout != "auto":
        layout = cfg.data.layout
    layout = resolve_layout(root, layout)
    noise_level = cfg.data.noise_level if noise_level is None else int(noise_level)
    fovs = list(cfg.data.test_fovs if fovs is None else fovs)
    channels = list(cfg.data.channels if channels is None else channels)
    # no PNG split restriction: the FOV list selects the images, wherever they are filed
    pairs = load_pairs(root, layout, noise_level, channels, fovs, split=None, progress=False,
                       npy_as_counts=cfg.data.npy_as_counts)
    if not pairs:
        raise UserError(f"{root}: no test images for FOVs {fovs}, channels {channels}, avg{noise_level}")
    logger.info("evaluating %s on %d images from %s (%s layout, avg%d)", run_dir, len(pairs),
                root, layout, noise_level)

    rows = []
    for pair in pairs:
        start = time.perf_counter()
        pred, bicubic, target = compare_with_target(lambda x: model(x, training=False), pair, norm)
        seconds = time.perf_counter() - start
        dr = metrics.target_range(target)
        model_m = metrics.image_metrics(pred, target, dr)
        bic_m = metrics.image_metrics(bicubic, target, dr)
        rows.append({
            "name": pair.name, "fov": pair.fov, "channel": pair.channel,
            "psnr_model": model_m["psnr"], "ssim_model": model_m["ssim"],
            "psnr_bicubic": bic_m["psnr"], "ssim_bicubic": bic_m["ssim"],
            "data_range": dr, "seconds": seconds,
        })
        logger.info("%s: model %.2f dB / %.4f, bicubic %.2f dB / %.4f (%.1f s)", pair.name,
                    model_m["psnr"], model_m["ssim"], bic_m["psnr"], bic_m["ssim"], seconds)
    rows.append(_mean_row(rows))

    out_csv = Path(out_csv) if out_csv is not None else run_dir / f"evaluation_avg{noise_level}.csv"
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_csv, buffer.getvalue())
    logger.info("wrote %s", out_csv)
    return rows


def format_table(rows: list[dict]) -> str:
    """A fixed-width text table of evaluation rows, for the terminal."""
    header = f"{'image':<12} {'PSNR model':>11} {'SSIM model':>11} {'PSNR bicubic':>13} {'SSIM bicubic':>13}"
    lines = [header, "-" * len(header)]
    for r in rows:
        if r["name"] == "mean":
            lines.append("-" * len(header))
        lines.append(f"{str(r['name']):<12} {r['psnr_model']:>11.2f} {r['ssim_model']:>11.4f} "
                     f"{r['psnr_bicubic']:>13.2f} {r['ssim_bicubic']:>13.4f}")
    return "\n".join(lines)
