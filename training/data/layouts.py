"""Readers for the three public W2S layouts, so real users can point training at whichever they have.

1. ``raw``: ``Image%03d/wf_channel{c}.npy`` (frames x H x W uint16) and ``Image%03d/sim_channel{c}.npy``;
   the avgN input is averaged from the frames exactly as the W2S authors did (``AVG_FRAMES``).
2. ``npy``: ``{avg1,...,avg400,sim}/{FOV:03d}_{ch}.npy`` (float32, already z-scored).
3. ``png``: ``{train,test}/{avg1,...,avg400,sim}/{FOV:03d}_{ch}.png`` (8-bit grayscale).

Arrays come back as float32 in the file's own units; normalisation is the pipeline's job.
All checks (missing, unpaired, sizes, corrupt, NaN/Inf) live in ``checks.py`` and run inside
``load_pairs`` before any image is handed to training.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
from tqdm import tqdm

from training.config import NOISE_LEVELS, W2S_RAW_MEAN, W2S_RAW_STD
from training.data import checks
from w2sr.core.errors import DataError

log = logging.getLogger(__name__)

LAYOUTS = ("raw", "npy", "png")
SPLITS = ("train", "test")
#: 0-based [start, stop) frame ranges the W2S authors averaged for each noise level
AVG_FRAMES = {1: (249, 250), 2: (0, 2), 4: (0, 4), 8: (0, 8), 16: (0, 16), 400: (0, 400)}

_PAIR_NAME = re.compile(r"^(\d+)_(\d+)\.(npy|png)$")
_IMAGE_DIR = re.compile(r"^Image(\d+)$")
_WF_FILE = re.compile(r"^wf_channel(\d+)\.npy$")
_SIM_FILE = re.compile(r"^sim_channel(\d+)\.npy$")


@dataclass
class ImagePair:
    """One FOV x channel: the widefield input and its SIM target, float32 in file units."""

    name: str
    fov: int
    channel: int
    lr: np.ndarray
    hr: np.ndarray
    lr_source: Path
    hr_source: Path


@dataclass
class Scan:
    """What a layout folder holds for one noise level: (fov, channel) -> file, plus folder problems."""

    root: Path
    layout: str
    noise_level: int
    lr: dict[tuple[int, int], Path] = field(default_factory=dict)
    hr: dict[tuple[int, int], Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def expected_lr(self, fov: int, channel: int) -> str:
        return _expected(self.layout, self.noise_level, fov, channel, lr=True)

    def expected_hr(self, fov: int, channel: int) -> str:
        return _expected(self.layout, self.noise_level, fov, channel, lr=False)


def _expected(layout: str, level: int, fov: int, ch: int, lr: bool) -> str:
    if layout == "raw":
        return f"Image{fov:03d}/{'wf' if lr else 'sim'}_channel{ch}.npy"
    sub = f"avg{level}" if lr else "sim"
    ext = "npy" if layout == "npy" else "png"
    prefix = "{train,test}/" if layout == "png" else ""
    return f"{prefix}{sub}/{fov:03d}_{ch}.{ext}"


def frames_for_level(noise_level: int) -> tuple[int, int]:
    """[start, stop) of the raw frames averaged into avg``noise_level`` (W2S's indices)."""
    if noise_level not in AVG_FRAMES:
        raise DataError(f"noise level {noise_level} is not one of {NOISE_LEVELS}")
    return AVG_FRAMES[noise_level]


# --------------------------------------------------------------------------------------------
# detection and scanning
# --------------------------------------------------------------------------------------------
def _looks_raw(root: Path) -> bool:
    return any(d.is_dir() and _IMAGE_DIR.match(d.name) and any(d.glob("wf_channel*.npy")) for d in root.iterdir())


def _looks_npy(root: Path) -> bool:
    return (root / "sim").is_dir() and any(
        (root / f"avg{lvl}").is_dir() and any((root / f"avg{lvl}").glob("*.npy")) for lvl in NOISE_LEVELS
    )


def _looks_png(root: Path) -> bool:
    return any((root / s / "sim").is_dir() and any((root / s / "sim").glob("*.png")) for s in SPLITS)


def detect_layout(root: Path) -> str:
    """Which W2S layout ``root`` holds: "raw", "npy" or "png" (DataError if none or several)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder does not exist" if not root.exists() else f"{root}: not a folder")
    found = [name for name, test in (("raw", _looks_raw), ("npy", _looks_npy), ("png", _looks_png)) if test(root)]
    if not found:
        raise DataError(
            f"{root}: no W2S layout found (expected Image###/wf_channel*.npy, "
            f"avgN/ + sim/ with ###_#.npy, or train|test/avgN/ + sim/ with ###_#.png)"
        )
    if len(found) > 1:
        raise DataError(f"{root}: holds several W2S layouts ({', '.join(found)}); choose one with --layout / data.layout")
    log.debug("%s: detected %s layout", root, found[0])
    return found[0]


def _scan_pair_folder(folder: Path, ext: str, into: dict, problems: list[str]) -> None:
    for f in sorted(folder.iterdir()):
        m = _PAIR_NAME.match(f.name)
        if not m or m.group(3) != ext or not f.is_file():
            continue
        key = (int(m.group(1)), int(m.group(2)))
        if key in into:
            problems.append(f"{f}: same FOV/channel as {into[key]}")
            continue
        into[key] = f


def scan(root: Path, layout: str, noise_level: int, split: Optional[str] = None) -> Scan:
    """List the LR (for ``noise_level``) and HR files of a layout; missing folders go to ``problems``."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise DataError(f"{root}: unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    frames_for_level(noise_level)
    result = Scan(root, layout, noise_level)
    if not root.is_dir():
        result.problems.append(f"{root}: data folder does not exist")
        return result
    if layout == "raw":
        dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _IMAGE_DIR.match(d.name)]
        if not dirs:
            result.problems.append(f"{root}: no Image### folders (raw W2S layout)")
        for d in dirs:
            fov = int(_IMAGE_DIR.match(d.name).group(1))
            for f in sorted(d.iterdir()):
                for pattern, into in ((_WF_FILE, result.lr), (_SIM_FILE, result.hr)):
                    m = pattern.match(f.name)
                    if m and f.is_file():
                        key = (fov, int(m.group(1)))
                        if key in into:
                            result.problems.append(f"{f}: same FOV/channel as {into[key]}")
                        else:
                            into[key] = f
        return result
    if layout == "npy":
        bases = [root]
    else:
        splits = [split] if split else [s for s in SPLITS if (root / s).is_dir()]
        if split and split not in SPLITS:
            raise DataError(f"{root}: unknown split {split!r} (train or test)")
        if not splits:
            result.problems.append(f"{root}: neither train/ nor test/ folder (PNG W2S layout)")
        bases = [root / s for s in splits]
    ext = "npy" if layout == "npy" else "png"
    for base in bases:
        for sub, into in ((f"avg{noise_level}", result.lr), ("sim", result.hr)):
            folder = base / sub
            if not folder.is_dir():
                result.problems.append(f"{folder}: folder missing")
                continue
            _scan_pair_folder(folder, ext, into, result.problems)
    return result


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def _open_npy(path: Path) -> np.ndarray:
    """Memory-map an .npy file (only the header is read now); DataError if it is not a usable array."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise DataError(f"{path}: unreadable .npy file ({_short(exc)})") from None
    if magic != b"\x93NUMPY":
        raise DataError(f"{path}: unreadable .npy file (no NumPy header)")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # truncated header/data, pickle, not an npy at all
        raise DataError(f"{path}: unreadable .npy file ({_short(exc)})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "uif":
        raise DataError(f"{path}: not a numeric array (dtype {getattr(arr, 'dtype', type(arr).__name__)})")
    return arr


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120] or type(exc).__name__


def peek(path: Path, layout: str) -> tuple[tuple[int, ...], str]:
    """Shape and a type description of a file without reading its pixels (for the pre-checks)."""
    if layout == "png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                mode, (w, h) = im.mode, im.size
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"{path}: unreadable PNG ({_short(exc)})") from None
        if mode not in ("L", "I", "I;16", "I;16B", "F"):
            return (h, w, len(mode)), f"mode {mode}"
        return (h, w), f"mode {mode}"
    arr = _open_npy(path)
    return tuple(arr.shape), str(arr.dtype)


def _finite_float32(path: Path, arr: np.ndarray) -> np.ndarray:
    out = np.asarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        bad = int(np.size(out) - np.count_nonzero(np.isfinite(out)))
        raise DataError(f"{path}: {bad} NaN/Inf values")
    return out


def read_image(path: Path, layout: str) -> np.ndarray:
    """A 2-D float32 image (npy or png file), in the file's units; DataError naming the file."""
    path = Path(path)
    if layout == "png":
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("L", "I", "I;16", "I;16B", "F"):
                    raise DataError(f"{path}: not a grayscale image (mode {im.mode})")
                arr = np.asarray(im)
        except DataError:
            raise
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: unreadable PNG ({_short(exc)})") from None
    else:
        mm = _open_npy(path)
        try:
            arr = np.array(mm)
        except Exception as exc:
            raise DataError(f"{path}: unreadable .npy data ({_short(exc)})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D image, got shape {arr.shape}")
    return _finite_float32(path, arr)


def average_frames(path: Path, noise_level: int, chunk: int = 16) -> np.ndarray:
    """avg``noise_level`` of a raw ``wf_channel*.npy`` stack, with the W2S frame indices.

    The stack is memory-mapped and summed in chunks, so a 400-frame file is never loaded whole.
    """
    path = Path(path)
    start, stop = frames_for_level(noise_level)
    stack = _open_npy(path)
    if stack.ndim != 3:
        raise DataError(f"{path}: expected frames x H x W, got shape {stack.shape}")
    if stack.shape[0] < stop:
        raise DataError(
            f"{path}: has {stack.shape[0]} frames, avg{noise_level} needs frames {start}-{stop - 1} "
            f"(at least {stop})"
        )
    total = np.zeros(stack.shape[1:], np.float64)
    try:
        for i in range(start, stop, chunk):
            total += np.asarray(stack[i:min(i + chunk, stop)], dtype=np.float64).sum(axis=0)
    except Exception as exc:
        raise DataError(f"{path}: unreadable frames ({_short(exc)})") from None
    return _finite_float32(path, total / (stop - start))


def read_lr(path: Path, layout: str, noise_level: int) -> np.ndarray:
    """The widefield input of one pair at ``noise_level`` (averaged from frames for ``raw``)."""
    if layout == "raw":
        return average_frames(path, noise_level)
    return read_image(path, layout)


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------
def resolve_layout(root: Path, layout: str) -> str:
    return detect_layout(root) if layout in (None, "auto") else layout


def load_pairs(
    root: Path,
    layout: str = "auto",
    noise_level: int = 1,
    channels: Optional[Iterable[int]] = None,
    fovs: Optional[Iterable[int]] = None,
    split: Optional[str] = None,
    progress: bool = True,
    npy_as_counts: bool = True,
) -> list[ImagePair]:
    """Read and check the (LR, SIM) pairs of the requested FOVs and channels.

    ``npy_as_counts``: the normalized-npy release is z-scored with the authors' global constants;
    undo that (``x * W2S_RAW_STD + W2S_RAW_MEAN``) so images come back in camera counts, like the raw
    layout. The run's normalisation, and so the exported bundle, then takes raw widefield images,
    which is what a Fiji user opens.

    ``channels``/``fovs`` None = all present. ``split`` ("train"/"test") restricts the PNG layout
    to one folder; otherwise both are searched. Every problem found is collected and raised as one
    DataError (the first few listed), before any training starts.
    """
    root = Path(root)
    layout = resolve_layout(root, layout)
    found = scan(root, layout, noise_level, split)
    files = checks.check_files(found, channels, fovs)
    checks.check_headers(found, files, peek, frames_for_level(noise_level)[1])
    pairs: list[ImagePair] = []
    problems: list[str] = []
    for fov, ch, lr_path, hr_path in tqdm(files, desc=f"load {layout} avg{noise_level}", unit="pair",
                                           leave=False, disable=not progress or len(files) < 8):
        try:
            lr = read_lr(lr_path, layout, noise_level)
            hr = read_image(hr_path, layout)
        except DataError as exc:
            problems.append(str(exc))
            continue
        problems.extend(checks.check_arrays(lr, hr, lr_path, hr_path))
        if layout == "npy" and npy_as_counts:
            lr, hr = zscore_to_counts(lr), zscore_to_counts(hr)
        pairs.append(ImagePair(f"{fov:03d}_{ch}", fov, ch, lr, hr, lr_path, hr_path))
    checks.raise_problems(problems, root)
    log.info("%s: %d pairs (%s layout, avg%d)", root, len(pairs), layout, noise_level)
    return pairs


def zscore_to_counts(image: np.ndarray) -> np.ndarray:
    """Undo the W2S authors' global z-score: normalized-npy values -> camera counts (float32)."""
    return (image * np.float32(W2S_RAW_STD) + np.float32(W2S_RAW_MEAN)).astype(np.float32)


def load_split(data_cfg, which: str, progress: bool = True) -> list[ImagePair]:
    """Pairs of one split of a DataConfig: "train" (train_fovs minus val_fovs), "val" or "test"."""
    if which == "train":
        fovs: Sequence[int] = [f for f in data_cfg.train_fovs if f not in set(data_cfg.val_fovs)]
    elif which == "val":
        fovs = data_cfg.val_fovs
    elif which == "test":
        fovs = data_cfg.test_fovs
    else:
        raise ValueError(f"unknown split {which!r}")
    return load_pairs(data_cfg.root, data_cfg.layout, data_cfg.noise_level, data_cfg.channels, fovs,
                      progress=progress, npy_as_counts=data_cfg.npy_as_counts)


def check_pairs(root: Path, layout: str = "auto", noise_level: int = 1, channels: Optional[Iterable[int]] = None,
                fovs: Optional[Iterable[int]] = None, split: Optional[str] = None) -> list[ImagePair]:
    """Run every check on a data folder and return the pairs (``w2sr data check``)."""
    return load_pairs(root, layout, noise_level, channels, fovs, split)
