"""``w2sr export`` (run -> DeepImageJ / BioImage.IO bundle) and ``w2sr validate`` (check a bundle).

TensorFlow, ONNX and bioimageio are imported inside the handlers only.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from w2sr.core.contract import RULE

log = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace(" ", "").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 333x517), got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def _author(text: str) -> dict:
    name, _, affiliation = text.partition(";")
    if not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name' or 'Name;Affiliation', got {text!r}")
    return {"name": name.strip(), **({"affiliation": affiliation.strip()} if affiliation.strip() else {})}


def add_bundle_options(p) -> None:
    """The options ``w2sr export`` and ``w2sr bundle`` share (one exporter behind both)."""
    p.add_argument("--out", type=Path, default=Path("bundle"), metavar="DIR",
                   help="bundle folder to write (default: bundle/)")
    p.add_argument("--name", default=None,
                   help="model name in the rdf and the package file names (default: the config's name / the file's)")
    p.add_argument("--force", action="store_true",
                   help="replace an existing bundle of another model name (a bundle of the same name is "
                        "updated anyway; a folder that is not a w2sr bundle is never replaced)")
    p.add_argument("--sample", type=Path, default=None, metavar="IMAGE",
                   help="2D image (tif/npy/png, raw units) for the test tensors, cover and halo measurement "
                        "(default: a test FOV of the run's data, else a simulated image; w2sr bundle: a synthetic one)")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="DeepImageJ's tile side in input px: the rdf fixes the input at PX x PX (step 0) so "
                        "DeepImageJ 3.1 tiles every image and its memory stays that of one tile; also the "
                        "size of the test tensors (default 512 + 2 x halo: a 512 x 512 image is one tile; run "
                        "directly, DeepImageJ shifts odd sides below 512 by one pixel - the Fiji macro does not)")
    p.add_argument("--halo", type=int, default=None, metavar="PX",
                   help="use this halo (input px) instead of measuring it; still checked")
    p.add_argument("--author", dest="authors", type=_author, action="append", default=None, metavar="'NAME;AFFIL'",
                   help="model author (repeatable; default 'w2sr contributors')")
    p.add_argument("--license", default=None, help="SPDX license id of the weights (default MIT)")
    p.add_argument("--odd-size", dest="odd_sizes", type=_size, action="append", default=None, metavar="HxW",
                   help="image size for the odd-size parity check (repeatable; default 333x517)")
    p.add_argument("--engines", action="store_true",
                   help="also run the bundle in DeepImageJ's old runtimes (w2sr check-engines; builds environments)")
    p.add_argument("--quick", action="store_true",
                   help="development only: skip 'bioimageio test' and the subprocess timing")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a trained run as a DeepImageJ / BioImage.IO bundle (validated before it is written)",
        description=(
            "Turn a training run (RUN_DIR/generator.keras + RUN_DIR/config.yaml) into a model bundle:\n"
            "  tf_saved_model.zip  frozen-graph SavedModel (runs in DeepImageJ's TF 1.15 / 2.7 / 2.10)\n"
            "  weights.onnx        ONNX opset 17 (input 'input', output 'output', dynamic b/y/x)\n"
            "  rdf.yaml            BioImage.IO description, format 0.4.10, with the DeepImageJ config block\n"
            "  test/sample tensors, cover.png, README.md, parity.md/json, ImageJ macros\n"
            "  packages/NAME_deepimagej.zip (for Fiji) and packages/NAME_zoo-0.5.zip (for the model zoo)\n"
            "The halo is measured (tiled vs whole image within the zoo tolerance) and built into the graph as\n"
            "symmetric padding, so DeepImageJ 3.1's mirror-padded tiles give the same pixels as whole-image\n"
            "inference, edges included. The bundle is built in a\n"
            "temporary folder, checked with 'bioimageio test' (every weight format, and the 0.5 package),\n"
            "a parity matrix (Keras / SavedModel / ONNX Runtime / stored test output, tiled vs whole) and\n"
            "odd-size and 8/16-bit inputs, and only then moved to --out."
        ),
        epilog=(
            "Examples:\n"
            "  w2sr export runs/demo --out bundle/\n"
            "  w2sr export runs/demo/generator.keras --config runs/demo/config.yaml --out bundle/ --force\n"
            "An existing --out is replaced (only after the new bundle validated) if it is a bundle written by\n"
            "'w2sr export' of the same model name, or of another name with --force; any other non-empty folder\n"
            "is refused. Takes about a minute for a small model (most of it\n"
            "'bioimageio test'); the full 23-block model takes several minutes on a CPU."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", type=Path,
                   help="training run folder (generator.keras, config.yaml), or a .keras file (then give --config)")
    p.add_argument("--config", type=Path, default=None, metavar="YAML",
                   help="resolved training config with the normalisation (default: RUN_DIR/config.yaml)")
    add_bundle_options(p)
    p.set_defaults(handler=_handle_export)

    b = subparsers.add_parser(
        "bundle",
        help="turn ANY 2D image-to-image Keras model into a validated DeepImageJ / BioImage.IO bundle",
        description=(
            "Bundle your own Keras model (Keras 3 .keras, or tf.keras .h5) for DeepImageJ and the BioImage.IO\n"
            "model zoo: the same exporter and the same gates as 'w2sr export' (bioimageio test, the parity\n"
            "matrix, DeepImageJ 3.1's tiling reproduced on every pixel, odd sizes, --engines for DeepImageJ's\n"
            "old runtimes). Detected from the model: channels, output scale (UpSampling2D, Conv2DTranspose,\n"
            "depth_to_space ...), the size multiple a pooling network needs, a sigmoid/softmax output. A model\n"
            "saved with a fixed input size is rebuilt with free sizes (same weights).\n"
            "Refused in one line before any work: several inputs or outputs, not a 2D image model, an op\n"
            "DeepImageJ's TensorFlow 1.15 cannot run. Supported today: 1 -> 1 channel, any input size, scale\n"
            "1/2/3/4/8; multi-channel and pooling (U-Net) models are detected and refused as not yet supported."
        ),
        epilog=(
            "Examples:\n"
            "  w2sr bundle my_care.keras --out my_care_bundle/\n"
            "  w2sr bundle sr_x4.keras --out sr_x4/ --sample cells.tif --meta about.yaml\n"
            "  w2sr bundle probs.keras --out probs/ --normalization fixed --mean 103.5 --std 41.2\n"
            "--meta YAML keys: name, description, authors [{name, affiliation}], cite [{text, url|doi}],\n"
            "license, tags, input_description, output_description."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("model", metavar="MODEL", type=Path, help="the Keras model file (.keras or .h5)")
    b.add_argument("--normalization", choices=("percentile", "fixed", "none"), default="percentile",
                   help="input normalisation the model was trained with: percentile (default: each image "
                        "scaled by its own low/high percentiles), fixed (--mean/--std), none (raw values)")
    b.add_argument("--percentiles", nargs=2, type=float, default=(1.0, 99.8), metavar=("LOW", "HIGH"),
                   help="percentile mode's percentiles (default 1 99.8, CSBDeep's)")
    b.add_argument("--mean", type=float, default=None, help="fixed mode: the training inputs' mean")
    b.add_argument("--std", type=float, default=None, help="fixed mode: the training inputs' standard deviation")
    b.add_argument("--meta", type=Path, default=None, metavar="YAML",
                   help="name, description, authors, cite, license, tags for the rdf (see below)")
    add_bundle_options(b)
    b.set_defaults(handler=_handle_bundle)

    v = subparsers.add_parser(
        "validate",
        help="check a bundle: bioimageio test, runtime parity matrix, odd sizes, file hashes, packages",
        description=(
            "Validate an exported bundle without changing it:\n"
            "  (a) 'bioimageio test' of rdf.yaml (every weight format) and of packages/*_zoo-0.5.zip\n"
            "  (b) parity matrix on the stored test input: Keras (generator.keras in the bundle or --keras),\n"
            "      SavedModel (TF2 signature and TF1 session), ONNX Runtime, vs test_output.npy, vs Keras, and\n"
            "      tiled (rdf halo) vs whole image; GPU rows in strict fp32 (TensorFloat-32 off), shown as\n"
            "      skipped when there is no GPU; TF32 / bf16 / fp16 reported apart with their deviation, never parity\n"
            "  (c) odd sizes and 8/16-bit inputs through the bundle path vs Keras on the whole image\n"
            "  (d) every file against the sha256 listed in rdf.yaml; the layout of the Fiji zip\n"
            f"All comparisons use the zoo tolerance {RULE} on postprocessed outputs."
        ),
        epilog="Exit status: 0 all checks passed, 1 a check failed, 2 not a bundle.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("bundle", metavar="BUNDLE", type=Path, help="bundle folder (or its rdf.yaml)")
    v.add_argument("--keras", type=Path, default=None, metavar="FILE",
                   help="Keras generator for the Keras rows (default: BUNDLE/generator.keras)")
    v.add_argument("--no-bioimageio", dest="bioimageio", action="store_false",
                   help="skip 'bioimageio test' (the slowest part)")
    v.add_argument("--odd-size", dest="odd_sizes", type=_size, action="append", default=None, metavar="HxW",
                   help="image size for the odd-size check (repeatable; default 333x517)")
    v.add_argument("--engines", action="store_true",
                   help="also run DeepImageJ's old runtimes (TF 1.15/2.7/2.10.1, ONNX Runtime 1.13.1)")
    v.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="write parity.md and parity.json to DIR (the bundle itself is never modified)")
    v.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the full report as JSON")
    v.set_defaults(handler=_handle_validate)


def _handle_export(args) -> int:
    from export.bundle import export_bundle

    out = export_bundle(
        args.run_dir, args.out, config=args.config, name=args.name, force=args.force, sample=args.sample,
        halo=args.halo, authors=args.authors, license=args.license or "MIT",
        **({"tile": args.tile} if args.tile else {}),
        **({"odd_sizes": tuple(args.odd_sizes)} if args.odd_sizes else {}),
        bioimageio=not args.quick, measure=not args.quick, engines=args.engines,
    )
    print(f"bundle written: {out}")
    for pkg in sorted((out / "packages").glob("*.zip")):
        print(f"  {pkg}  ({pkg.stat().st_size / 1e6:.1f} MB)")
    return 0


def _handle_bundle(args) -> int:
    from export.bundle import export_bundle
    from export.sources import keras_source

    source = keras_source(args.model, normalization=args.normalization, percentiles=tuple(args.percentiles),
                          mean=args.mean, std=args.std, name=args.name, meta=args.meta)
    out = export_bundle(
        source, args.out, name=args.name, force=args.force, sample=args.sample, halo=args.halo,
        authors=args.authors, license=args.license or source.license or "MIT",
        **({"tile": args.tile} if args.tile else {}),
        **({"odd_sizes": tuple(args.odd_sizes)} if args.odd_sizes else {}),
        bioimageio=not args.quick, measure=not args.quick, engines=args.engines,
    )
    print(f"bundle written: {out}")
    for pkg in sorted((out / "packages").glob("*.zip")):
        print(f"  {pkg}  ({pkg.stat().st_size / 1e6:.1f} MB)")
    return 0


def _handle_validate(args) -> int:
    from export.validate import format_report, validate_bundle, write_report
    from w2sr.core.errors import UserError

    if not args.bundle.exists():
        raise UserError(f"{args.bundle}: no such bundle")
    report = validate_bundle(args.bundle, keras_path=args.keras, bioimageio=args.bioimageio,
                             sizes=tuple(args.odd_sizes) if args.odd_sizes else ((333, 517),),
                             engines=args.engines)
    print(format_report(report))
    if args.report:
        args.report.mkdir(parents=True, exist_ok=True)
        md, js = write_report(report, args.report)
        print(f"report written: {md}, {js}")
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return 0 if report.ok else 1
