"""``w2sr simulate`` and ``w2sr check-data``: make W2S-like data, and vet a data folder before training."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from w2sr.core.errors import UserError, validation_message

log = logging.getLogger(__name__)

NOISE_CHOICES = (1, 2, 4, 8, 16, 400)


def parse_int_list(text: str) -> list[int]:
    """ "1-80,90,92" -> [1..80, 90, 92] (FOV and channel lists on the command line)."""
    out: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            if not part:
                continue
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
                out.extend(range(lo, hi + 1))
            else:
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers / ranges: {text!r} (e.g. 1-80,90)") from None
    return out


def register(subparsers) -> None:
    sim = subparsers.add_parser(
        "simulate",
        help="write a W2S-like synthetic data set (filaments, puncta, nuclei; widefield + SIM)",
        description=(
            "Simulate widefield/SIM pairs in one of the W2S layouts: 'npy' (avg1..avg400 + sim folders, "
            "z-scored like W2S's normalised release), 'png' (train/test split, 8-bit) or 'raw' "
            "(Image###/wf_channel#.npy frame stacks, uint16). Settings come from --config's data.simulate "
            "(written to data.root) and can be overridden by the options below. Deterministic for a seed."
        ),
    )
    sim.add_argument("--config", help="packaged config name (demo, tiny, w2s) or YAML path; uses its "
                                      "data.simulate settings and data.root")
    sim.add_argument("--out", type=Path, help="output folder (default: data.root of --config, else data/simulated)")
    sim.add_argument("--layout", choices=("npy", "png", "raw"), help="W2S layout to write (default npy)")
    sim.add_argument("--n-fovs", type=int, help="number of fields of view (FOV 1..n; default 24)")
    sim.add_argument("--size", type=int, help="widefield image side in pixels; SIM is twice that (default 128)")
    sim.add_argument("--noise-level", type=int, choices=NOISE_CHOICES,
                     help="avgN level one simulated frame mimics (default 1 = a single W2S frame)")
    sim.add_argument("--channels", type=int, choices=(1, 2, 3), help="channels per FOV (default 1)")
    sim.add_argument("--frames", type=int,
                     help="raw layout: frames per FOV (default 400 like W2S; avg1 = frame 249 needs 250)")
    sim.add_argument("--seed", type=int, help="random seed (default 0)")
    sim.add_argument("--force", action="store_true", help="re-simulate even if OUT already holds this simulation")
    sim.set_defaults(handler=_simulate)

    chk = subparsers.add_parser(
        "check-data",
        help="check a W2S data folder (any layout) and summarise its pairs",
        description=(
            "Find the widefield/SIM pairs under ROOT and run every check training runs (missing or unpaired "
            "files, SIM not exactly 2x the widefield size, unreadable files, NaN/Inf, wrong dimensions, "
            "requested FOVs/channels absent). Prints a summary, or the problems naming each file (exit 2)."
        ),
    )
    chk.add_argument("root", type=Path, metavar="ROOT", help="data folder (raw, normalised-npy or PNG W2S layout)")
    chk.add_argument("--layout", choices=("auto", "raw", "npy", "png"), default="auto", help="layout (default: detect)")
    chk.add_argument("--noise-level", type=int, choices=NOISE_CHOICES, default=1, help="avgN input to check (default 1)")
    chk.add_argument("--channels", type=parse_int_list, help="channels, e.g. 0,1,2 (default: all present)")
    chk.add_argument("--fovs", type=parse_int_list, help="FOVs, e.g. 1-80 (default: all present)")
    chk.add_argument("--split", choices=("train", "test"), help="PNG layout: only this folder (default both)")
    chk.set_defaults(handler=_check_data)


def _simulator_config(args):
    from training.config import SimulatorConfig, load_config, resolve_config_path

    base: dict = {}
    explicit: set = set()
    out = args.out
    if args.config is not None:
        cfg = load_config(resolve_config_path(str(args.config)))
        if cfg.data.simulate is None:
            raise UserError(f"{args.config}: has no data.simulate section to simulate from")
        base = cfg.data.simulate.model_dump()
        explicit = set(cfg.data.simulate.model_fields_set)
        out = out or cfg.data.root
    overrides = {"layout": args.layout, "n_fovs": args.n_fovs, "lr_size": args.size,
                 "noise_level": args.noise_level, "channels": args.channels, "n_frames": args.frames,
                 "seed": args.seed}
    base.update({k: v for k, v in overrides.items() if v is not None})
    if base.get("layout") == "raw" and args.frames is None and "n_frames" not in explicit:
        base["n_frames"] = 400  # like W2S, so every avgN (avg1 = frame 249) can be computed
    try:
        sim_cfg = SimulatorConfig.model_validate(base)
    except Exception as exc:
        raise UserError("invalid simulation settings: " + validation_message(exc)) from None
    return sim_cfg, Path(out or "data/simulated")


def _simulate(args) -> int:
    import time

    from training.data.layouts import load_pairs
    from training.data.simulator import simulate_dataset

    cfg, out = _simulator_config(args)
    t0 = time.perf_counter()
    root = simulate_dataset(cfg, out, force=args.force)
    took = time.perf_counter() - t0
    n = cfg.n_fovs * cfg.channels
    print(f"wrote {n} W2S-like image pairs ({cfg.n_fovs} FOVs x {cfg.channels} channel(s)), layout {cfg.layout}, "
          f"widefield {cfg.lr_size}x{cfg.lr_size} -> SIM {2 * cfg.lr_size}x{2 * cfg.lr_size}, seed {cfg.seed}")
    print(f"folder:   {root.resolve()}  ({took:.1f} s)")
    if cfg.layout == "raw":
        print(f"inputs:   Image###/wf_channel#.npy ({cfg.n_frames} uint16 frames each), targets sim_channel#.npy")
    else:
        prefix = "{train,test}/" if cfg.layout == "png" else ""
        print(f"inputs:   {prefix}avg1..avg400/###_#.{cfg.layout}, targets {prefix}sim/###_#.{cfg.layout}")
    if cfg.layout != "raw" or cfg.n_frames >= 250:
        pairs = load_pairs(root, cfg.layout, 1, fovs=[1], channels=[0], progress=False)
        p = pairs[0]
        print(f"check:    {p.name}: avg1 {p.lr.shape[0]}x{p.lr.shape[1]} [{p.lr.min():.3g}, {p.lr.max():.3g}], "
              f"SIM {p.hr.shape[0]}x{p.hr.shape[1]} [{p.hr.min():.3g}, {p.hr.max():.3g}]")
    return 0


def _check_data(args) -> int:
    from training.data.checks import summarize
    from training.data.layouts import check_pairs
    from training.data.layouts import resolve_layout

    layout = resolve_layout(args.root, args.layout)
    pairs = check_pairs(args.root, layout, args.noise_level, args.channels, args.fovs, args.split)
    print(f"{args.root}: {layout} layout, avg{args.noise_level} input, all checks passed")
    print(summarize(pairs))
    return 0
