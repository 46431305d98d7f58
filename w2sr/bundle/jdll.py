"""What DeepImageJ 3.1 does with a bundle: JDLL 0.6.1's rdf reading, tiling and processing, in numpy.

DeepImageJ 3.1 hands the model to JDLL (``io.bioimage:dl-modelrunner``, version 0.6.1 pinned by
deepimagej-plugin). This module reproduces the parts of JDLL that decide which pixels a Fiji user
gets, so that the exporter, ``w2sr validate``, the engine check and the Fiji stand-in can run a bundle
*the way DeepImageJ runs it* instead of the way we would like it to:

* ``TileCalculator.getOptimalTileSize``: the tile of every axis (:func:`tile_size`), including the
  step-0 rule (tile = ``min``) and the "3 x the image" shrink;
* ``TileMaker`` / ``TileGrid`` / ``PatchSpec``: the tile grid, the padding of every tile by the halo
  with ``Views.extendMirrorDouble`` (numpy's ``symmetric`` mode), and how each output tile's
  region of interest is placed (:func:`axis_plan`, :func:`run_tiled`); the input and the output
  grids are computed independently, as JDLL does, so JDLL's own misalignment (an output shifted by
  one pixel when ``tile - size`` is odd and larger than ``2 * halo``) is reproduced, not hidden;
* ``ModelDescriptorV04.calculateTotalInputHalo``: input halo = ``(output halo + offset) / scale``;
* ``ZeroMeanUnitVarianceTransformation`` and ``ScaleRangeTransformation``: their kwargs checks (with
  JDLL's own messages, including the "Setter ... not found" of ``TransformationInstance`` for an
  unknown kwarg) and their arithmetic (:func:`zero_mean_unit_variance`, :func:`scale_range`: JDLL's
  un-interpolated percentile over the whole image), applied to a float copy of the whole image before
  tiling, as ``BioimageIoModelJava.runBMZ`` / ``Processing.preprocess(inputs, false)`` do in 0.6.1 (no
  8/16-bit flooring on that path);
* ``TileCalculator.checkOutputSize``: when it is entered it never returns (:func:`never_returns`).

Provenance: every rule here was read in JDLL's source at tag ``dl-modelrunner-0.6.1`` (files named in
the docstrings). The tile formula, the mirror padding, the kwargs exception, the float copy and the
hang were also observed by running JDLL 0.6.1, compiled from that source, on this project's bundle
(``docs/deepimagej.md``, "Measured with JDLL's own code"); the one-pixel output shift for small
images (``TileMaker.computePatchSpecs`` / ``getNthTileOutput``) and the refusal of sides below a third
of the tile were also observed with the real DeepImageJ_Run plugin in December 2026.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from w2sr.core.padding import symmetric_indices

JDLL_VERSION = "0.6.1"
#: TileCalculator.OPTIMAL_MAX_NUMBER_PIXELS: a tile above this sends JDLL into checkOutputSize
OPTIMAL_MAX_NUMBER_PIXELS = 4096 * 4096 * 3
#: Integer.MAX_VALUE: the largest output tensor (in bytes) JDLL accepts, and ImgLib2's array limit
MAX_ARRAY = 2 ** 31 - 1


class JdllError(ValueError):
    """What JDLL would throw; the message is JDLL's own where it has one."""


# --------------------------------------------------------------------------------------------
# the rdf as JDLL reads it (format 0.4)


@dataclass(frozen=True)
class JdllAxis:
    """One spatial input axis as JDLL sees it (``AxisV04`` after ``calculateTotalInputHalo``)."""

    min: int
    step: int
    halo: int          # input pixels
    scale: float       # output size / input size
    out_halo: int      # output pixels, as written in the rdf
    offset: float = 0.0


@dataclass(frozen=True)
class JdllModel:
    """The parts of a 0.4 rdf JDLL 0.6.1 uses to tile and normalise one ``byxc`` image."""

    axes: str                      # input axes, e.g. "byxc"
    y: JdllAxis
    x: JdllAxis
    tiling: bool                   # ModelDescriptor.isTilingAllowed()
    preprocessing: list
    postprocessing: list
    output_dtype: str = "float32"
    #: not JDLL's: the network's pooling grid (config.w2sr.network.size_multiple), for the Fiji macro's canvas
    multiple: int = 1

    @classmethod
    def from_rdf(cls, doc: dict) -> "JdllModel":
        inp, out = doc["inputs"][0], doc["outputs"][0]
        axes = str(inp["axes"]).lower()
        shape = inp["shape"]
        if isinstance(shape, dict):
            mins, steps = list(shape["min"]), list(shape["step"])
        else:  # an explicit shape: fixed, step 0
            mins, steps = list(shape), [0] * len(shape)
        oshape = out.get("shape") or {}
        scales = list(oshape.get("scale") or [1] * len(axes)) if isinstance(oshape, dict) else [1] * len(axes)
        offsets = list(oshape.get("offset") or [0] * len(axes)) if isinstance(oshape, dict) else [0] * len(axes)
        halos = list(out.get("halo") or [0] * len(axes))
        out_axes = str(out["axes"]).lower()

        def axis(name: str) -> JdllAxis:
            i, o = axes.index(name), out_axes.index(name)
            scale, offset, out_halo = float(scales[o]), float(offsets[o]), int(halos[o])
            # calculateTotalInputHalo: (axHalo + axOffset) / axScale, cast to int
            halo = int((out_halo + offset) / scale) if out_halo else 0
            return JdllAxis(min=int(mins[i]), step=int(steps[i]), halo=halo, scale=scale,
                            out_halo=out_halo, offset=offset)

        dij = (doc.get("config") or {}).get("deepimagej")
        # DeepImageJExecutionConfig.build: a deepimagej block without allow_tiling means no tiling
        tiling = True if dij is None else bool(dij.get("allow_tiling", False))
        return cls(axes=axes, y=axis("y"), x=axis("x"), tiling=tiling,
                   preprocessing=list(inp.get("preprocessing") or []),
                   postprocessing=list(out.get("postprocessing") or []),
                   output_dtype=str(out.get("data_type", "float32")),
                   multiple=max(1, int((((doc.get("config") or {}).get("w2sr") or {}).get("network") or {})
                                       .get("size_multiple", 1))))


# --------------------------------------------------------------------------------------------
# which weights JDLL runs (ModelWeight.build, BioimageIoModelJava.createBioimageioModel)

#: the rdf's weight formats JDLL knows, and the identifier its keys start with (ModelWeight)
WEIGHT_IDENTIFIERS = {"keras_hdf5": "keras_hdf5", "onnx": "onnx", "pytorch_state_dict": "pytorch_state_dict",
                      "tensorflow_saved_model_bundle": "tensorflow_saved_model_bundle",
                      "tensorflow_js": "tensorflow_js", "torchscript": "torchscript", "pytorch_script": "torchscript"}
#: the version field each format's training version is read from (``OnnxWeights`` defaults to "17")
VERSION_FIELDS = {"onnx": "opset_version", "tensorflow_saved_model_bundle": "tensorflow_version",
                  "keras_hdf5": "tensorflow_version", "pytorch_state_dict": "pytorch_version",
                  "torchscript": "pytorch_version", "pytorch_script": "pytorch_version",
                  "tensorflow_js": "tensorflow_version"}


def java_string_hash(text: str) -> int:
    """``String.hashCode()``: s[0]*31^(n-1) + ... + s[n-1], in 32-bit two's complement."""
    h = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        h = (31 * h + int(unit, 16)) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def _training_version(value: Any, default: Optional[str]) -> Optional[str]:
    """``WeightFormat.setTrainingVersion``: strings cut at "+", "cuda" or "cu"; numbers as Java prints
    them (YAML's unquoted 2.10 is the Double 2.1)."""
    if isinstance(value, str):
        for cut in ("+", "cuda", "cu"):
            if cut in value:
                return value[: value.index(cut)].strip()
        return value
    if isinstance(value, bool) or value is None:
        return default
    if isinstance(value, (int, float)):
        return repr(value)
    return default


def weight_order(doc: dict) -> list[str]:
    """The rdf's weight formats in the order JDLL 0.6.1 tries them: ``ModelWeight.build`` puts each
    into a ``HashMap`` under ``<identifier>_v<training version>`` (rdf order), and
    ``createBioimageioModel`` takes the first whose engine is installed, with no retry if it fails to
    load. A HashMap of up to 12 entries has 16 buckets, index ``(h ^ (h >>> 16)) & 15``; iteration
    goes by bucket, entries of one bucket in insertion order. So the order depends on the declared
    versions, not on the order of ``weights`` in the rdf."""
    keys: list[tuple[str, str]] = []
    for fmt, entry in (doc.get("weights") or {}).items():
        if fmt not in WEIGHT_IDENTIFIERS or entry is None:
            continue
        version = _training_version((entry or {}).get(VERSION_FIELDS[fmt]), "17" if fmt == "onnx" else None)
        name = f"{WEIGHT_IDENTIFIERS[fmt]}_v"
        if version is None:  # "Unknown0", "Unknown1", ... the first not yet taken
            n = 0
            while f"{name}Unknown{n}" in {k for k, _ in keys}:
                n += 1
            version = f"Unknown{n}"
        key = name + version
        if any(k == key for k, _ in keys):  # HashMap.put on an existing key: new value, same place
            keys = [(k, fmt if k == key else f) for k, f in keys]
        else:
            keys.append((key, fmt))

    def bucket(key: str) -> int:
        h = java_string_hash(key) & 0xFFFFFFFF
        return (h ^ (h >> 16)) & 15

    return [fmt for _, fmt in sorted(keys, key=lambda kv: bucket(kv[0]))]  # stable: insertion order kept


# --------------------------------------------------------------------------------------------
# tiles (bioimageio/tiling/TileCalculator.java, TileMaker.java, TileGrid.java)


def tile_size(size: int, axis: JdllAxis, tiling: bool = True) -> int:
    """``TileCalculator.getOptimalTileSize`` for one axis of an image of ``size`` pixels.

    ``(int) Math.ceil((size + 2 * halo) / step) * step`` divides integers first, so it floors.
    Step 0: the tile is ``min`` whatever the image (the only way to bound the tile)."""
    step, lo = axis.step, axis.min
    if step != 0 and tiling:
        patch = ((size + 2 * axis.halo) // step) * step
        if patch > 3 * size and patch - step >= lo:
            patch -= step
        if patch > 3 * size and math.ceil(size / step) * step >= lo:
            patch = math.ceil(size / step) * step
        return patch
    if step != 0:
        return -1  # computed after preprocessing: the whole image
    if lo == -1:
        return size
    return lo


def never_returns(model: JdllModel, shape: tuple[int, int]) -> bool:
    """Whether JDLL 0.6.1 enters ``TileCalculator.checkOutputSize`` for this image, which never
    returns (its axis counter is never incremented; boxed Doubles are compared with ``==``).

    Entered only when some axis has a non-zero step and the tile exceeds 4096*4096*3 pixels or the
    output tile 2**31 - 1 bytes. With every step 0 JDLL skips that check."""
    if not model.tiling or (model.y.step == 0 and model.x.step == 0):
        return False
    th, tw = tile_size(shape[0], model.y), tile_size(shape[1], model.x)
    out_bytes = int(th * model.y.scale + 2 * model.y.offset) * int(tw * model.x.scale + 2 * model.x.offset) * 4
    return th * tw > OPTIMAL_MAX_NUMBER_PIXELS or out_bytes > MAX_ARRAY


def output_too_large(model: JdllModel, shape: tuple[int, int]) -> bool:
    """The whole output image is one ImgLib2 array (``Tensor.buildBlankTensor``), at most 2**31 - 1 pixels."""
    return int(shape[0] * model.y.scale) * int(shape[1] * model.x.scale) > MAX_ARRAY


@dataclass(frozen=True)
class AxisPlan:
    """One axis of ``PatchSpec`` + ``TileGrid``: tile, padding and where each tile's ROI goes."""

    image: int
    tile: int
    pad_before: int
    pad_after: int
    roi: int
    patch_starts: tuple[int, ...]   # tile origin in image coordinates (may be negative)
    roi_starts: tuple[int, ...]     # where each tile's ROI lands in the image


def axis_plan(image: int, tile: int, halo: int) -> AxisPlan:
    """``TileMaker.computePatchSpecs`` and ``TileGrid.create`` for one axis (tiling allowed)."""
    pad0 = max(halo, math.ceil((tile - image) / 2))
    pad1 = max(halo, tile - image - pad0)
    n = math.ceil(image / (tile - 2 * halo))
    roi = tile - pad0 - pad1
    roi_starts = tuple(min(roi * i, image - roi) for i in range(n))
    patch_starts = tuple(min(roi * i - pad0, image - roi - pad0) for i in range(n))
    return AxisPlan(image, tile, pad0, pad1, roi, patch_starts, roi_starts)


@dataclass(frozen=True)
class TilePlan:
    """Everything JDLL decides about one ``(H, W)`` image before running the network."""

    shape: tuple[int, int]
    tile: tuple[int, int]             # input tile, px
    halo: tuple[int, int]             # input halo, px
    in_y: AxisPlan
    in_x: AxisPlan
    out_y: AxisPlan
    out_x: AxisPlan

    @property
    def n_tiles(self) -> int:
        return len(self.in_y.patch_starts) * len(self.in_x.patch_starts)

    @property
    def shifted(self) -> bool:
        """Whether JDLL's output grid disagrees with its input grid (the one-pixel shift)."""
        return any(2 * pi != po for a, b in ((self.in_y, self.out_y), (self.in_x, self.out_x))
                   for pi, po in zip(a.patch_starts, b.patch_starts))


def plan(model: JdllModel, shape: tuple[int, int]) -> TilePlan:
    """The tiles JDLL 0.6.1 uses for an ``(H, W)`` image, with its checks and its messages."""
    h, w = (int(s) for s in shape)
    if never_returns(model, (h, w)):
        raise JdllError(f"JDLL {JDLL_VERSION} never returns for a {h} x {w} image with this rdf "
                        f"(TileCalculator.checkOutputSize: a tile above {OPTIMAL_MAX_NUMBER_PIXELS} pixels)")
    if output_too_large(model, (h, w)):
        raise JdllError(f"the output of a {h} x {w} image exceeds {MAX_ARRAY} pixels, the largest image "
                        "JDLL (ImgLib2 arrays) and ImageJ can hold")
    if not model.tiling:
        raise JdllError("tiling is off in this rdf (config.deepimagej.allow_tiling): not reproduced")
    tiles = []
    for size, axis, name in ((h, model.y, "y"), (w, model.x, "x")):
        t = tile_size(size, axis)
        if t == -1:
            t = size
        if size * 3 < t:  # TileMaker.validateTileVsImageSize
            raise JdllError("Error in the axes size selected. The axes size introduced in any of the dimensions "
                            f"cannot be bigger than 3 times the image size of that same axes. The image selected "
                            f"has {name}-dimension of size {size}and the tile is of size {t}. Maxmum tile size for "
                            f"{name}-axis in this image is {size * 3}")
        if axis.step == 0 and axis.min != -1 and t != axis.min:  # validateStepMin
            raise JdllError(f"Invalid tile size for axis '{name.upper()}'. Only allowed tile size for this axis "
                            f"is: {axis.min}")
        out_tile = int(t * axis.scale + 2 * axis.offset)
        if out_tile - 2 * axis.out_halo <= 0:  # validateTileVsHalo
            raise JdllError(f"Input size too small, halo would be bigger than the image accross dimension "
                            f"'{name}'. Toal halo = {2 * axis.out_halo}, image size = {out_tile}.")
        tiles.append(t)
    (th, tw), (hy, hx) = tiles, (model.y.halo, model.x.halo)
    out_h, out_w = int(h * model.y.scale + 2 * model.y.offset), int(w * model.x.scale + 2 * model.x.offset)
    return TilePlan(
        shape=(h, w), tile=(th, tw), halo=(hy, hx),
        in_y=axis_plan(h, th, hy), in_x=axis_plan(w, tw, hx),
        out_y=axis_plan(out_h, int(th * model.y.scale + 2 * model.y.offset), model.y.out_halo),
        out_x=axis_plan(out_w, int(tw * model.x.scale + 2 * model.x.offset), model.x.out_halo))


def _tile_indices(tp: TilePlan) -> list[tuple[int, int]]:
    """(row, column) of every tile, rows outer: JDLL's order (it only matters where the last, clamped
    tile of an axis overlaps the one before; both orders write it last)."""
    return [(iy, ix) for iy in range(len(tp.in_y.patch_starts)) for ix in range(len(tp.in_x.patch_starts))]


def cut_tiles(image: np.ndarray, tp: TilePlan, which: Optional[list] = None) -> np.ndarray:
    """The input tiles JDLL feeds the network (``which``: tile indices, default all), cut from the
    mirror-extended image, as one ``(n, th, tw, 1)`` float32 batch."""
    h, w = tp.shape
    which = _tile_indices(tp) if which is None else which
    return np.stack([image[np.ix_(symmetric_indices(tp.in_y.patch_starts[iy], tp.tile[0], h),
                                  symmetric_indices(tp.in_x.patch_starts[ix], tp.tile[1], w))]
                     for iy, ix in which]).astype(np.float32)[..., None]


def _place(out: np.ndarray, y: np.ndarray, tp: TilePlan, iy: int, ix: int) -> None:
    """Write one tile's output ROI where JDLL's *output* grid puts it (``getNthTileOutput``)."""
    y = np.asarray(y, np.float32)
    y = y[..., 0] if y.ndim == 3 else y
    ry, rx = tp.out_y.roi_starts[iy], tp.out_x.roi_starts[ix]
    oy, ox = ry - tp.out_y.patch_starts[iy], rx - tp.out_x.patch_starts[ix]
    out[ry: ry + tp.out_y.roi, rx: rx + tp.out_x.roi] = y[oy: oy + tp.out_y.roi, ox: ox + tp.out_x.roi]


def run_tiled(predict_fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tp: TilePlan,
              batch: int = 1) -> np.ndarray:
    """``DLModelJava.runTiling`` on one preprocessed 2D image: tiles cut, run by ``predict_fn``
    (``(B, th, tw, 1)`` -> ``(B, s*th, s*tw, 1)``), outputs placed by JDLL's output grid."""
    image = np.asarray(image, np.float32)
    out = np.zeros((tp.out_y.image, tp.out_x.image), np.float32)
    specs = _tile_indices(tp)
    for k in range(0, len(specs), batch):
        chunk = specs[k: k + batch]
        for (iy, ix), y in zip(chunk, np.asarray(predict_fn(cut_tiles(image, tp, chunk)))):
            _place(out, y, tp, iy, ix)
    return out


def stitch(outputs: np.ndarray, tp: TilePlan) -> np.ndarray:
    """Place the network outputs of :func:`cut_tiles`'s tiles (same order) as JDLL does."""
    out = np.zeros((tp.out_y.image, tp.out_x.image), np.float32)
    for (iy, ix), y in zip(_tile_indices(tp), outputs):
        _place(out, y, tp, iy, ix)
    return out


def exposed_sides(tile: int, halo: int, scale: int = 2) -> tuple[list[int], int]:
    """For DeepImageJ run directly on an rdf with a fixed ``tile`` (step 0) and ``halo`` (input px): the
    image sides whose output JDLL shifts by one pixel, and the smallest side it does not refuse
    (``validateTileVsImageSize``: tile <= 3 x side). Every other side gives whole-image pixels."""
    refused_below = -(-tile // 3)
    shifted = [side for side in range(refused_below, tile)
               if any(scale * a != b for a, b in zip(axis_plan(side, tile, halo).patch_starts,
                                                      axis_plan(scale * side, scale * tile, scale * halo).patch_starts))]
    return shifted, refused_below


# --------------------------------------------------------------------------------------------
# processing (transformations/ZeroMeanUnitVarianceTransformation.java)


def _axes_string(axes: Any) -> Optional[str]:
    if axes is None:
        return None
    if isinstance(axes, str):
        return "c" if axes == "channel" else axes
    if isinstance(axes, (list, tuple)):
        return "".join("c" if a == "channel" else str(a) for a in axes)
    raise JdllError(f"'axes' parameter has to be an instance of {str}, of a String array or of a List of "
                    f"Strings. The provided argument is {type(axes)}")


def zero_mean_unit_variance(x: np.ndarray, kwargs: dict, tensor_axes: str) -> np.ndarray:
    """JDLL's ``zero_mean_unit_variance`` on a float copy of ``x`` (axes ``tensor_axes``).

    Fixed mode only (what the bundle uses). Raises :class:`JdllError` with JDLL's message where JDLL
    throws: for example a scalar ``mean`` with ``axes: xy`` on ``byxc`` (the remaining axes ``bc``
    send JDLL down its per-axis branch, which needs lists)."""
    mode = kwargs.get("mode", "per_sample")
    if mode != "fixed":
        raise JdllError(f"zero_mean_unit_variance mode '{mode}': not reproduced here (fixed only)")
    mean, std = kwargs.get("mean"), kwargs.get("std")
    eps = float(kwargs.get("eps", 1e-6))
    axes = _axes_string(kwargs.get("axes"))
    if mean is None or std is None:
        raise JdllError("If 'mode' parameter equals 'fixed', the 'mean' and 'std' arguments should be provided too.")
    listed = isinstance(mean, (list, tuple)), isinstance(std, (list, tuple))
    if listed[0] != listed[1]:
        raise JdllError("Both arguments 'mean' and 'std' need to be of the same type. Either a single value or an array.")
    if listed[0] and axes is None:
        raise JdllError("If 'mean' and 'std' are provided as arrays and 'mode' is 'fixed', the corresponding "
                        "'axes' argument should be provided too.")
    selected = "" if axes is None else "".join(a for a in tensor_axes if a.lower() not in axes.lower())
    data = np.asarray(x, np.float64)
    if axes is None or selected == "" or len(selected) == len(tensor_axes):
        if listed[0]:
            raise JdllError("The parameters 'mean' and 'std' cannot be arrays with the introduced 'axes'.")
        return ((data - float(mean)) / (float(std) + eps)).astype(np.float32)
    if not listed[0]:
        raise JdllError("The parameters 'mean' and ' std' have to be arrays with the introduced 'axes'.")
    # fixedAxesMeanStd: one (float-cast) mean/std per combination of the remaining axes, first axis fastest
    idx = [tensor_axes.index(a) for a in selected]
    sizes = [data.shape[i] for i in idx]
    out = np.empty(data.shape, np.float32)
    for c in range(int(np.prod(sizes))):
        point, rest = [], c
        for s in sizes:
            point.append(rest % s)
            rest //= s
        if c >= len(mean) or c >= len(std):
            raise JdllError(f"Index {c} out of bounds for length {min(len(mean), len(std))}")
        sl = [slice(None)] * data.ndim
        for i, p in zip(idx, point):
            sl[i] = slice(p, p + 1)
        m, s = float(np.float32(mean[c])), float(np.float32(std[c]))
        out[tuple(sl)] = ((data[tuple(sl)] - m) / (s + eps)).astype(np.float32)
    return out


def scale_range(x: np.ndarray, kwargs: dict, tensor_axes: str) -> np.ndarray:
    """JDLL's ``scale_range`` (transformations/ScaleRangeTransformation.java) on a float copy of ``x``.

    Percentiles are ``sorted[(int)(N * p / 100)]`` (clamped) over each plane of the axes in
    ``axes`` (one per combination of the others; all axes when ``axes`` is absent or covers them),
    then ``(x - lo) / (hi - lo + eps)`` in double, stored as float. ``reference_tensor`` is not
    supported by JDLL (it only prints so): refused here, since the result would not be the rdf's."""
    from w2sr.core.normalization import jdll_percentiles

    if kwargs.get("reference_tensor") is not None:
        raise JdllError("scale_range with reference_tensor: JDLL still does not support this processing")
    low, high = float(kwargs.get("min_percentile", 0)), float(kwargs.get("max_percentile", 100))
    eps = float(kwargs.get("eps", 1e-6))
    axes = _axes_string(kwargs.get("axes", kwargs.get("axis")))
    data = np.asarray(x, np.float32)
    selected = "" if axes is None else "".join(a for a in tensor_axes if a.lower() not in axes.lower())

    def scale(block: np.ndarray) -> np.ndarray:
        lo, hi = jdll_percentiles(block, [low, high])
        return ((block.astype(np.float64) - lo) / (hi - lo + eps)).astype(np.float32)

    if axes is None or selected == "" or len(selected) == len(tensor_axes):
        return scale(data)
    out = np.empty(data.shape, np.float32)
    idx = [tensor_axes.index(a) for a in selected]
    for point in np.ndindex(*[data.shape[i] for i in idx]):
        sl = [slice(None)] * data.ndim
        for i, p in zip(idx, point):
            sl[i] = slice(p, p + 1)
        out[tuple(sl)] = scale(data[tuple(sl)])
    return out


#: kwargs each transformation has a setter for in 0.6.1 (``TransformationInstance.setArg`` throws
#: "Setter for argument ... not found" on any other); ``mode`` is TensorTransformation.setMode
_SETTERS = {
    "zero_mean_unit_variance": ("mode", "eps", "mean", "std", "axes", "axis"),
    "scale_range": ("mode", "eps", "min_percentile", "max_percentile", "reference_tensor", "axes", "axis",
                    "tensor_name"),
}
_OPS = {"zero_mean_unit_variance": zero_mean_unit_variance, "scale_range": scale_range}


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def apply_processing(x: np.ndarray, ops: list, tensor_axes: str) -> np.ndarray:
    """Every op of a pre- or postprocessing list, in order, on a float copy (``Processing`` in 0.6.1)."""
    y = np.asarray(x, np.float32).copy()
    for op in ops:
        name = op.get("name")
        if name not in _OPS:
            raise JdllError(f"processing op '{name}': not reproduced by w2sr.bundle.jdll")
        kwargs = op.get("kwargs") or {}
        for key in kwargs:
            if key not in _SETTERS[name]:
                raise JdllError(f"Setter for argument '{key}' of the processing transformation '{name}' not found "
                                f"in the Java transformation class 'class io.bioimage.modelrunner.transformations."
                                f"{_camel(name)}Transformation'. A method called 'set{_camel(key)}' should be present.")
        y = _OPS[name](y, kwargs, tensor_axes)
    return y


def check_processing(model: JdllModel) -> None:
    """Run both processing lists on a 1-pixel tensor: raises JDLL's exception where JDLL would."""
    one = np.zeros((1,) * len(model.axes), np.float32)
    apply_processing(one, model.preprocessing, model.axes)
    apply_processing(one, model.postprocessing, model.axes)


# --------------------------------------------------------------------------------------------
# the whole path


def predict(model: JdllModel, predict_fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
            batch: int = 1) -> np.ndarray:
    """Raw 2D image -> DeepImageJ 3.1's output: float copy, preprocessing on the whole image, JDLL's
    tiles, the network (``predict_fn``, normalised ``(B, th, tw, 1)`` in and out), stitching as JDLL
    stitches, postprocessing on the whole output."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise JdllError(f"expected one 2D plane, got shape {image.shape}")
    if model.axes != "byxc":
        raise JdllError(f"input axes '{model.axes}': only byxc is reproduced")
    tp = plan(model, image.shape)
    x = apply_processing(image.astype(np.float32)[None, :, :, None], model.preprocessing, model.axes)
    y = run_tiled(predict_fn, x[0, :, :, 0], tp, batch=batch)
    return apply_processing(y[None, :, :, None], model.postprocessing, model.axes)[0, :, :, 0]


# --------------------------------------------------------------------------------------------
# what fiji_macros/deepimagej_predict.ijm adds around DeepImageJ for small images


def macro_canvas(model: JdllModel, shape: tuple[int, int]) -> tuple[int, int]:
    """The size the Fiji macro mirror-pads an image to before DeepImageJ: a side shorter than
    ``tile - 2 * halo`` becomes the smallest whole number of mirrored copies of itself that reaches
    ``tile - 2 * halo``. That avoids JDLL's two small-image problems (the "3 x the image" refusal
    and the one-pixel output shift), and, because the canvas is whole copies, every pixel value
    appears equally often: JDLL's percentiles of the canvas are those of the image (so a
    percentile-normalised model sees the same input). Other sides are left alone.

    A network with pooling (``model.multiple`` m > 1) gives the whole image's pixels only when every
    JDLL tile starts on its grid: the canvas side must then also be divisible by m (JDLL clamps its
    last tile to the image end). With per-image percentiles the canvas stays whole copies (the
    fewest that are divisible by m: up to m copies for an odd side); without them it is mirrored
    (numpy ``symmetric``) a halo beyond the image and up to the next multiple, so that JDLL's own
    mirror of the canvas edge lies outside what any kept pixel sees."""
    m = model.multiple
    percentiles = any(op.get("name") == "scale_range" for op in model.preprocessing)
    out = []
    for size, axis in zip(shape, (model.y, model.x)):
        size = int(size)
        need = tile_size(size, axis) - 2 * axis.halo
        if axis.step != 0:
            out.append(size)
        elif m == 1 or percentiles:
            k = max(1, -(-need // size)) if size < need else 1
            while (k * size) % m:
                k += 1
            out.append(k * size)
        elif size % m == 0 and size >= need:
            out.append(size)
        else:
            c = max(need, size + axis.halo)
            out.append(c + (-c) % m)
    return out[0], out[1]


def predict_like_macro(model: JdllModel, predict_fn: Callable[[np.ndarray], np.ndarray],
                       image: np.ndarray) -> np.ndarray:
    """The Fiji macro's path: pad at the bottom/right (numpy ``symmetric``) to :func:`macro_canvas`,
    run DeepImageJ (:func:`predict`), crop the output back to ``scale x`` the image."""
    image = np.asarray(image)
    h, w = image.shape
    ch, cw = macro_canvas(model, (h, w))
    canvas = image[np.ix_(symmetric_indices(0, ch, h), symmetric_indices(0, cw, w))]
    out = predict(model, predict_fn, canvas)
    return out[: int(h * model.y.scale), : int(w * model.x.scale)]
