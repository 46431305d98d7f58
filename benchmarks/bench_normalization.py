#!/usr/bin/env python
"""Does a camera offset or gain change the output? And how far apart are the percentile definitions?

For each bundle given (``--bundle DIR``, repeatable: e.g. a percentile-mode and a fixed-mode export),
on a real fluorescence image that nobody here made (``--image``; by default StarDist's ``img2d.tif``,
a 512 x 512 nuclei image, taken from the stardist wheel on PyPI with ``pip download``):

1. invariance: the Pearson correlation of output(a * img + b) with output(img), for a camera offset
   (+1000), gains (x10, x0.5) and both, through ``w2sr predict``'s path and through DeepImageJ 3.1's
   (``w2sr.bundle.jdll``: JDLL 0.6.1's processing and tiles, ONNX Runtime); plus the largest difference
   in the output's own units;
2. percentile definitions (percentile bundles): JDLL's ``sorted[int(N p / 100)]`` (what every w2sr
   consumer uses) vs numpy's interpolated ``linear`` (bioimageio.core), on the real image and on
   simulated 512^2 and 2048^2 widefield images: the low/high values, the relative change of
   ``hi - lo``, and the largest change of the normalised input.

    .venv/bin/python benchmarks/bench_normalization.py --bundle bundle --bundle /tmp/bundle-fixed

Prints Markdown (and ``--out`` .md); the machine is printed with the figures.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine  # noqa: E402

CHANGES = [("+1000 offset", 1.0, 1000.0), ("x10 gain", 10.0, 0.0), ("x0.5 gain", 0.5, 0.0),
           ("x3 gain +500", 3.0, 500.0)]
CACHE = Path.home() / ".cache" / "w2sr" / "bench"


def stardist_image() -> Path:
    """img2d.tif from the stardist wheel (cached)."""
    target = CACHE / "stardist_img2d.tif"
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "stardist==0.9.2", "--no-deps", "-q", "-d", tmp],
                       check=True)
        [wheel] = Path(tmp).glob("stardist-*.whl")
        with zipfile.ZipFile(wheel) as z:
            target.write_bytes(z.read("stardist/data/images/img2d.tif"))
    return target


def runners(bundle: Path):
    import yaml

    from w2sr.bundle import jdll
    from w2sr.bundle.reader import read_bundle
    from w2sr.predict.model import Model, Settings
    from w2sr.bundle.runtimes import OnnxRuntime

    settings = Settings(bundle=str(bundle), progress=False)
    model = Model.load(settings)
    jmodel = jdll.JdllModel.from_rdf(yaml.safe_load((bundle / "rdf.yaml").read_text()))
    onnx = OnnxRuntime(read_bundle(bundle).onnx_path, providers=["CPUExecutionProvider"])
    return {
        "w2sr predict": lambda img: model.predict_slice(img, settings),
        "DeepImageJ 3.1 path": lambda img: jdll.predict_like_macro(jmodel, onnx.predict, img),
    }


def invariance(bundle: Path, image: np.ndarray) -> list[str]:
    from w2sr.bundle.reader import read_bundle

    mode = read_bundle(bundle).normalization.mode
    rows = []
    for path, run in runners(bundle).items():
        ref = run(image.astype(np.float32))
        for label, gain, offset in CHANGES:
            out = run((gain * image.astype(np.float64) + offset).astype(np.float32))
            r = float(np.corrcoef(out.ravel(), ref.ravel())[0, 1])
            rows.append(f"| {bundle.name} ({mode}) | {path} | {label} | {r:.6f} | {np.abs(out - ref).max():.3g} |")
    return rows


def percentile_rows(name: str, image: np.ndarray, low: float, high: float) -> str:
    from w2sr.core.normalization import jdll_percentile, scale_range

    x = image.astype(np.float32)
    jl, jh = jdll_percentile(x, low), jdll_percentile(x, high)
    nl, nh = (float(np.percentile(x, q, method="linear")) for q in (low, high))
    rel = abs((nh - nl) - (jh - jl)) / (jh - jl)
    diff = np.abs(scale_range(x, jl, jh) - scale_range(x, nl, nh)).max()
    return (f"| {name} | {x.shape[0]} x {x.shape[1]} | {jl:.6g} / {jh:.6g} | {nl:.6g} / {nh:.6g} | {rel:.2e} | "
            f"{diff:.2e} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", action="append", type=Path, required=True, help="bundle folder (repeatable)")
    ap.add_argument("--image", type=Path, help="a real 2D fluorescence TIFF (default: StarDist's img2d.tif)")
    ap.add_argument("--out", type=Path, help="also write the Markdown here")
    args = ap.parse_args(argv)

    import tifffile

    from w2sr.bundle.reader import read_bundle
    from training.data import simulator

    image_path = args.image or stardist_image()
    image = np.asarray(tifffile.imread(image_path))
    lines = ["# Normalisation: invariance and percentile definitions", "",
             f"machine: {describe_machine('numpy', 'onnxruntime', 'tensorflow')}", "",
             f"image: {image_path} ({image.shape[0]} x {image.shape[1]}, {image.dtype}, "
             f"range {image.min()}..{image.max()})", "",
             "## Invariance: correlation of output(a * img + b) with output(img)", "",
             "| bundle | path | change | correlation | max abs diff (output units) |", "|---|---|---|---|---|"]
    for bundle in args.bundle:
        lines += invariance(bundle, image)
    pct = [b for b in args.bundle if read_bundle(b).normalization.percentile]
    if pct:
        norm = read_bundle(pct[0]).normalization
        rng = np.random.default_rng(0)
        sims = {}
        for side in (512, 2048):
            wf, _ = simulator.clean_pair(rng, side, 0)
            sims[f"simulated widefield {side}"] = simulator.noisy_averages(rng, wf * np.float32(simulator.GAIN), 1)[1]
        lines += ["", f"## Percentiles {norm.low_percentile:g} / {norm.high_percentile:g}: JDLL (w2sr) vs numpy linear "
                      f"(bioimageio.core)", "",
                  "| image | size | JDLL lo / hi | numpy linear lo / hi | rel. change of hi - lo | max change of "
                  "normalised input |", "|---|---|---|---|---|---|",
                  percentile_rows(image_path.name, image, norm.low_percentile, norm.high_percentile)]
        lines += [percentile_rows(k, v, norm.low_percentile, norm.high_percentile) for k, v in sims.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
