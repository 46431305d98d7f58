"""``w2sr predict``: run an exported bundle on TIFF/PNG/NPY files (see w2sr/predict/)."""
from __future__ import annotations

import argparse

from w2sr.core.contract import DEFAULT_TILE


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict",
        help="denoise + 2x super-resolve images with an exported bundle",
        description=(
            "Predict every input with the bundle's weights, tile by tile (memory bounded by the tile), "
            "and write OUT/<stem>_sr.tif (ImageJ TIFF, pixel size halved). Stacks are predicted slice by "
            "slice. Existing outputs are skipped (resume); inputs are never overwritten. A bad file is "
            "reported in one line and the others go on; the exit code is 1 when any file failed."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle folder (with rdf.yaml) or its rdf.yaml")
    p.add_argument("inputs", metavar="INPUTS", nargs="+",
                   help="TIFF/PNG/NPY files, folders of them, or glob patterns (quote them)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (not an input folder)")
    p.add_argument("--runtime", choices=("auto", "onnx", "openvino", "tensorflow"), default="auto",
                   help="ONNX Runtime or OpenVINO (weights.onnx), or TensorFlow (the SavedModel zip); auto: the "
                        "fastest this CPU runs accurately (see --precision)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "tf32"), default="auto",
                   help="auto: on a CPU bf16 (OpenVINO) where it computes it natively (AVX512-BF16, AMX), on an "
                        "NVIDIA GPU TensorFloat-32, each kept only while the output stays within 50 dB PSNR of the "
                        "bundle's test output, else fp32 (strict: TF32 off); every run logs the path it took")
    p.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="gpu: an NVIDIA GPU through onnxruntime-gpu or a CUDA build of TensorFlow (refused in one "
                        "line where neither works); auto: the GPU where one works, else the CPU")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="intra-op threads of the runtime (per dask worker with --scheduler); default: the runtime's")
    p.add_argument("--tile", type=int, default=None, metavar="N",
                   help=f"largest tile side in input pixels, halo included (rounded up to a size the model "
                        f"accepts; per image the tiles are evened out to the smallest size that needs as many); "
                        f"default: {DEFAULT_TILE} on a CPU, on a GPU the largest that half its free memory holds")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="tiles per model call")
    p.add_argument("--format", dest="fmt", choices=("float32", "uint16"), default="float32",
                   help="output pixels: float32 target units, or uint16 with a linear scaling stored as "
                        "the ImageJ calibration and logged")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="dask.distributed scheduler (e.g. tcp://host:8786): spread files over its workers; "
                        "--out must be a folder the workers share")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from w2sr.predict.batch import predict_files, summarize

    results = predict_files(
        args.bundle, args.inputs, args.out, runtime=args.runtime, precision=args.precision, device=args.device,
        threads=args.threads,
        tile=args.tile,
        batch=args.batch, fmt=args.fmt, overwrite=args.overwrite, scheduler=args.scheduler,
        progress=not args.no_progress,
    )
    return summarize(results)
