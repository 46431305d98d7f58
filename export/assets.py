"""What a bundle carries besides weights and rdf: the sample image and the test tensors made from it,
the sample TIFFs, the cover, the DeepImageJ 2.1 normalisation macros and the Fiji macros."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from training.run_folder import TrainedModel
from w2sr.core.contract import POST_MACRO, PRE_MACRO, TEST_INPUT, TEST_OUTPUT, ZOO_TEST_INPUT, ZOO_TEST_OUTPUT
from w2sr.core.errors import UserError
from w2sr.core.normalization import EPS, Normalization
from w2sr.core.tiling import center_crop

log = logging.getLogger(__name__)

#: the cover shows at least this many input px a side (DeepImageJ's tile, hence the test input, is smaller)
COVER_SIDE = 256


def fiji_macros() -> list[Path]:
    """The Fiji macros every bundle carries: package data of ``fiji_macros``, so a non-editable
    install has them too. Missing macros are an installation defect, not an option."""
    from importlib.resources import files

    root = files("fiji_macros")
    macros = sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".ijm"))
    if not macros:
        raise UserError(f"{root}: the installed w2sr has no Fiji macros (fiji_macros/*.ijm); reinstall it")
    return macros


def _synthetic_sample(size: int, mean: Optional[float], std: Optional[float], seed: int = 0) -> np.ndarray:
    """A W2S-like widefield image from the simulator, rescaled to the training statistics (fixed
    mode), or left in the simulator's camera counts (percentile mode: ``mean`` None)."""
    rng = np.random.default_rng(seed)
    try:
        from training.data import simulator

        wf, _ = simulator.clean_pair(rng, size, 0)
        img = simulator.noisy_averages(rng, wf * np.float32(simulator.GAIN), 1)[1]
    except Exception as exc:  # simulator absent or changed: smooth random field
        log.debug("simulator not usable for the sample (%s); using a smooth random field", exc)
        from scipy.ndimage import gaussian_filter

        img = gaussian_filter(rng.standard_normal((size, size)), 3) + 0.1 * rng.standard_normal((size, size))
    img = np.asarray(img, np.float64)
    if mean is not None and std is not None:
        img = (img - img.mean()) / (img.std() + 1e-12) * std + mean
    return img.astype(np.float32)


def sample_image(src: "TrainedModel", sample: Optional[Path], size: int) -> tuple[np.ndarray, str]:
    """The image used for test tensors, cover and halo: given, else a test FOV of the run's data,
    else a simulated one (with the run's input statistics)."""
    if sample is not None:
        from w2sr.core.images import read_image_2d

        return read_image_2d(sample), str(sample)
    cfg = src.cfg
    roots = [Path(cfg.data.root), src.run_dir / cfg.data.root, src.run_dir.parent / cfg.data.root]
    for root in roots:
        if not root.is_dir():
            continue
        try:
            from training.data.layouts import load_pairs

            pairs = load_pairs(root, cfg.data.layout, cfg.data.noise_level, cfg.data.channels[:1],
                               cfg.data.test_fovs[:1], progress=False,
                               npy_as_counts=cfg.data.npy_as_counts)
            if pairs:
                return np.asarray(pairs[0].lr, np.float32), f"{pairs[0].lr_source} (test FOV {pairs[0].fov})"
        except Exception as exc:
            log.info("could not read a test image from %s (%s)", root, str(exc).splitlines()[0] if str(exc) else exc)
    n = cfg.normalization
    log.info("no data found for the sample image; simulating a %dx%d widefield image", size, size)
    return _synthetic_sample(size, n.input_mean, n.input_std), "simulated (training.data.simulator)"


def write_cover(path: Path, inp: np.ndarray, out: np.ndarray, what: str = "2x SR + denoised") -> None:
    """input (nearest, to the output's size) | output, side by side, each with its own 0.5-99.5 %
    display range. 2D planes, or (H, W, C): the first channel of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def disp(a: np.ndarray) -> np.ndarray:
        lo, hi = np.percentile(a, [0.5, 99.5])
        return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)

    inp, out = (a if a.ndim == 2 else a[..., 0] for a in (np.asarray(inp), np.asarray(out)))
    k = max(1, out.shape[0] // inp.shape[0])
    up = np.repeat(np.repeat(inp, k, 0), k, 1)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3), dpi=100)
    for ax, img, title in ((axes[0], up, f"input {inp.shape[0]} x {inp.shape[1]}"),
                           (axes[1], out, f"output ({what}) {out.shape[0]} x {out.shape[1]}")):
        ax.imshow(disp(img), cmap="magma", interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def zoo_test_side(maths: Normalization, side: int) -> int:
    """The zoo package's test-tensor side: near ``side``, one whose pixel count makes bioimageio.core's
    and JDLL's percentiles the same element (``definitions_agree``), so that ``bioimageio test`` of the
    zip checks the weights and the processing, not the two tools' percentile definitions (which differ
    on other sizes: docs/consumers.md). ``side`` itself when none is found nearby or in fixed mode."""
    from w2sr.core.normalization import definitions_agree

    if not maths.percentile:
        return side
    for s in range(side, side // 2, -1):
        if definitions_agree(s * s, (maths.low_percentile, maths.high_percentile)):
            return s
    return side


def write_test_data(stage: Path, image: np.ndarray, size: int, maths: Normalization,
                    predict: Callable[[np.ndarray], np.ndarray],
                    caption: str = "2x SR + denoised") -> tuple[np.ndarray, np.ndarray]:
    """Test tensors (raw input, output in output units) and the same as ImageJ TIFFs, from the central
    ``size`` x ``size`` window of ``image`` (DeepImageJ's tile: the collection's DeepImageJ check runs the
    sample input and compares with the test output); the cover and the zoo package's test tensors from a central
    window of at least ``COVER_SIDE`` px. ``predict`` runs the exported weights."""
    import tifffile

    raw = center_crop(image, size, mirror=True)[None, :, :, None].astype(np.float32)
    y = maths.output(predict(maths.input(raw[0, :, :, 0])[None, :, :, None])).astype(np.float32)
    np.save(stage / TEST_INPUT, raw)
    np.save(stage / TEST_OUTPUT, y)
    # byxc-shaped (tifffile's shaped metadata, one 2D page): bioimageio.core maps its axes right (an
    # ImageJ 2D TIFF it reads as 1 x 1 x W x H and fails on), ImageJ and DeepImageJ open one 2D image
    tifffile.imwrite(stage / "sample_input.tif", raw)
    tifffile.imwrite(stage / "sample_output.tif", y)
    side = zoo_test_side(maths, min(max(size, COVER_SIDE), *image.shape))
    cover_in = center_crop(image, side, mirror=True).astype(np.float32)
    cover_out = maths.output(predict(maths.input(cover_in)[None, :, :, None]))[0, :, :, 0]
    np.save(stage / ZOO_TEST_INPUT, cover_in[None, :, :, None])
    np.save(stage / ZOO_TEST_OUTPUT, cover_out[None, :, :, None].astype(np.float32))
    write_cover(stage / "cover.png", cover_in, cover_out, caption)
    return raw, y


def write_macros(stage: Path, maths: Normalization) -> tuple[list[str], list[str]]:
    """The DeepImageJ 2.1 pre/post macros and the Fiji macros (``fiji_macros/``); returns the paths
    of each inside the bundle (rdf attachments)."""
    pre_txt, post_txt = deepimagej_macros(maths)
    (stage / PRE_MACRO).write_text(pre_txt)
    (stage / POST_MACRO).write_text(post_txt)
    (stage / "fiji_macros").mkdir()
    names = []
    for m in fiji_macros():
        shutil.copy2(m, stage / "fiji_macros" / m.name)
        names.append(f"fiji_macros/{m.name}")
    return [PRE_MACRO, POST_MACRO], names


def deepimagej_macros(norm: Normalization) -> tuple[str, str]:
    """ImageJ macros doing exactly the rdf's pre- and postprocessing (for DeepImageJ 2.1)."""
    head = "// {} of the w2sr model for DeepImageJ 2.1 (DeepImageJ 3 uses the rdf's own ops).\n"
    none = "// none: {}\n"
    if norm.mode == "none":
        return (head.format("Preprocessing") + none.format("the network takes the raw values"),
                head.format("Postprocessing") + none.format("outputs are the network's own"))
    if norm.percentile:
        lo, hi = _nine(norm.low_percentile), _nine(norm.high_percentile)
        pre = head.format("Preprocessing") + f"""// scale_range, per image: x -> (x - p{lo!r}) / (p{hi!r} - p{lo!r} + 1e-6), where pP is the sorted
// pixel values' element int(N * P / 100) (JDLL's percentile, w2sr/core/normalization.py).
// Converted to 32-bit first: on 8/16-bit images ImageJ would round every step to integers.
if (bitDepth() != 32) run("32-bit");
w = getWidth(); h = getHeight(); n = w * h;
v = newArray(n);
for (y = 0; y < h; y++) for (x = 0; x < w; x++) v[y * w + x] = getPixel(x, y);
Array.sort(v);
lo = v[minOf(floor(n * ({lo!r} / 100)), n - 1)];
hi = v[minOf(floor(n * ({hi!r} / 100)), n - 1)];
run("Subtract...", "value=" + d2s(lo, 9) + " slice");
run("Divide...", "value=" + d2s(hi - lo + 1e-6, 9) + " slice");
"""
        post = head.format("Postprocessing") + "// none: outputs stay in normalised units (about 0 = background, 1 = bright)\n"
        return pre, post
    pre = head.format("Preprocessing") + f"""// zero_mean_unit_variance, fixed: x -> (x - {_nine(norm.input_mean)}) / ({_nine(norm.input_std)} + 1e-6)
// Converted to 32-bit first: on 8/16-bit images ImageJ would round every step to integers.
if (bitDepth() != 32) run("32-bit");
run("Subtract...", "value={_nine(norm.input_mean)!r} slice");
run("Divide...", "value={_nine(float(norm.input_std) + EPS)!r} slice");
"""
    if not norm.maps_output:
        return pre, head.format("Postprocessing") + none.format("outputs are the network's own")
    post = head.format("Postprocessing") + f"""// scale_linear: y -> y * {_nine(norm.target_std)} + {_nine(norm.target_mean)} (network units -> SIM intensity units)
if (bitDepth() != 32) run("32-bit");
run("Multiply...", "value={_nine(norm.target_std)!r} slice");
run("Add...", "value={_nine(norm.target_mean)!r} slice");
"""
    return pre, post


def _nine(x: float) -> float:
    """Nine significant digits: what the macros and the rdf write."""
    return float(f"{float(x):.9g}")
