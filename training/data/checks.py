"""Bad data stops here, before training: every problem names the file and what is wrong.

Three passes, cheapest first, so a broken 40 GB data set fails in seconds rather than after hours:
``check_files`` (folders, requested FOVs/channels present, LR and SIM paired), ``check_headers``
(array shapes from .npy headers / PNG headers: dimensionality, HR exactly 2x LR, enough raw frames),
then ``check_arrays`` on the loaded pixels (NaN/Inf, sizes). Problems are collected and raised as
one ``DataError`` listing the first few, so a user can fix them all in one go.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional

import numpy as np

from w2sr.core.errors import DataError

if TYPE_CHECKING:
    from training.data.layouts import ImagePair, Scan

log = logging.getLogger(__name__)

#: how many problems the one-line message spells out
SHOWN_PROBLEMS = 3


def raise_problems(problems: list[str], root: Path) -> None:
    """Raise one DataError for all problems (the first few spelled out); log them all."""
    if not problems:
        return
    for p in problems:
        log.error("%s", p)
    if len(problems) == 1:
        raise DataError(problems[0])
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f" (and {len(problems) - SHOWN_PROBLEMS} more)" if len(problems) > SHOWN_PROBLEMS else ""
    raise DataError(f"{len(problems)} data problems under {root}: {shown}{more}")


def check_files(
    found: "Scan", channels: Optional[Iterable[int]] = None, fovs: Optional[Iterable[int]] = None
) -> list[tuple[int, int, Path, Path]]:
    """Requested (fov, channel) pairs as (fov, ch, lr_path, hr_path); DataError if any is missing.

    ``channels``/``fovs`` None = every one present. Unpaired files outside the request are only
    logged (they cannot hurt this run).
    """
    problems = list(found.problems)
    keys = set(found.lr) | set(found.hr)
    if problems and not keys:
        raise_problems(problems, found.root)
    want_fovs = sorted(set(fovs)) if fovs is not None else sorted({f for f, _ in keys})
    want_chs = sorted(set(channels)) if channels is not None else sorted({c for _, c in keys})
    if not keys:
        problems.append(f"{found.root}: no image files found (expected e.g. {found.expected_lr(1, 0)})")
    present_fovs = {f for f, _ in keys}
    present_chs = {c for _, c in keys}
    for c in want_chs:
        if c not in present_chs and keys:
            problems.append(f"{found.root}: channel {c} absent (no {found.expected_lr(want_fovs[0] if want_fovs else 1, c)})")
    for f in want_fovs:
        if f not in present_fovs and keys:
            problems.append(f"{found.root}: FOV {f} absent (no {found.expected_lr(f, want_chs[0] if want_chs else 0)})")
    out = []
    for f in want_fovs:
        for c in want_chs:
            lr, hr = found.lr.get((f, c)), found.hr.get((f, c))
            if lr and hr:
                out.append((f, c, lr, hr))
            elif lr and not hr:
                problems.append(f"{lr}: no matching SIM target ({found.expected_hr(f, c)})")
            elif hr and not lr:
                problems.append(f"{hr}: no matching widefield input ({found.expected_lr(f, c)})")
            elif f in present_fovs and c in present_chs:
                problems.append(f"{found.root}: FOV {f} channel {c} absent (no {found.expected_lr(f, c)})")
    for key in sorted(keys - {(f, c) for f in want_fovs for c in want_chs}):
        if (key in found.lr) != (key in found.hr):
            log.warning("%s: unpaired file (not requested, ignored)", found.lr.get(key) or found.hr.get(key))
    raise_problems(problems, found.root)
    return out


def check_headers(found: "Scan", files: list[tuple[int, int, Path, Path]],
                  peek: Callable[[Path, str], tuple[tuple, str]], need: int) -> None:
    """Dimensionality, HR = 2x LR and raw frame counts, from file headers only (no pixels read):
    ``peek(path, layout)`` gives (shape, kind) from a header; ``need``: raw frames the noise level needs."""
    problems: list[str] = []
    for _, _, lr_path, hr_path in files:
        try:
            lr_shape, lr_kind = peek(lr_path, found.layout)
            hr_shape, hr_kind = peek(hr_path, found.layout)
        except DataError as exc:
            problems.append(str(exc))
            continue
        if found.layout == "raw":
            if len(lr_shape) != 3:
                problems.append(f"{lr_path}: expected frames x H x W, got shape {lr_shape}")
                continue
            if lr_shape[0] < need:
                problems.append(f"{lr_path}: has {lr_shape[0]} frames, avg{found.noise_level} needs at least {need}")
            lr_shape = lr_shape[1:]
        bad = False
        for path, shape, kind in ((lr_path, lr_shape, lr_kind), (hr_path, hr_shape, hr_kind)):
            if len(shape) != 2:
                problems.append(f"{path}: expected a 2-D grayscale image, got shape {shape} ({kind})")
                bad = True
        if not bad:
            problems.extend(_size_problem(lr_shape, hr_shape, hr_path))
    raise_problems(problems, found.root)


def _size_problem(lr_shape, hr_shape, hr_path: Path) -> list[str]:
    want = (2 * lr_shape[0], 2 * lr_shape[1])
    if tuple(hr_shape) != want:
        return [f"{hr_path}: SIM target is {hr_shape[0]}x{hr_shape[1]}, expected exactly 2x the "
                f"widefield {lr_shape[0]}x{lr_shape[1]} = {want[0]}x{want[1]}"]
    return []


def check_arrays(lr: np.ndarray, hr: np.ndarray, lr_path: Path, hr_path: Path) -> list[str]:
    """Problems of one loaded pair (dimensionality, HR = 2x LR, NaN/Inf); empty if it is usable."""
    problems = []
    for path, arr in ((lr_path, lr), (hr_path, hr)):
        if arr.ndim != 2:
            problems.append(f"{path}: expected a 2-D image, got shape {arr.shape}")
        elif not np.isfinite(arr).all():
            problems.append(f"{path}: {int(arr.size - np.count_nonzero(np.isfinite(arr)))} NaN/Inf values")
    if not problems:
        problems.extend(_size_problem(lr.shape, hr.shape, hr_path))
    return problems


def summarize(pairs: list["ImagePair"]) -> str:
    """A few lines for people: how many pairs, which FOVs/channels, sizes and value ranges."""
    if not pairs:
        return "no pairs"
    fovs = sorted({p.fov for p in pairs})
    chans = sorted({p.channel for p in pairs})
    lr_sizes = sorted({p.lr.shape for p in pairs})
    hr_sizes = sorted({p.hr.shape for p in pairs})

    def rng(arrs):
        lo = min(float(a.min()) for a in arrs)
        hi = max(float(a.max()) for a in arrs)
        mean = float(np.mean([a.mean(dtype=np.float64) for a in arrs]))
        std = float(np.sqrt(np.mean([a.var(dtype=np.float64) for a in arrs])))
        return f"min {lo:.4g}, max {hi:.4g}, mean {mean:.4g}, std {std:.4g}"

    return "\n".join([
        f"pairs:    {len(pairs)} ({len(fovs)} FOVs: {format_ranges(fovs)}; channels {format_ranges(chans)})",
        f"LR size:  {', '.join(f'{h}x{w}' for h, w in lr_sizes)}   values {rng([p.lr for p in pairs])}",
        f"HR size:  {', '.join(f'{h}x{w}' for h, w in hr_sizes)}   values {rng([p.hr for p in pairs])}",
        f"sources:  {pairs[0].lr_source.parent} | {pairs[0].hr_source.parent}",
    ])


def format_ranges(values: list[int]) -> str:
    """[1,2,3,5] -> "1-3,5" (compact FOV lists in messages)."""
    out, start, prev = [], None, None
    for v in sorted(values):
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = v
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(out)
