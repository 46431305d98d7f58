"""The bundle's rdf.yaml (format 0.4.10, for DeepImageJ) and its format-0.5 twin (for the model zoo).

Why 0.4.10 for DeepImageJ: JDLL reads a 0.5 output axis ``scale`` with 0.4 arithmetic, so a
spec-correct 0.5 description of a 2x model comes out at half size there, while a 0.4.10
``shape: {reference_tensor: input, scale: [1, 2, 2, 1], offset: [0, 0, 0, 0]}`` plus ``halo`` is read
the same way by JDLL and bioimageio.core. The 0.5 package (converted by bioimageio.spec) is for
the zoo and bioimageio.core only.

``tensorflow_version`` of the SavedModel: **1.15** (:data:`TENSORFLOW_VERSION`). The weights are a
frozen TF1-style graph (``tf.compat.v1.saved_model.Builder``, no variables) whose op set is checked
against what TensorFlow 1.15 defines (``export.savedmodel.ALLOWED_OPS``); it loads in TF 1.15, 2.7,
2.10 and 2.21. JDLL picks the engine by the MAJOR version:

* "1.x" -> its TF1 engine (1.15, installed by default), the same runtime DeepImageJ 2.1 embeds,
  so one declaration is true for DeepImageJ 2 and 3 and names the oldest runtime the graph is built
  for. Where TF1 cannot run (Apple silicon: JDLL has no TF1 build for macosx-arm64), the ONNX
  weights (opset 17, built for that platform) are the compatible format.
* bioimageio.core 0.11 chooses its adapter by the *installed* TensorFlow (2.x -> ``TFSMLayer`` on
  the ``serving_default`` signature) and only warns that 1.15 != installed; bioimageio.spec maps a
  declared TF < 2 to a TF 2.17 test environment. So ``bioimageio test`` still runs these weights
  (checked at every export: the bundle is refused otherwise).

The exporting TensorFlow version is recorded under ``config.w2sr.exported_with``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from w2sr.core.contract import (ATOL, ONNX_OPSET, ONNX_WEIGHTS, POST_MACRO, PRE_MACRO, RTOL, SAVEDMODEL_ZIP,
                                 TENSORFLOW_VERSION, TEST_INPUT, TEST_OUTPUT, INPUT_NAME, OUTPUT_NAME,
                                 ZOO_TEST_INPUT, ZOO_TEST_OUTPUT)
from w2sr.core.normalization import EPS, Normalization
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = "0.4.10"

CITATIONS = [
    {"text": "Chatton M. Microscopy Image Restoration using Deep Learning on W2S. "
             "Semester project report, EPFL, 2020 (the TensorFlow ESRGAN this model follows).",
     "url": "https://github.com/mchatton/w2s-tensorflow"},
    {"text": "Wang X. et al. ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks. "
             "ECCV Workshops 2018.",
     "url": "https://arxiv.org/abs/1809.00219"},
    {"text": "Zhou R., El Helou M. et al. W2S: Microscopy Data with Joint Denoising and "
             "Super-Resolution for Widefield to SIM Mapping. ECCV Workshops 2020.",
     "url": "https://arxiv.org/abs/2003.05961"},
]

DEFAULT_DESCRIPTION = (
    "Joint denoising and 2x super-resolution of single-channel widefield fluorescence images: "
    "an ESRGAN generator (RRDBNet) trained to map noisy widefield images to SIM-like images "
    "(W2S widefield-to-SIM task). Input: raw widefield intensities; output: the restored image at twice "
    "the sampling (its units: see the output tensor's description)."
)
DEFAULT_TAGS = [
    "deepimagej", "super-resolution", "denoising", "widefield", "sim", "fluorescence-light-microscopy",
    "esrgan", "gan", "rrdbnet", "w2s", "2d", "tensorflow", "onnx",
]
DEFAULT_AUTHORS = [{"name": "w2sr contributors"}]



@dataclass
class RdfParams:
    name: str
    normalization: Normalization
    halo: int                      # input pixels; the rdf states 2x this on the output
    tile: int                      # DeepImageJ's tile (rdf min with step 0), = the test tensor size
    padding: int                   # px of symmetric padding inside the graph (w2sr.core.padding)
    any_size_from: int             # the weights accept every input side >= this
    savedmodel_sha256: str
    onnx_sha256: str
    timestamp: str
    model_id: Optional[str] = None  # JDLL's getModelID() (the collection's DeepImageJ check downloads by it)
    description: str = DEFAULT_DESCRIPTION
    authors: list = field(default_factory=lambda: list(DEFAULT_AUTHORS))
    license: str = "MIT"
    tags: list = field(default_factory=lambda: list(DEFAULT_TAGS))
    memory_peak: Optional[str] = None
    runtime: Optional[str] = None
    pixel_size: str = "1.0 pixel"
    attachments: list = field(default_factory=list)
    w2sr: dict = field(default_factory=dict)
    tensorflow_version: str = TENSORFLOW_VERSION
    onnx_opset: int = ONNX_OPSET
    scale: int = 2
    cite: list = field(default_factory=lambda: list(CITATIONS))
    multiple: int = 1              # input sides the network itself needs divisible by this (pooling)
    input_description: str = ("raw widefield image (any intensity units the model was trained on), "
                              "converted to float32 before the normalisation")
    output_text: Optional[str] = None  # the output tensor's description (default: output_description)


def _f(x: float) -> float:
    return float(f"{float(x):.9g}")


def postprocessing_as_zmuv(target_mean: float, target_std: float) -> dict:
    """``y * gain + offset`` as ``(y - mean) / (std + eps)``: mean = -offset/gain, std = 1/gain - eps.

    Values are one-element lists (one per plane of the axes ``axes: xy`` leaves, ``b`` and ``c``):
    JDLL 0.6.1 throws on scalars with ``axes`` (see :func:`zmuv_kwargs`)."""
    return zmuv_kwargs(-float(target_mean) / float(target_std), 1.0 / float(target_std) - EPS)


def zmuv_kwargs(mean: float, std: float) -> dict:
    """Fixed ``zero_mean_unit_variance`` kwargs that both JDLL 0.6.1 and bioimageio run.

    ``axes: xy`` on ``byxc`` leaves ``bc``, so JDLL takes its per-axis branch and needs lists
    (a scalar throws "The parameters 'mean' and ' std' have to be arrays with the introduced
    'axes'."); format 0.4 requires ``axes``; bioimageio.spec 0.5.12 / core 0.11 accept the lists."""
    return {"mode": "fixed", "axes": "xy", "mean": [_f(mean)], "std": [_f(std)], "eps": EPS}


def scale_range_kwargs(norm: Normalization) -> dict:
    """Per-sample ``scale_range`` kwargs that JDLL 0.6.1 and bioimageio both run: every kwarg has a
    setter in JDLL's ScaleRangeTransformation (an unknown one throws), ``axes: xy`` makes JDLL take
    percentiles per (b, c) plane over the whole image, and there is no ``reference_tensor`` (JDLL
    only prints that it is unsupported)."""
    return {"mode": "per_sample", "axes": "xy", "min_percentile": _f(norm.low_percentile),
            "max_percentile": _f(norm.high_percentile), "eps": EPS}


def input_processing(norm: Normalization) -> list:
    if norm.mode == "none":
        return []
    if norm.percentile:
        return [{"name": "scale_range", "kwargs": scale_range_kwargs(norm)}]
    return [{"name": "zero_mean_unit_variance", "kwargs": zmuv_kwargs(norm.input_mean, norm.input_std)}]


def output_processing(norm: Normalization) -> list:
    """Percentile mode: none (outputs stay in normalised units). Fixed: the affine map
    y * target_std + target_mean, written as a fixed zero_mean_unit_variance (mean = -offset/gain,
    std = 1/gain - eps): in format 0.4 bioimageio.spec requires `axes` on every output op, while
    bioimageio.core 0.11 cannot run a 0.4 scale_linear that has `axes`, so a scale_linear here
    cannot pass a plain `bioimageio test rdf.yaml`. DeepImageJ 3 (JDLL) implements
    zero_mean_unit_variance with mode fixed, as for the input."""
    if not norm.maps_output:
        return []
    return [{"name": "zero_mean_unit_variance", "kwargs": postprocessing_as_zmuv(norm.target_mean, norm.target_std)}]


def output_description(norm: Normalization, scale: int) -> str:
    return f"restored image at {scale}x the input sampling, in {norm.output_units}"


def deepimagej_sizes_note(tile: int, halo: int, scale: int = 2, multiple: int = 1) -> str:
    """One sentence for the rdf description: the image sides DeepImageJ run directly does not handle
    exactly (``w2sr.bundle.jdll.exposed_sides``); the bundle's Fiji macro handles them all."""
    from w2sr.bundle.jdll import exposed_sides

    shifted, refused_below = exposed_sides(tile, halo, scale)
    if multiple > 1:
        return (f" DeepImageJ run directly (tile {tile}): sides < {refused_below} px refused, whole-image pixels only "
                f"on sides >= {tile - 2 * halo} px divisible by {multiple} (pooling); "
                f"fiji_macros/deepimagej_predict.ijm handles every size.")
    odd = f", odd sides {min(shifted)}-{max(shifted)} px shift by 1 px" if shifted else ""
    return (f" DeepImageJ run directly (tile {tile}): sides < {refused_below} px refused{odd}; "
            f"fiji_macros/deepimagej_predict.ijm handles every size.")


def build_rdf(p: RdfParams) -> dict:
    """The format 0.4.10 description, as a plain dict (written with :func:`write_rdf`)."""
    if p.tile <= 2 * p.halo:
        raise UserError(f"tile {p.tile} must exceed 2 x halo ({2 * p.halo})")
    h = w = p.tile
    s = p.scale
    halo_out = s * p.halo
    mem = p.memory_peak
    doc: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": p.name,
        **({"id": p.model_id} if p.model_id else {}),
        "description": p.description + deepimagej_sizes_note(p.tile, p.halo, s, p.multiple),
        "authors": p.authors,
        "cite": p.cite,
        "license": p.license,
        "tags": p.tags,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "timestamp": p.timestamp,
        "version": "0.1.0",
        "inputs": [{
            "name": INPUT_NAME,
            "description": p.input_description,
            "axes": "byxc",
            "data_type": "float32",
            "data_range": [float("-inf"), float("inf")],
            # step 0: DeepImageJ 3.1 (JDLL 0.6.1) then tiles every image with tiles of exactly this
            # size, so its memory does not grow with the image (with a step it takes the whole image
            # as one tile, and above ~7,000^2 px never returns). The weights take any size >=
            # config.w2sr.network.any_size_from; `w2sr predict` uses that.
            "shape": {"min": [1, p.tile, p.tile, 1], "step": [0, 0, 0, 0]},
            "preprocessing": input_processing(p.normalization),
        }],
        "outputs": [{
            "name": OUTPUT_NAME,
            "description": p.output_text or output_description(p.normalization, s),
            "axes": "byxc",
            "data_type": "float32",
            "data_range": [float("-inf"), float("inf")],
            "shape": {"reference_tensor": INPUT_NAME, "scale": [1, s, s, 1], "offset": [0, 0, 0, 0]},
            "halo": [0, halo_out, halo_out, 0],
            **({"postprocessing": output_processing(p.normalization)} if output_processing(p.normalization) else {}),
        }],
        "test_inputs": [TEST_INPUT],
        "test_outputs": [TEST_OUTPUT],
        "sample_inputs": ["sample_input.tif"],
        "sample_outputs": ["sample_output.tif"],
        "weights": {
            "tensorflow_saved_model_bundle": {
                "source": SAVEDMODEL_ZIP,
                "sha256": p.savedmodel_sha256,
                "tensorflow_version": p.tensorflow_version,
            },
            "onnx": {
                "source": ONNX_WEIGHTS,
                "sha256": p.onnx_sha256,
                "opset_version": p.onnx_opset,
                "parent": "tensorflow_saved_model_bundle",
            },
        },
        "config": {
            "deepimagej": {
                "pyramidal_model": False,
                "allow_tiling": True,
                "model_keys": None,
                "test_information": {
                    "inputs": [{
                        "name": "sample_input.tif",
                        "size": f"{h} x {w} x 1",
                        "pixel_size": {"x": p.pixel_size, "y": p.pixel_size, "z": "1.0 pixel"},
                    }],
                    "outputs": [{"name": "sample_output.tif", "type": "image", "size": f"{s * h} x {s * w} x 1"}],
                    "memory_peak": mem,
                    "runtime": p.runtime,
                },
                "prediction": {
                    "preprocess": [{"spec": "ij.IJ::runMacroFile", "kwargs": PRE_MACRO}],
                    "postprocess": [{"spec": "ij.IJ::runMacroFile", "kwargs": POST_MACRO}],
                },
            },
            "w2sr": {**p.w2sr, "network": {
                "padding": p.padding, "padding_mode": "symmetric", "any_size_from": p.any_size_from,
                # one "key: N" line each, read by fiji_macros/*.ijm (rdfNumber)
                "deepimagej_tile": p.tile, "deepimagej_halo": p.halo, "deepimagej_scale": s,
                "size_multiple": p.multiple,
                "note": "the graph pads its input symmetrically by `padding` px and crops the output, so "
                        "DeepImageJ's mirror-padded tiles and whole-image inference give the same pixels; "
                        "the weights run any input side >= any_size_from (the rdf fixes DeepImageJ's tile)"}},
        },
    }
    if p.attachments:
        doc["attachments"] = {"files": list(p.attachments)}
    return doc


def write_rdf(doc: dict, path: Path) -> Path:
    from w2sr.core.files import atomic_write_text

    text = "# BioImage.IO model description (format 0.4.10), written by `w2sr export`.\n"
    text += yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)
    atomic_write_text(Path(path), text)
    return Path(path)


def _summary_errors(summary: Any) -> list[str]:
    out = []
    for d in summary.details:
        for e in d.errors:
            loc = ".".join(str(x) for x in e.loc)
            out.append(f"{loc}: {e.msg}" if loc else e.msg)
    return out


def validate_rdf_format(rdf_path: Path, format_version: str = "discover") -> Any:
    """Static validation by bioimageio.spec (fields, files present, sha256); UserError if invalid."""
    os.environ.setdefault("BIOIMAGEIO_PERFORM_IO_CHECKS", "1")
    from bioimageio.spec import InvalidDescr, load_description

    descr = load_description(str(rdf_path), format_version=format_version, perform_io_checks=True)
    if isinstance(descr, InvalidDescr) or descr.validation_summary.status == "failed":
        errors = _summary_errors(descr.validation_summary) or ["(no details)"]
        raise UserError(f"{rdf_path}: rdf fails bioimageio.spec validation: " + "; ".join(errors[:5]))
    return descr


def zoo_axes(descr: Any, min_side: int, scale: int = 2) -> None:
    """The 0.5 package's spatial axes, chosen for bioimageio.core and JDLL (measured with core 0.11 and
    JDLL 0.6.1's code, December 2026; ``docs/consumers.md``):

    * **no halo**: core's whole-sample predict (the CLI and API default) pads the input by the declared
      halo *before* it normalises, so ``scale_range`` sees the padded image and every pixel moves
      (99.8 % outside the tolerance); without a halo it runs the whole image, which the graph pads
      itself (exact at every size). Core's opt-in ``--blockwise`` then has seams: the README says so;
    * **any size from** ``min_side`` (step 1) instead of the DeepImageJ tile: core refuses sizes that are
      not ``min + n*step``. JDLL then takes the whole image as one tile (no shift at any size);
    * **its own test tensors** (``ZOO_TEST_INPUT``, ``export.assets.zoo_test_side``): a size on which
      bioimageio.core's interpolated percentiles and JDLL's pick the same pixel, so that its test checks
      the weights and the processing; on other sizes the two definitions differ (docs/consumers.md);
    * **input pixel size 4, output 2** (ratio 2): core sizes an output axis as
      ``ref.size * ref.scale / scale`` (2x), JDLL as ``refTile * scale`` (2x too; with the converter's
      1 / 0.5, JDLL gave a half-size output)."""
    from bioimageio.spec.model import v0_5

    (inp,), (out,) = descr.inputs, descr.outputs
    root = Path(str(descr.root)) if not str(descr.root).startswith("http") else None
    if root is not None and (root / ZOO_TEST_INPUT).is_file():
        inp.test_tensor = v0_5.FileDescr(source=root / ZOO_TEST_INPUT)
        out.test_tensor = v0_5.FileDescr(source=root / ZOO_TEST_OUTPUT)
        # the collection's DeepImageJ check runs the sample input and compares with the test output
        inp.sample_tensor = out.sample_tensor = None
    for ax in inp.axes:
        if isinstance(ax, v0_5.SpaceInputAxis):
            ax.size = v0_5.ParameterizedSize(min=min_side, step=1)
            ax.scale = float(scale) * SCALE_05_OUTPUT
    new = []
    for ax in out.axes:
        if isinstance(ax, (v0_5.SpaceOutputAxis, v0_5.SpaceOutputAxisWithHalo)):
            ax = v0_5.SpaceOutputAxis(id=ax.id, size=ax.size, scale=SCALE_05_OUTPUT, unit=ax.unit,
                                      description=ax.description)
        new.append(ax)
    out.axes = new


#: the 0.5 output axes' pixel size (input: 2x this), see :func:`zoo_axes`
SCALE_05_OUTPUT = 2.0


def jdll_friendlier_05(descr: Any, model_id: Optional[str]) -> None:
    """Make the 0.5 description as readable by DeepImageJ 3.1 (JDLL 0.6.1) as bioimageio.spec allows.

    Measured on the demo package (``bioimageio test`` with bioimageio.core 0.11 / spec 0.5.12, and
    JDLL 0.6.1's ``ModelDescriptorFactory``), each change on its own:

    * ``fixed_zero_mean_unit_variance`` with scalar ``mean``/``std`` and no ``axis`` (the converter
      writes one-element lists along ``axis: channel``, on which JDLL throws
      ArrayIndexOutOfBoundsException): test passes -> applied;
    * an ``id`` (JDLL throws NullPointerException without one): test passes, no warning -> applied;
    * ``documentation`` (JDLL casts it to a String: ClassCastException on the ``{source, sha256}`` that
      spec 0.5.12 requires; a plain string is rejected by the spec): the field is optional, so it is
      left out and the README travels as an attachment -> applied;
    * ``covers: [{source, sha256}]``: JDLL 0.6.1 reads them unchecked (only its downloader uses them as
      strings); an empty list makes the spec generate a cover -> kept;
    * the output size (JDLL multiplies the output axis ``scale`` where the spec divides):
      :func:`zoo_axes` -> applied."""
    from bioimageio.spec.model import v0_5

    for tensor in list(descr.inputs) + list(descr.outputs):
        steps = list(getattr(tensor, "preprocessing", []) or []) + list(getattr(tensor, "postprocessing", []) or [])
        for op in steps:
            if isinstance(op, v0_5.FixedZeroMeanUnitVarianceDescr) and \
                    isinstance(op.kwargs, v0_5.FixedZeroMeanUnitVarianceAlongAxisKwargs) and \
                    len(op.kwargs.mean) == 1 and len(op.kwargs.std) == 1:
                op.kwargs = v0_5.FixedZeroMeanUnitVarianceKwargs(mean=op.kwargs.mean[0], std=op.kwargs.std[0])
    if model_id:
        descr.id = v0_5.ModelId(model_id)
    if descr.documentation is not None:
        descr.attachments = [*descr.attachments, v0_5.FileDescr(source=descr.documentation.source)]
        descr.documentation = None


def make_zoo_package(rdf_path: Path, out_zip: Path, model_id: Optional[str] = None, min_side: int = 1,
                     scale: int = 2) -> Path:
    """Convert the 0.4.10 description to format 0.5 (bioimageio.spec's converter), adapt it to its
    consumers (:func:`zoo_axes`, :func:`jdll_friendlier_05`; ``min_side``: the smallest input side the
    weights take) and package it.

    The zoo tolerance is written into ``config.bioimageio.reproducibility_tolerance`` so that
    ``bioimageio test`` checks the same bound the parity matrix uses.
    """
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    descr = validate_rdf_format(rdf_path, format_version="latest")
    if not isinstance(descr, v0_5.ModelDescr):
        raise UserError(f"{rdf_path}: conversion to format 0.5 gave {type(descr).__name__}")
    zoo_axes(descr, min_side, scale)
    jdll_friendlier_05(descr, model_id)
    # a new node (not an attribute edit), so that the serialiser sees the field as set
    descr.config.bioimageio = v0_5.BioimageioConfig(reproducibility_tolerance=[
        v0_5.ReproducibilityTolerance(relative_tolerance=RTOL, absolute_tolerance=ATOL)
    ])
    out_zip = Path(out_zip)
    out_zip.parent.mkdir(parents=True, exist_ok=True)
    save_bioimageio_package(descr, output_path=out_zip)
    if not out_zip.is_file():  # the exporter once returned without writing (core#302)
        raise UserError(f"{out_zip}: bioimageio.spec did not write the package")
    return out_zip
