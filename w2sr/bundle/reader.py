"""The one reader of a built bundle's rdf.yaml (format 0.4.10): ``read_rdf`` parses it, ``read_bundle``
takes what a prediction needs from it.

The predictor, validation, the DeepImageJ reproduction, the Fiji stand-in and the engine check all go
through this one reader, so they use
the rdf's own numbers (normalisation, halo, sizes), not copies of the training config.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from w2sr.core.normalization import Normalization
from w2sr.core.errors import UserError, yaml_message


@dataclass(frozen=True)
class BundleInfo:
    root: Path
    name: str
    normalization: Normalization  # the rdf's pre/post-processing (percentile or fixed)
    halo: int            # in input pixels (the rdf states it on the output, 2x this)
    min_size: int        # smallest input side the rdf allows
    step: int            # the rdf's sizes are min_size + n * step (0: exactly min_size, DeepImageJ's tile)
    scale: int           # output / input size (2)
    onnx_path: Optional[Path]
    savedmodel_zip: Optional[Path]
    keras_path: Optional[Path]
    test_input: Path
    test_output: Path
    padding: int = 0                   # px of symmetric padding inside the exported graph (w2sr.core.padding)
    any_size_from: Optional[int] = None  # the weights accept every size >= this (config.w2sr.network)
    multiple: int = 1    # the network's pooling grid (config.w2sr.network.size_multiple): tiles start on it
    weight_sha256: dict = field(default_factory=dict, hash=False)  # weight file path -> sha256 in the rdf
    doc: dict = field(default_factory=dict, hash=False, compare=False, repr=False)  # the whole rdf document

    def check_weights(self, path: Optional[Path]) -> None:
        """UserError (one line) when the weights file no longer has the sha256 the rdf records.
        Weights the rdf gives no sha256 for are not checked."""
        if path is None:
            return
        want = self.weight_sha256.get(Path(path))
        if want and Path(path).is_file():
            got = sha256_file(path)
            if got != want:
                raise UserError(f"{path}: sha256 {got[:12]}... differs from the {want[:12]}... that rdf.yaml records: "
                                f"the weights changed after export (damaged copy?); re-export or re-download the bundle")

    @property
    def deepimagej_tile(self) -> Optional[int]:
        """The one tile size DeepImageJ 3.1 uses (rdf step 0), or None when the rdf lets it vary."""
        return self.min_size if self.step == 0 else None

    def is_valid_size(self, n: int) -> bool:
        """Can the weights run an input side of ``n`` px?"""
        if self.any_size_from is not None:
            return n >= self.any_size_from
        if self.step == 0:
            return n == self.min_size
        return n >= self.min_size and (n - self.min_size) % self.step == 0

    def valid_size_at_least(self, n: int) -> int:
        """Smallest size the weights accept that is >= n (the rdf's sizes, unless the bundle states
        that its weights take any size from ``any_size_from`` on)."""
        if self.any_size_from is not None:
            n = max(int(n), self.any_size_from)
            if n % self.multiple == 0:
                return n
            # a pooling network: tiles keep its grid only on a multiple, and the canvas must reach
            # the graph's padding beyond the image, so that every pixel the kept output sees is the
            # image's mirror (w2sr.core.padding) and not a mirror of the canvas edge
            n += self.padding
            return n + (-n) % self.multiple
        if n <= self.min_size:
            return self.min_size
        if self.step == 0:
            raise UserError(f"{self.root / 'rdf.yaml'}: the model takes only {self.min_size} x {self.min_size} "
                            f"inputs (step 0) and does not state that its weights accept other sizes")
        k = -(-(n - self.min_size) // self.step)
        return self.min_size + k * self.step


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _kwargs(ops: list, name: str, rdf: Path) -> dict:
    for op in ops or []:
        if op.get("name") == name:
            return op.get("kwargs", {})
    raise UserError(f"{rdf}: expected a '{name}' processing step, found {[o.get('name') for o in ops or []]}")


def _scalar(value: object) -> float:
    """A processing kwarg written as a number or as a one-element per-axis list (what JDLL needs)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"expected one value, got {len(value)}")
        value = value[0]
    return float(value)  # type: ignore[arg-type]


def _output_affine(ops: list, rdf: Path) -> tuple[float, float]:
    """(gain, offset) of the output's affine post-processing, written either as ``scale_linear`` or
    as a fixed ``zero_mean_unit_variance`` ((y - m) / (s + eps) = y * gain + offset)."""
    names = [o.get("name") for o in ops or []]
    if "scale_linear" in names:
        kw = _kwargs(ops, "scale_linear", rdf)
        return _scalar(kw["gain"]), _scalar(kw["offset"])
    kw = _kwargs(ops, "zero_mean_unit_variance", rdf)
    denom = _scalar(kw["std"]) + float(kw.get("eps", 1e-6))
    return 1.0 / denom, -_scalar(kw["mean"]) / denom


def _normalization(pre_ops: list, post_ops: list, rdf: Path) -> Normalization:
    """The rdf's processing as a Normalization: ``scale_range`` (per sample) before the network and
    nothing after it, or the fixed z-score before and an affine map (or nothing) after, or nothing."""
    names = [o.get("name") for o in pre_ops or []]
    if "scale_range" in names:
        kw = _kwargs(pre_ops, "scale_range", rdf)
        if kw.get("mode", "per_sample") != "per_sample" or kw.get("reference_tensor"):
            raise ValueError("scale_range (only per_sample without reference_tensor is supported)")
        if post_ops:
            raise ValueError("postprocessing (none expected after scale_range)")
        return Normalization(mode="percentile", low_percentile=float(kw.get("min_percentile", 0.0)),
                             high_percentile=float(kw.get("max_percentile", 100.0)))
    if not names:
        if post_ops:
            raise ValueError("postprocessing without preprocessing (not written by w2sr)")
        return Normalization(mode="none")
    pre = _kwargs(pre_ops, "zero_mean_unit_variance", rdf)
    if not post_ops:
        return Normalization(mode="fixed", input_mean=_scalar(pre["mean"]), input_std=_scalar(pre["std"]))
    gain, offset = _output_affine(post_ops, rdf)
    return Normalization(mode="fixed", input_mean=_scalar(pre["mean"]), input_std=_scalar(pre["std"]),
                         target_mean=offset, target_std=gain)


def rdf_file(path: str | Path) -> Path:
    """The rdf.yaml of ``path`` (a bundle folder or the file itself)."""
    path = Path(path)
    return path / "rdf.yaml" if path.is_dir() else path


def read_rdf(path: str | Path) -> dict:
    """The one parser of rdf.yaml: the document as a mapping; one-line UserError naming the file."""
    rdf = rdf_file(path)
    if not rdf.exists():
        raise UserError(f"{path}: not a model bundle (no rdf.yaml)")
    if rdf.suffix.lower() == ".zip":
        raise UserError(f"{rdf}: a zipped bundle; unzip it and give the folder (the one with rdf.yaml)")
    try:
        doc = yaml.safe_load(rdf.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{rdf}: not valid YAML{yaml_message(exc)}") from None
    except (UnicodeDecodeError, OSError) as exc:
        raise UserError(f"{rdf}: cannot read it as a text rdf.yaml ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise UserError(f"{rdf}: not a model description (expected a YAML mapping, got {type(doc).__name__})")
    return doc


def read_bundle(path: str | Path) -> BundleInfo:
    """Parse ``path`` (a bundle folder or its rdf.yaml) into a BundleInfo; errors name the file."""
    rdf = rdf_file(path)
    doc = read_rdf(path)
    root = rdf.parent
    try:
        inp, out = doc["inputs"][0], doc["outputs"][0]
        normalization = _normalization(inp.get("preprocessing"), out.get("postprocessing"), rdf)
        axes = inp["axes"]
        y = axes.index("y")
        min_size = int(inp["shape"]["min"][y])
        step = int(inp["shape"]["step"][y])
        scale = int(round(float(out["shape"]["scale"][y])))
        halo_out = int(out.get("halo", [0] * len(axes))[y])
        if halo_out < 0 or min_size < 1 or step < 0 or scale < 1:
            raise ValueError(f"sizes: output halo {halo_out}, min {min_size}, step {step} and scale {scale} "
                             f"must be >= 0, >= 1, >= 0 and >= 1")
        weights = doc.get("weights", {})
        network = ((doc.get("config") or {}).get("w2sr") or {}).get("network") or {}

        def weight(key: str) -> Optional[Path]:
            entry = weights.get(key)
            return root / entry["source"] if entry else None

        return BundleInfo(
            root=root,
            name=str(doc.get("name", root.name)),
            normalization=normalization,
            halo=halo_out // scale,
            min_size=min_size,
            step=step,
            scale=scale,
            onnx_path=weight("onnx"),
            savedmodel_zip=weight("tensorflow_saved_model_bundle"),
            keras_path=weight("keras_hdf5"),
            test_input=root / doc["test_inputs"][0],
            test_output=root / doc["test_outputs"][0],
            padding=int(network.get("padding", 0)),
            multiple=max(1, int(network.get("size_multiple", 1))),
            weight_sha256={root / w["source"]: str(w["sha256"]) for w in weights.values()
                           if isinstance(w, dict) and w.get("source") and w.get("sha256")},
            any_size_from=int(network["any_size_from"]) if network.get("any_size_from") else None,
            doc=doc,
        )
    except AttributeError:  # e.g. inputs: [oops] - a list of names where mappings belong
        raise UserError(f"{rdf}: not a w2sr bundle rdf (format 0.4.10 expected): inputs[0] and outputs[0] must "
                        f"be tensor descriptions (mappings with axes, shape, ...)") from None
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise UserError(f"{rdf}: not a w2sr bundle rdf (format 0.4.10 expected): missing or bad {exc}") from None
