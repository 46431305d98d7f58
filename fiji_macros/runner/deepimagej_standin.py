"""Python side of the DeepImageJ Run stand-in (fiji_macros/runner/plugin_src/DeepImageJ_Run.java).

Not DeepImageJ: the ImageJ plugin hands one 2D image (written as a 32-bit TIFF: JDLL 0.6.1 copies
every image to float before processing) to this script, which runs the bundle the way DeepImageJ 3.1's
JDLL 0.6.1 does (``w2sr.bundle.jdll``: its kwargs checks and processing, its tile formula, tiles
mirror-padded by the halo, its stitching, with JDLL's one-pixel shift on small images left in)
with the bundle's ONNX weights, and writes a plain 32-bit TIFF for the plugin to open.

    deepimagej_standin.py --model DIR --check
    deepimagej_standin.py --model DIR --input in.tif --output out.tif

Prints ``OUTPUT_NAME=<rdf output tensor name>`` on success. Exit codes: 0 ok; 3 the model folder's
rdf.yaml is missing or not a model description (DeepImageJ 3.1 prints that and returns); 4 JDLL
would throw on this image (processing kwargs, tile rules; printed with JDLL's message, the image
gets no output); 1 any other failure (weights missing, image unreadable, runtime error).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

RDF_PROBLEM = 3
JDLL_THROWS = 4


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--check", action="store_true")
    p.add_argument("--input")
    p.add_argument("--output")
    args = p.parse_args(argv)
    model = Path(args.model)

    from w2sr.bundle import jdll
    from w2sr.bundle.reader import read_bundle
    from w2sr.core.errors import UserError

    try:
        info = read_bundle(model)
        doc = info.doc
        out = doc["outputs"][0]
        name = str(out.get("name") or out.get("id"))
        jmodel = jdll.JdllModel.from_rdf(doc)
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

    from w2sr.bundle.runtimes import OnnxRuntime

    x = np.squeeze(np.asarray(tifffile.imread(args.input), dtype=np.float32))
    if x.ndim != 2:
        print(f"RunModelException (w2sr stand-in): expected one 2D plane, got shape {x.shape}", file=sys.stderr)
        return 1
    try:
        jdll.check_processing(jmodel)
        tp = jdll.plan(jmodel, x.shape)
        print(f"w2sr stand-in (JDLL {jdll.JDLL_VERSION} semantics): {x.shape[0]} x {x.shape[1]} image, "
              f"{tp.n_tiles} tiles of {tp.tile[0]} x {tp.tile[1]}, halo {tp.halo[0]}"
              + (" (JDLL shifts this output by one pixel)" if tp.shifted else ""), file=sys.stderr)
        y = jdll.predict(jmodel, OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"]).predict, x)
    except jdll.JdllError as exc:
        print(f"java.lang.IllegalArgumentException: {exc}", file=sys.stderr)
        return JDLL_THROWS
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
