"""What a person watches while a run trains, and reads afterwards.

* a tqdm progress bar per epoch (losses, steps/s, ETA);
* ``RUN/metrics.csv``: one row per training step and one per validation, appended as the run goes
  and cut back to the checkpoint on ``--resume`` so no step appears twice;
* TensorBoard scalars and image panels in ``RUN/tensorboard``;
* PNG panels ``RUN/panels/<phase>_epoch<NN>.png`` (bicubic | output | target) and
  ``RUN/loss_curves.png``.

Everything here is numpy/matplotlib except the TensorBoard writer; TensorFlow is imported lazily.
"""
from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from w2sr.core.files import atomic_path, atomic_write_text
from w2sr.core.tiling import center_crop

log = logging.getLogger(__name__)

#: columns of RUN/metrics.csv, in order. ``kind`` is "train" (one row per step) or "val" (per epoch).
METRIC_COLUMNS = (
    "kind", "phase", "epoch", "step", "epoch_step", "lr",
    "loss_g", "pixel", "perceptual", "texture", "adversarial", "loss_d",
    "val_psnr", "val_ssim", "bicubic_psnr", "bicubic_ssim",
    "steps_per_s", "wall_time",
)
#: the loss columns plotted and shown in the progress bar (absent in phase 1 are left empty)
LOSS_COLUMNS = ("loss_g", "pixel", "perceptual", "texture", "adversarial", "loss_d")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return str(value)


class MetricsLog:
    """Append-only CSV of training and validation metrics that survives resume."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def ensure_header(self) -> None:
        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write_text(self.path, ",".join(METRIC_COLUMNS) + "\n")

    def append(self, rows: Iterable[dict]) -> None:
        self.ensure_header()
        lines = []
        for row in rows:
            unknown = set(row) - set(METRIC_COLUMNS)
            if unknown:
                raise KeyError(f"unknown metrics columns {sorted(unknown)}")
            lines.append(",".join(
                f"{row[c]:.3f}" if c == "wall_time" and row.get(c) is not None else _fmt(row.get(c))
                for c in METRIC_COLUMNS))
        if lines:
            with open(self.path, "a", newline="") as fh:
                fh.write("\n".join(lines) + "\n")
                fh.flush()

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            reader = csv.DictReader(fh)
            # a row cut short by a kill mid-write has fewer fields: drop it
            return [r for r in reader if None not in r.values() and len(r) == len(METRIC_COLUMNS)]

    def truncate_after(self, step: int, keep_val: Optional[Callable[[dict], bool]] = None) -> int:
        """Keep train rows with ``step <= step``, and the val rows for which ``keep_val(row)``.

        After a kill the steps since the last checkpoint are trained again; cutting their rows
        keeps each step exactly once in the CSV. Returns the number of rows removed.
        """
        rows = self.read()
        keep = []
        for r in rows:
            if r["kind"] == "train" and int(r["step"]) > step:
                continue
            if r["kind"] == "val" and keep_val is not None and not keep_val(r):
                continue
            keep.append(r)
        removed = len(rows) - len(keep)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(keep)
        atomic_write_text(self.path, buf.getvalue())
        return removed


class ProgressBar:
    """A tqdm bar for one epoch: the losses (running mean), steps/s and the ETA."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool = True):
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
            disable=not enabled, smoothing=0.1,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}",
        )
        self._sums: dict[str, float] = {}
        self._count = 0

    def update(self, losses: dict[str, float]) -> None:
        self._count += 1
        for k, v in losses.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._bar.set_postfix(
            {k: f"{s / self._count:.4g}" for k, s in self._sums.items()}, refresh=False
        )
        self._bar.update(1)

    @property
    def rate(self) -> Optional[float]:
        return self._bar.format_dict.get("rate")

    def means(self) -> dict[str, float]:
        return {k: s / max(self._count, 1) for k, s in self._sums.items()}

    def close(self) -> None:
        self._bar.close()


class TensorBoard:
    """Scalars and images in ``RUN/tensorboard`` (``tensorboard --logdir RUN/tensorboard``)."""

    def __init__(self, logdir: Path, enabled: bool = True):
        import tensorflow as tf

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir)) if enabled else None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            for k, v in values.items():
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    self._tf.summary.scalar(k, float(v))

    def image(self, step: int, name: str, rgb: np.ndarray) -> None:
        if self._writer is None:
            return
        with self._writer.as_default(step=step):
            self._tf.summary.image(name, rgb[None].astype(np.float32) / 255.0)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


# --------------------------------------------------------------------------- pictures


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: Path, dpi: int = 100) -> np.ndarray:
    """Save ``fig`` as PNG atomically; return its RGB pixels (for TensorBoard)."""
    plt = _matplotlib()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    plt.close(fig)
    return rgb


def panel_figure(rows: Sequence[dict], title: str = "", crop: int = 256):
    """The matplotlib figure of ``save_panel`` (see there), laid out but not saved.

    Constrained layout reserves each axes' (two-line) title and the suptitle in the grid itself, so
    a row's titles never run into the images of the row above (``tight_layout`` with a fixed
    ``rect`` did, for two rows). Each row gets 3.3 in: 2.8 in of image plus its title.
    """
    plt = _matplotlib()
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 3, figsize=(9, 3.3 * n + (0.4 if title else 0.1)), squeeze=False,
                             layout="constrained")
    for i, row in enumerate(rows):
        target = center_crop(np.asarray(row["target"], np.float32), crop)
        lo, hi = np.percentile(target, [0.5, 99.8])
        if hi <= lo:
            hi = lo + 1.0
        images = (
            ("bicubic", row["bicubic"], row.get("bicubic_psnr"), row.get("bicubic_ssim")),
            ("output", row["output"], row.get("psnr"), row.get("ssim")),
            ("target (SIM)", row["target"], None, None),
        )
        for j, (label, img, p, s) in enumerate(images):
            ax = axes[i, j]
            ax.imshow(center_crop(np.asarray(img, np.float32), crop), cmap="magma", vmin=lo, vmax=hi,
                      interpolation="nearest")
            text = f"{row.get('name', i)} {label}"
            if p is not None:
                text += f"\n{p:.2f} dB / SSIM {s:.3f}" if s is not None else f"\n{p:.2f} dB"
            ax.set_title(text, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_panel(
    path: Path,
    rows: Sequence[dict],
    title: str = "",
    crop: int = 256,
) -> np.ndarray:
    """One row per validation image: bicubic | output | target (same contrast, centre crop).

    Each row dict holds ``name``, ``bicubic``, ``output``, ``target`` (2-D arrays in target units)
    and optionally ``psnr``/``ssim``/``bicubic_psnr``/``bicubic_ssim``. Returns the RGB pixels.
    """
    return _save_figure(panel_figure(rows, title, crop), path)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_loss_curves(rows: Sequence[dict], path: Path) -> Optional[np.ndarray]:
    """Training losses against step (smoothed) and validation PSNR/SSIM against epoch."""
    train = [r for r in rows if r["kind"] == "train"]
    val = [r for r in rows if r["kind"] == "val"]
    if not train and not val:
        return None
    plt = _matplotlib()
    fig, (ax_loss, ax_psnr, ax_ssim) = plt.subplots(1, 3, figsize=(16, 4.5))

    steps = np.array([int(r["step"]) for r in train])
    window = max(1, len(train) // 50)
    colors = dict(zip(LOSS_COLUMNS, ("C0", "C1", "C2", "C4", "C3", "C5")))
    for col in LOSS_COLUMNS:
        labelled = False
        for phase in dict.fromkeys(r["phase"] for r in train):  # one line per phase, in order
            pts = [(int(r["step"]), float(r[col])) for r in train
                   if r["phase"] == phase and r.get(col) not in (None, "")]
            if not pts:
                continue
            x, y = np.array(pts).T
            ax_loss.plot(x, _moving_average(np.abs(y), window), color=colors[col],
                         label=None if labelled else col, lw=1.2)
            labelled = True
    # phase boundary
    phases = [r["phase"] for r in train]
    for k in range(1, len(phases)):
        if phases[k] != phases[k - 1]:
            ax_loss.axvline(steps[k], color="grey", ls="--", lw=0.8)
            ax_loss.text(steps[k], 1, f" {phases[k]}", transform=ax_loss.get_xaxis_transform(),
                         va="top", fontsize=8, color="grey")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss (weighted, running mean)" if window > 1 else "loss (weighted)")
    if any(ax_loss.get_lines()):
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8)
    ax_loss.set_title("training losses")

    labels = [f"{r['phase']} {int(r['epoch'])}" for r in val]
    x = np.arange(len(val))
    for ax, key, name in ((ax_psnr, "psnr", "PSNR (dB)"), (ax_ssim, "ssim", "SSIM")):
        if val:
            ax.plot(x, [float(r[f"val_{key}"]) for r in val], "o-", label="model")
            ax.plot(x, [float(r[f"bicubic_{key}"]) for r in val], "s--", label="bicubic")
            ax.set_xticks(x)
            ax.set_xticklabels(labels, rotation=45, fontsize=7)
            ax.legend(fontsize=8)
        ax.set_ylabel(name)
        ax.set_xlabel("epoch")
        ax.set_title(f"validation {name} vs SIM target")
    fig.tight_layout()
    return _save_figure(fig, path)

