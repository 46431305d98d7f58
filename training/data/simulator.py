"""W2S-like synthetic pairs, so the project can be trained, tested and demonstrated without W2S.

Why this exists: the real data set (tens of GB) cannot be downloaded here, yet training needs pairs
that behave like W2S: a noisy, diffraction-limited widefield image and a sharper SIM target at twice
the sampling, where the target holds detail the input has lost (so bicubic upsampling is clearly worse).

Model (all seeded, deterministic per (seed, FOV, channel)):

* object on a fine grid (4 fine pixels per LR pixel): microtubule-like smooth filaments, puncta,
  ring-shaped vesicles, nuclei-like textured blobs and a smooth background haze;
* widefield = object x incoherent circular-pupil OTF (cutoff ``WF_CUTOFF`` cycles per LR pixel,
  below LR Nyquist) x LR pixel integration, sampled at LR pixels (exact spectral cropping: the image
  is band-limited, so cropping the spectrum equals sampling);
* SIM target = the same object x an OTF with ``SIM_FACTOR`` (2) times the widefield support x HR
  pixel integration, sampled at HR pixels (2x);
* camera: ``CAMERA_OFFSET`` baseline + ``GAIN`` x Poisson(photons) + Gaussian read noise per frame;
  avgN = mean of N frames, so noise falls ~1/sqrt(N). The npy layout draws avgN exactly in
  distribution (a sum of N Poisson frames is Poisson(N lambda)), with nested frame sets like W2S
  (avg2 within avg4 ... within avg400; avg1 is frame 249), which avoids simulating 400 frames.

Units: widefield counts (ADU) with W2S-like statistics (mean ~150, std ~60); the SIM target is in the
same units (object x SIM PSF + the same baseline), so a bicubic baseline can be compared directly.
The npy layout is z-scored with the W2S authors' global constants, like the real normalised release.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft
from tqdm import tqdm

from training.config import NOISE_LEVELS, W2S_RAW_MEAN, W2S_RAW_STD, SimulatorConfig
from training.data.layouts import AVG_FRAMES
from w2sr.core.files import atomic_replace_dir
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

SIMULATOR_VERSION = 1
MARKER = "simulation.json"

#: fine (object) pixels per LR pixel; HR pixels are 2 fine pixels
FINE = 4
#: widefield OTF cutoff in cycles per LR pixel (LR Nyquist is 0.5)
WF_CUTOFF = 0.42
#: SIM OTF support relative to widefield
SIM_FACTOR = 2.0
#: camera model (per frame)
CAMERA_OFFSET = 100.0
GAIN = 8.0          # ADU per photon
READ_NOISE = 4.0    # ADU rms
#: fine-grid sigma of the fluorophore distribution around a filament axis / punctum centre
OBJECT_SIGMA = 1.0
#: 8-bit mapping of the PNG layout (counts): value = (c - lo) / (hi - lo) * 255, clipped
PNG_LR_RANGE = (90.0, 600.0)
PNG_SIM_RANGE = (90.0, 900.0)


@dataclass(frozen=True)
class ChannelStyle:
    """How much of each structure a channel shows (per 512 x 512 LR field of view)."""

    filaments: float
    puncta: float
    vesicles: float
    nuclei: float
    background: float
    brightness: float


#: channel 0: microtubules with some puncta and faint nuclei (all structures, for 1-channel demos);
#: channel 1: vesicles/puncta; channel 2: nuclei-dominated (like a DNA stain).
CHANNEL_STYLES = (
    ChannelStyle(filaments=50, puncta=250, vesicles=40, nuclei=2.0, background=1.0, brightness=1.0),
    ChannelStyle(filaments=10, puncta=900, vesicles=200, nuclei=1.0, background=1.2, brightness=1.0),
    ChannelStyle(filaments=0, puncta=80, vesicles=10, nuclei=7.0, background=0.8, brightness=1.0),
)

#: object intensities, in ADU above the camera baseline (calibrated so a channel-0 FOV has
#: W2S-like counts: mean ~150, std ~60 incl. the baseline). Line densities are per fine pixel of
#: length, puncta weights are integrals over the spot; a widefield PSF spreads them over ~33 fine px.
FILAMENT_DENSITY = 1500.0
VESICLE_DENSITY = 500.0
PUNCTUM_WEIGHT = 4000.0
NUCLEUS_LEVEL = 90.0
BACKGROUND_LEVEL = 20.0
INTENSITY_SCALE = 1.0


# --------------------------------------------------------------------------------------------
# object rendering
# --------------------------------------------------------------------------------------------
def _splat(layer: np.ndarray, ys: np.ndarray, xs: np.ndarray, ws: np.ndarray) -> None:
    """Add point masses with bilinear weights (periodic edges, matching the FFT blur)."""
    n0, n1 = layer.shape
    y0 = np.floor(ys).astype(np.int64)
    x0 = np.floor(xs).astype(np.int64)
    fy = (ys - y0).astype(np.float32)
    fx = (xs - x0).astype(np.float32)
    flat = np.zeros(n0 * n1, np.float64)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            idx = ((y0 + dy) % n0) * n1 + (x0 + dx) % n1
            flat += np.bincount(idx, weights=ws * wy * wx, minlength=n0 * n1)
    layer += flat.reshape(n0, n1).astype(np.float32)


def _filaments(rng: np.random.Generator, n: int, count: int):
    """Smooth, persistent random curves (microtubule-like): integrated correlated turning angles."""
    step = 0.5
    ys, xs, ws = [], [], []
    for _ in range(count):
        length = rng.uniform(120, 700) * FINE            # fine pixels
        k = max(int(length / step), 2)
        curvature = rng.normal(0, 4e-4)
        turn = rng.normal(0, 0.012, k)
        # low-pass the turning so curves bend smoothly rather than jitter
        turn = np.convolve(turn, np.ones(40) / math.sqrt(40), mode="same")
        theta = rng.uniform(0, 2 * math.pi) + np.cumsum(turn + curvature)
        y = rng.uniform(0, n) + np.cumsum(np.sin(theta)) * step
        x = rng.uniform(0, n) + np.cumsum(np.cos(theta)) * step
        w = rng.uniform(0.5, 1.5) * FILAMENT_DENSITY * step
        ys.append(y)
        xs.append(x)
        ws.append(np.full(k, w))
    if not ys:
        return (np.zeros(0),) * 3
    return np.concatenate(ys), np.concatenate(xs), np.concatenate(ws)


def _puncta(rng: np.random.Generator, n: int, count: int):
    ys = rng.uniform(0, n, count)
    xs = rng.uniform(0, n, count)
    ws = rng.lognormal(math.log(PUNCTUM_WEIGHT), 0.6, count)
    return ys, xs, ws


def _vesicles(rng: np.random.Generator, n: int, count: int):
    """Rings of 1-4 LR pixels radius: resolvable by SIM, a blob in widefield."""
    ys, xs, ws = [], [], []
    for _ in range(count):
        r = rng.uniform(1.0, 4.0) * FINE
        k = max(int(2 * math.pi * r / 0.5), 8)
        a = np.linspace(0, 2 * math.pi, k, endpoint=False)
        cy, cx = rng.uniform(0, n, 2)
        ys.append(cy + r * np.sin(a))
        xs.append(cx + r * np.cos(a))
        ws.append(np.full(k, rng.uniform(0.5, 1.5) * VESICLE_DENSITY * 0.5))
    if not ys:
        return (np.zeros(0),) * 3
    return np.concatenate(ys), np.concatenate(xs), np.concatenate(ws)


def _add_nucleus(rng: np.random.Generator, layer: np.ndarray) -> None:
    """A textured ellipse with a soft edge and a few nucleoli, rendered on its bounding box."""
    n = layer.shape[0]
    a, b = rng.uniform(22, 55, 2) * FINE
    phi = rng.uniform(0, math.pi)
    cy, cx = rng.uniform(0, n, 2)
    half = int(min(max(a, b) * 1.15, n / 2 - 1))
    off = np.arange(-half, half + 1, dtype=np.float32)
    dy, dx = np.meshgrid(off, off, indexing="ij")
    u = dx * math.cos(phi) + dy * math.sin(phi)
    v = -dx * math.sin(phi) + dy * math.cos(phi)
    r = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    mask = 1.0 / (1.0 + np.exp(np.clip((r - 1.0) / 0.04, -30, 30)))
    texture = np.ones_like(r)
    for _ in range(10):  # chromatin-like texture
        wavelength = rng.uniform(2, 15) * FINE
        ang = rng.uniform(0, 2 * math.pi)
        texture += 0.07 * np.cos(2 * math.pi / wavelength * (dx * math.cos(ang) + dy * math.sin(ang))
                                 + rng.uniform(0, 2 * math.pi))
    for _ in range(rng.integers(1, 4)):  # nucleoli: darker spots
        ny, nx = rng.uniform(-0.5, 0.5, 2) * np.array([b, a])
        rad = rng.uniform(2, 5) * FINE
        texture -= 0.5 * np.exp(-((dy - ny) ** 2 + (dx - nx) ** 2) / (2 * rad**2))
    patch = (mask * np.clip(texture, 0.1, None) * rng.uniform(0.5, 1.5) * NUCLEUS_LEVEL).astype(np.float32)
    iy = (np.arange(-half, half + 1) + int(cy)) % n
    ix = (np.arange(-half, half + 1) + int(cx)) % n
    layer[np.ix_(iy, ix)] += patch


def _background(rng: np.random.Generator, n: int, level: float) -> np.ndarray:
    """Out-of-focus haze: a constant plus a few very low-frequency waves."""
    y = np.arange(n, dtype=np.float32)[:, None]
    x = np.arange(n, dtype=np.float32)[None, :]
    bg = np.full((n, n), level, np.float32)
    for _ in range(3):
        period = rng.uniform(200, 800) * FINE
        ang = rng.uniform(0, 2 * math.pi)
        phase = rng.uniform(0, 2 * math.pi)
        bg += np.float32(level * 0.25) * np.cos(
            np.float32(2 * math.pi / period) * (x * np.float32(math.cos(ang)) + y * np.float32(math.sin(ang)))
            + np.float32(phase)
        ).astype(np.float32)
    return bg


def render_object(rng: np.random.Generator, lr_size: int, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine-grid object as (sharp point/line layer, smooth layer); both float32 (4*lr, 4*lr)."""
    style = CHANNEL_STYLES[channel % len(CHANNEL_STYLES)]
    n = lr_size * FINE
    area = (lr_size / 512.0) ** 2
    sharp = np.zeros((n, n), np.float32)
    for maker, density in ((_filaments, style.filaments), (_puncta, style.puncta), (_vesicles, style.vesicles)):
        count = int(rng.poisson(density * area))
        ys, xs, ws = maker(rng, n, count)
        if len(ys):
            _splat(sharp, ys, xs, ws)
    smooth = _background(rng, n, style.background * BACKGROUND_LEVEL)
    for _ in range(int(rng.poisson(style.nuclei * area))):
        _add_nucleus(rng, smooth)
    return sharp, smooth


# --------------------------------------------------------------------------------------------
# optics
# --------------------------------------------------------------------------------------------
def _incoherent_otf(rho: np.ndarray, cutoff: float) -> np.ndarray:
    """OTF of an aberration-free circular pupil (autocorrelation of a disc), zero beyond cutoff."""
    s = np.clip(rho / cutoff, 0.0, 1.0)
    return (2 / np.pi) * (np.arccos(s) - s * np.sqrt(1 - s * s))


def _image(spectrum: np.ndarray, n: int, out: int, cutoff_fine: float, pixel_fine: int) -> np.ndarray:
    """Blur a fine-grid rfft2 spectrum by an OTF, integrate over pixels, sample at ``out`` pixels.

    The result is band-limited below the output Nyquist frequency, so keeping only the output's
    frequencies (spectral cropping) is exact sampling.
    """
    pos, neg, cols = (out + 1) // 2, out // 2, out // 2 + 1   # the frequencies an out x out grid holds
    fy = np.concatenate([np.arange(pos), np.arange(-neg, 0)]).astype(np.float32)[:, None] / n
    fx = np.arange(cols, dtype=np.float32)[None, :] / n
    rho = np.sqrt(fy**2 + fx**2)
    transfer = _incoherent_otf(rho, cutoff_fine) * np.sinc(fy * pixel_fine) * np.sinc(fx * pixel_fine)
    cropped = np.concatenate([spectrum[:pos, :cols], spectrum[n - neg:, :cols]], axis=0)
    img = scipy.fft.irfft2(cropped * transfer.astype(np.float32), s=(out, out), workers=1)
    return (img * (out * out) / (n * n)).astype(np.float32)


def clean_pair(rng: np.random.Generator, lr_size: int, channel: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free (widefield, SIM) signal in ADU above the baseline, float32 (s, s) and (2s, 2s)."""
    sharp, smooth = render_object(rng, lr_size, channel)
    n = lr_size * FINE
    spec = scipy.fft.rfft2(sharp, workers=1)
    fy = scipy.fft.fftfreq(n).astype(np.float32)[:, None]
    fx = scipy.fft.rfftfreq(n).astype(np.float32)[None, :]
    spec *= np.exp(np.float32(-2 * math.pi**2 * OBJECT_SIGMA**2) * (fy**2 + fx**2))
    spec += scipy.fft.rfft2(smooth, workers=1)
    del sharp, smooth
    cutoff = WF_CUTOFF / FINE
    brightness = CHANNEL_STYLES[channel % len(CHANNEL_STYLES)].brightness * rng.lognormal(0.0, 0.15)
    scale = np.float32(INTENSITY_SCALE * brightness)
    wf = _image(spec, n, lr_size, cutoff, FINE) * scale
    sim = _image(spec, n, 2 * lr_size, cutoff * SIM_FACTOR, FINE // 2) * scale
    return np.clip(wf, 0, None), np.clip(sim, 0, None)


# --------------------------------------------------------------------------------------------
# camera
# --------------------------------------------------------------------------------------------
def _frame_sum(rng: np.random.Generator, photons: np.ndarray, frames: float) -> np.ndarray:
    """Sum over ``frames`` camera frames in ADU above the baseline (Poisson x gain + read noise)."""
    shot = rng.poisson(photons * frames).astype(np.float32) * np.float32(GAIN)
    read = rng.normal(0.0, READ_NOISE * math.sqrt(frames), photons.shape).astype(np.float32)
    return shot + read


def noisy_averages(rng: np.random.Generator, signal_adu: np.ndarray, noise_level: int) -> dict[int, np.ndarray]:
    """avgN images (ADU incl. baseline) for N in W2S's levels, with W2S's nested frame sets.

    Each simulated frame has the noise of a real avg``noise_level`` image (``noise_level`` real frames).
    """
    photons = signal_adu / np.float32(GAIN)
    k = float(noise_level)
    s2 = _frame_sum(rng, photons, 2 * k)            # frames 0-1
    s4 = s2 + _frame_sum(rng, photons, 2 * k)       # frames 0-3
    s8 = s4 + _frame_sum(rng, photons, 4 * k)
    s16 = s8 + _frame_sum(rng, photons, 8 * k)
    s249 = _frame_sum(rng, photons, k)              # frame 249 (avg1)
    s400 = s16 + s249 + _frame_sum(rng, photons, 383 * k)
    sums = {1: s249, 2: s2, 4: s4, 8: s8, 16: s16, 400: s400}
    return {lvl: (s / np.float32(lvl * k) + np.float32(CAMERA_OFFSET)).astype(np.float32) for lvl, s in sums.items()}


def raw_frames(rng: np.random.Generator, signal_adu: np.ndarray, noise_level: int, n_frames: int) -> np.ndarray:
    """A (n_frames, H, W) uint16 stack like W2S's wf_channel*.npy, each frame at avg``noise_level`` noise."""
    photons = signal_adu / np.float32(GAIN)
    out = np.empty((n_frames,) + signal_adu.shape, np.uint16)
    for i in range(n_frames):
        frame = _frame_sum(rng, photons, noise_level) / np.float32(noise_level) + np.float32(CAMERA_OFFSET)
        out[i] = np.clip(np.rint(frame), 0, 65535).astype(np.uint16)
    return out


# --------------------------------------------------------------------------------------------
# layouts
# --------------------------------------------------------------------------------------------
def png_split(n_fovs: int) -> tuple[list[int], list[int]]:
    """Train/test FOVs of the PNG layout: the first two thirds train, like W2S's 80/40."""
    n_train = max(1, min(n_fovs - 1, round(n_fovs * 2 / 3)))
    return list(range(1, n_train + 1)), list(range(n_train + 1, n_fovs + 1))


def _to_png8(counts: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    lo, hi = lo_hi
    return np.clip(np.rint((counts - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _zscore(counts: np.ndarray) -> np.ndarray:
    return ((counts - np.float32(W2S_RAW_MEAN)) / np.float32(W2S_RAW_STD)).astype(np.float32)


def _write_fov(cfg: SimulatorConfig, stage: Path, fov: int, channel: int, test_fovs: set[int]) -> dict:
    ss = np.random.SeedSequence([cfg.seed, fov, channel, SIMULATOR_VERSION])
    obj_rng, noise_rng = (np.random.default_rng(s) for s in ss.spawn(2))
    wf, sim = clean_pair(obj_rng, cfg.lr_size, channel)
    hr = sim + np.float32(CAMERA_OFFSET)
    name = f"{fov:03d}_{channel}"
    if cfg.layout == "raw":
        folder = stage / f"Image{fov:03d}"
        folder.mkdir(exist_ok=True)
        stack = raw_frames(noise_rng, wf, cfg.noise_level, cfg.n_frames)
        np.save(folder / f"wf_channel{channel}.npy", stack)
        np.save(folder / f"sim_channel{channel}.npy", hr.astype(np.float32))
        lr_mean, lr_std = float(stack[0].mean()), float(stack[0].std())
    else:
        avgs = noisy_averages(noise_rng, wf, cfg.noise_level)
        lr_mean, lr_std = float(avgs[1].mean()), float(avgs[1].std())
        if cfg.layout == "npy":
            for lvl, img in avgs.items():
                np.save(stage / f"avg{lvl}" / f"{name}.npy", _zscore(img))
            np.save(stage / "sim" / f"{name}.npy", _zscore(hr))
        else:  # png
            from PIL import Image

            split = "test" if fov in test_fovs else "train"
            for lvl, img in avgs.items():
                Image.fromarray(_to_png8(img, PNG_LR_RANGE), mode="L").save(stage / split / f"avg{lvl}" / f"{name}.png")
            Image.fromarray(_to_png8(hr, PNG_SIM_RANGE), mode="L").save(stage / split / "sim" / f"{name}.png")
    return {"lr_mean": lr_mean, "lr_std": lr_std, "hr_mean": float(hr.mean()), "hr_std": float(hr.std())}


def simulate_dataset(cfg: SimulatorConfig, root: Path, force: bool = False) -> Path:
    """Write a W2S-like data set in ``cfg.layout`` under ``root``; return ``root``.

    Built in a staging folder and moved into place at the end, so ``root`` is never half-written.
    An existing ``root`` is replaced only if this simulator wrote it (``simulation.json``); if that
    file records the same configuration the data are reused (``force`` re-simulates anyway).
    """
    root = Path(root)
    record = {"simulator_version": SIMULATOR_VERSION, "config": cfg.model_dump(mode="json")}
    if root.exists():
        marker = root / MARKER
        if not marker.is_file():
            if root.is_dir() and not any(root.iterdir()):
                pass  # an empty folder is fine to fill
            else:
                raise UserError(f"{root}: exists and was not written by the simulator; refusing to replace it")
        elif not force:
            try:
                old = json.loads(marker.read_text())
            except (OSError, ValueError):
                old = {}
            if {k: old.get(k) for k in record} == record:
                log.info("%s already holds this simulation (%s); reusing it", root, MARKER)
                return root
    if cfg.layout == "raw" and cfg.n_frames < 400:
        readable = [lvl for lvl, (a, b) in AVG_FRAMES.items() if b <= cfg.n_frames]
        log.warning("raw layout with %d frames per FOV: only avg%s can be computed (W2S has 400)",
                    cfg.n_frames, ", avg".join(map(str, readable)) if readable else " none")

    train_fovs, test_fovs = png_split(cfg.n_fovs)
    root.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{root.name}.staging-", dir=root.parent))
    t0 = time.perf_counter()
    try:
        if cfg.layout == "npy":
            for lvl in NOISE_LEVELS:
                (stage / f"avg{lvl}").mkdir()
            (stage / "sim").mkdir()
        elif cfg.layout == "png":
            for split in ("train", "test"):
                for sub in [f"avg{lvl}" for lvl in NOISE_LEVELS] + ["sim"]:
                    (stage / split / sub).mkdir(parents=True)
        stats = []
        jobs = [(fov, ch) for fov in range(1, cfg.n_fovs + 1) for ch in range(cfg.channels)]
        for fov, ch in tqdm(jobs, desc=f"simulate ({cfg.layout})", unit="image", leave=False):
            stats.append(_write_fov(cfg, stage, fov, ch, set(test_fovs)))
        record["stats"] = {k: float(np.mean([s[k] for s in stats])) for k in stats[0]}
        record["units"] = (
            "z-score with the W2S constants (counts - %r) / %r" % (W2S_RAW_MEAN, W2S_RAW_STD)
            if cfg.layout == "npy" else "8-bit, LR counts %s, SIM counts %s -> 0..255" % (PNG_LR_RANGE, PNG_SIM_RANGE)
            if cfg.layout == "png" else "camera counts (ADU); SIM in the same units"
        )
        if cfg.layout == "png":
            record["train_fovs"], record["test_fovs"] = train_fovs, test_fovs
        (stage / MARKER).write_text(json.dumps(record, indent=2))
        atomic_replace_dir(stage, root)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    log.info("simulated %d image pairs (%s layout, LR %dx%d) in %.1f s -> %s",
             len(jobs), cfg.layout, cfg.lr_size, cfg.lr_size, time.perf_counter() - t0, root)
    return root
