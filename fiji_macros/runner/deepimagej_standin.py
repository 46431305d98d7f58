"""Python side of the DeepImageJ Run stand-in (fiji_macros/runner/plugin_src/DeepImageJ_Run.java).

Not DeepImageJ: the ImageJ plugin hands one 2D image (written as a 32-bit TIFF) to this script, which
runs the bundle through the project's predictor (``export.predict``: the rdf's pre/post-processing,
ONNX weights, the predictor's tiling) and writes a plain 32-bit TIFF for the plugin to open.

    deepimagej_standin.py --model DIR --check
    deepimagej_standin.py --model DIR --input in.tif --bit-depth {8,16,32} --output out.tif

Prints ``OUTPUT_NAME=<rdf output tensor name>`` on success. Exit codes: 0 ok; 3 the model folder's
rdf.yaml is missing or not a model description (DeepImageJ 3.1 prints that and returns); 1 any
other failure (weights missing, image unreadable, runtime error: DeepImageJ raises those).

``--bit-depth`` 8 or 16 emulates DeepImageJ 3's pre-processing in place on the integer pixel type
(the documented "black output" trap): the normalised values are rounded and stored into the type
(imglib2's unsigned integer types keep the low 8/16 bits), then the network sees those values.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RDF_PROBLEM = 3


def _output_name(model: Path) -> str:
    import yaml

    doc = yaml.safe_load((model / "rdf.yaml").read_text())
    out = doc["outputs"][0]
    return str(out.get("name") or out.get("id"))


def _emulate_integer_preprocessing(x, bit_depth: int, info):
    """Raw image -> the raw image whose float pre-processing equals DeepImageJ's integer one."""
    import numpy as np

    from export.processing import inverse_preprocess, preprocess

    pre = preprocess(x, info.input_mean, info.input_std)
    stored = (np.round(pre).astype(np.int64) & ((1 << bit_depth) - 1)).astype(np.float32)
    return inverse_preprocess(stored, info.input_mean, info.input_std)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--check", action="store_true")
    p.add_argument("--input")
    p.add_argument("--bit-depth", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--output")
    args = p.parse_args(argv)
    model = Path(args.model)

    from export.bundle_info import read_bundle
    from w2sr.errors import UserError

    try:
        info = read_bundle(model)
        name = _output_name(model)
    except (UserError, OSError, KeyError, IndexError, TypeError, ValueError) as exc:
        print(f"ModelSpecsException (w2sr stand-in): {exc}", file=sys.stderr)
        return RDF_PROBLEM
    except Exception as exc:  # yaml errors and the like: the rdf is not a model description
        print(f"ModelSpecsException (w2sr stand-in): {model / 'rdf.yaml'}: {exc}", file=sys.stderr)
        return RDF_PROBLEM
    if info.onnx_path is None or not info.onnx_path.is_file():
        print(f"LoadModelException (w2sr stand-in): {model}: no ONNX weights file "
              f"({info.onnx_path or 'none named in rdf.yaml'})", file=sys.stderr)
        return 1
    if args.check:
        print(f"OUTPUT_NAME={name}")
        return 0
    if not args.input or not args.output:
        p.error("--input and --output are needed unless --check")

    import numpy as np
    import tifffile

    from export.predict import Model, Settings

    x = np.asarray(tifffile.imread(args.input), dtype=np.float32)
    x = np.squeeze(x)
    if x.ndim != 2:
        print(f"RunModelException (w2sr stand-in): expected one 2D plane, got shape {x.shape}", file=sys.stderr)
        return 1
    if args.bit_depth in (8, 16):
        print(f"w2sr stand-in: {args.bit_depth}-bit image: pre-processing applied on the integer type, as "
              "DeepImageJ 3 does (convert to 32-bit before running to avoid this)", file=sys.stderr)
        x = _emulate_integer_preprocessing(x, args.bit_depth, info)
    settings = Settings(bundle=str(model.resolve()), runtime="onnx", progress=False)
    loaded = Model.load(settings)
    y = loaded.predict_slice(x, settings, Path(args.input).name)
    tifffile.imwrite(args.output, np.ascontiguousarray(y, dtype=np.float32))
    print(f"OUTPUT_NAME={name}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as exc:  # one line for the plugin's exception message, then the trace
        import traceback

        print(f"RunModelException (w2sr stand-in): {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
