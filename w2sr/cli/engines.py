"""``w2sr check-engines``: run a bundle in the runtimes DeepImageJ embeds and compare with its test output."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from export.engine_envs import ENGINES  # stdlib only: --help stays instant
from w2sr.core.contract import RULE

log = logging.getLogger(__name__)

ENGINE_KEYS = tuple(ENGINES)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "check-engines",
        help="run a bundle in TF 1.15 / 2.7 / 2.10.1 and ONNX Runtime 1.13.1 (DeepImageJ's engines)",
        description=(
            "Load the bundle's SavedModel zip and ONNX file in the old runtimes DeepImageJ/JDLL embed "
            "(TensorFlow 1.15.0, 2.7.0, 2.10.1; ONNX Runtime 1.13.1), each in its own virtual "
            "environment built once from a pyenv interpreter (Python 3.7 / 3.9 / 3.10) and cached. "
            "The SavedModel is unzipped as DeepImageJ does and loaded with the TF1-style session loader "
            "(tag 'serve', signature 'serving_default'); on TF 2.x the tf.saved_model.load path is "
            "also tried and shown as '(info)'. The rdf's preprocessing is applied to test_input.npy, "
            "the output postprocessed and compared with test_output.npy within the model zoo's "
            f"tolerance {RULE}. Then the test input goes through DeepImageJ 3.1's "
            "path (JDLL 0.6.1's tiles, mirror-padded by the halo, one tile per call, stitched as JDLL "
            "does; rows '<loader>+deepimagej' with the engine process's peak memory)."
        ),
        epilog=(
            "Exit status: 0 when every engine that ran loaded the bundle and matched; 1 when any failed; "
            "2 for a bad bundle path. Engines whose environment cannot be built here (no interpreter, "
            "pip failure) are listed as SKIPPED with the reason and do not fail the command. "
            "The first run builds the environments (about 90 s, needs the package index); later runs reuse them."
        ),
    )
    p.add_argument("bundle", metavar="BUNDLE", type=Path,
                   help="bundle folder, its rdf.yaml, or a zipped bundle")
    p.add_argument("--engines", default=",".join(ENGINE_KEYS), metavar="LIST",
                   help=f"comma-separated engines to run (default: all: {','.join(ENGINE_KEYS)})")
    p.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="where the engine environments live (default: $W2SR_ENGINE_CACHE or ~/.cache/w2sr/engines)")
    p.add_argument("--rebuild", action="store_true",
                   help="delete and rebuild the selected engine environments first")
    p.add_argument("--timeout", type=int, default=1800, metavar="S",
                   help="seconds one engine may take to load and run the bundle (default 1800: the full "
                        "model's four 512 px DeepImageJ tiles take several minutes in TF 1.15 / 2.7)")
    p.add_argument("--no-deepimagej", dest="deepimagej", action="store_false",
                   help="skip the run through DeepImageJ 3.1's tiles (one tile per call, stitched as JDLL 0.6.1 does)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE",
                   help="also write the rows as JSON to FILE")
    p.set_defaults(handler=_handle)


def _handle(args) -> int:
    from export.engines import check_engines, format_table
    from w2sr.core.errors import UserError

    keys = [k.strip() for k in args.engines.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ENGINE_KEYS]
    if unknown or not keys:
        raise UserError(f"--engines: unknown {unknown or 'empty list'}; choose from {','.join(ENGINE_KEYS)}")
    if not args.bundle.exists():
        raise UserError(f"{args.bundle}: no such bundle")
    results = check_engines(args.bundle, engines=keys, cache_dir=args.cache, rebuild=args.rebuild,
                            deepimagej=args.deepimagej,
                            timeout=args.timeout)
    print(format_table(results))
    if args.json:
        from w2sr.core.files import atomic_write_text

        atomic_write_text(args.json, json.dumps([r.to_dict() for r in results], indent=2))
    failed = [f"{r.engine}/{r.loader}" for r in results if not r.ok]
    ran = [r for r in results if r.status != "skipped"]
    if failed:
        print(f"\nFAILED in {', '.join(failed)}: DeepImageJ users with these engines cannot run this bundle as tested.")
        return 1
    if not ran:
        print("\nno engine could run here (all skipped); nothing was checked.")
    else:
        print(f"\nall {len({r.engine for r in ran})} engine(s) that ran reproduce the test output.")
    return 0
