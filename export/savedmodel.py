"""Frozen-graph TensorFlow SavedModel of the Keras generator, for DeepImageJ's old runtimes.

Why frozen (see docs/toolchain notes): a SavedModel that TensorFlow 2.21 writes with variables
(Keras ``export``, ``tf.saved_model.save``) fails in TF 1.15 (unknown NodeDef attr ``debug_name``) and
in TF 2.7 (op ``DisableCopyOnRead``), the runtimes DeepImageJ installs by default. A graph whose
variables are folded into constants, written with ``tf.compat.v1.saved_model.Builder`` (tag
``serve``, signature ``serving_default``, input key ``input``, output key ``output``), loads in TF 1.15,
2.7, 2.10 and 2.21, and in bioimageio.core (its TF2 path needs the dict-returning signature).

The graph is checked against :data:`ALLOWED_OPS`: every op and every (non-internal) attribute must
be one TensorFlow 1.15 knows. Anything else fails the export loudly, naming the op.

The weights zip holds ``saved_model.pb`` and ``variables/`` at its root (DeepImageJ unpacks it into
the model folder), with fixed timestamps and sorted entries, so exporting one run twice gives
byte-identical files. Each weight is stored once (as a graph constant; ``variables/`` is empty).
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from w2sr.core.contract import INPUT_NAME, OUTPUT_NAME
from w2sr.core.errors import UserError
from w2sr.core.files import scratch_dir

from w2sr.bundle.savedmodel import SIGNATURE_KEY, TAG, load_graph_def, run_tf1, tf1_session, unzip_savedmodel

log = logging.getLogger(__name__)


#: Ops the frozen graph may contain, each with the NodeDef attributes TensorFlow 1.15 defines for
#: it (attributes starting with "_" are internal and ignored by every runtime). Default-valued
#: attributes are stripped before the check (``strip_default_attrs``), which is how TensorFlow keeps
#: graphs readable by older runtimes; what remains must be in this table.
ALLOWED_OPS: dict[str, frozenset[str]] = {
    # graph plumbing
    "Placeholder": frozenset({"dtype", "shape"}),
    "Const": frozenset({"dtype", "value"}),
    "Identity": frozenset({"T"}),
    "NoOp": frozenset(),
    # network
    "Conv2D": frozenset({"T", "strides", "use_cudnn_on_gpu", "padding", "explicit_paddings",
                         "data_format", "dilations"}),
    "Conv2DBackpropInput": frozenset({"T", "strides", "use_cudnn_on_gpu", "padding", "explicit_paddings",
                                      "data_format", "dilations"}),  # Conv2DTranspose
    "BiasAdd": frozenset({"T", "data_format"}),
    "LeakyRelu": frozenset({"T", "alpha"}),
    "Relu": frozenset({"T"}),
    "Sigmoid": frozenset({"T"}),
    "Softmax": frozenset({"T"}),
    "Tanh": frozenset({"T"}),
    "MaxPool": frozenset({"T", "ksize", "strides", "padding", "data_format"}),
    "AvgPool": frozenset({"T", "ksize", "strides", "padding", "data_format"}),
    "Add": frozenset({"T"}),
    "AddV2": frozenset({"T"}),
    "Sub": frozenset({"T"}),
    "Mul": frozenset({"T"}),
    "RealDiv": frozenset({"T"}),
    "Maximum": frozenset({"T"}),
    "Minimum": frozenset({"T"}),
    "ConcatV2": frozenset({"N", "T", "Tidx"}),
    # upsampling (Keras 3 nearest = Tile/Reshape) and shape arithmetic
    "Reshape": frozenset({"T", "Tshape"}),
    "Squeeze": frozenset({"T", "squeeze_dims"}),
    "ExpandDims": frozenset({"T", "Tdim"}),
    "Tile": frozenset({"T", "Tmultiples"}),
    "Pack": frozenset({"N", "T", "axis"}),
    "Shape": frozenset({"T", "out_type"}),
    "StridedSlice": frozenset({"T", "Index", "begin_mask", "end_mask", "ellipsis_mask",
                               "new_axis_mask", "shrink_axis_mask"}),
    "Cast": frozenset({"SrcT", "DstT", "Truncate"}),
    "Transpose": frozenset({"T", "Tperm"}),
    "ResizeNearestNeighbor": frozenset({"T", "align_corners", "half_pixel_centers"}),
    "DepthToSpace": frozenset({"T", "block_size", "data_format"}),
    "Pad": frozenset({"T", "Tpaddings"}),
    "MirrorPad": frozenset({"T", "Tpaddings", "mode"}),
    "Prod": frozenset({"T", "Tidx", "keep_dims"}),
    "FloorMod": frozenset({"T"}),
    "Neg": frozenset({"T"}),
    "Fill": frozenset({"T", "index_type"}),
}


#: fixed zip timestamp (the earliest a zip can store): same bytes for the same graph
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class SavedModelExport:
    """What :func:`export_savedmodel` wrote."""

    zip_path: Path
    ops: dict[str, int]            # op type -> count in the frozen graph
    n_weights: int                 # float values stored as constants
    n_params: int                  # model.count_params()
    graph_bytes: int               # size of saved_model.pb
    attrs_stripped: list[str] = field(default_factory=list)


def check_generator(model: Any, source: str | Path = "model", scale: int = 2) -> None:
    """The bundle describes a single-channel ``(B,H,W,1) -> (B,scale*H,scale*W,1)`` network: check it.

    Probed with an odd-sized input, so a model that only works for some sizes fails here too.
    """
    inputs = getattr(model, "inputs", None) or []
    outputs = getattr(model, "outputs", None) or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"{source}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] != 1:
        raise UserError(f"{source}: expected a single-channel input (B, H, W, 1), got {shape}")
    probe = np.zeros((1, 13, 17, 1), np.float32)
    try:
        out = np.asarray(model(probe, training=False))
    except Exception as exc:
        raise UserError(f"{source}: the model does not accept a (1, 13, 17, 1) input: {exc}") from None
    expected = (1, 13 * scale, 17 * scale, 1)
    if out.shape != expected:
        raise UserError(
            f"{source}: not a single-channel {scale}x model: input (1, 13, 17, 1) gave {out.shape}, "
            f"expected {expected}"
        )


def freeze_keras_model(model: Any, padding: int = 0, scale: int = 2, multiple: int = 1) -> Any:
    """Keras model -> frozen ``GraphDef`` with placeholder ``input`` and output node ``output``.

    ``padding``: the graph pads its input symmetrically by this many px and crops ``scale * padding``
    from its output (``w2sr.core.padding``: same pixels whether or not DeepImageJ mirror-pads the tile).
    Variables become constants; control dependencies, internal attributes (``_...``) and nodes not
    needed for the output are dropped.
    """
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from w2sr.core.padding import crop_tf, pad_tf

    channels = int(model.inputs[0].shape[-1]) if getattr(model, "inputs", None) else 1
    spec = tf.TensorSpec([None, None, None, channels], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec], autograph=False)
    def forward(x):
        like = x if multiple > 1 else None
        return crop_tf(model(pad_tf(x, padding, multiple), training=False), padding, scale, like)

    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
    graph_def = frozen.graph.as_graph_def()
    in_name = frozen.inputs[0].name.split(":")[0]
    out_name = frozen.outputs[0].name.split(":")[0]
    if in_name != INPUT_NAME:
        raise UserError(f"frozen graph: input placeholder is named '{in_name}', expected '{INPUT_NAME}'")
    graph_def = tf.compat.v1.graph_util.extract_sub_graph(graph_def, [out_name])
    names = {n.name for n in graph_def.node}
    if OUTPUT_NAME in names and OUTPUT_NAME != out_name:
        raise UserError(f"frozen graph: a node is already called '{OUTPUT_NAME}'")
    keep = []
    for node in graph_def.node:
        if node.op == "NoOp":
            continue
        inputs = [i for i in node.input if not i.startswith("^")]
        node.ClearField("input")
        node.input.extend(OUTPUT_NAME if i == out_name else i for i in inputs)
        for key in [k for k in node.attr if k.startswith("_")]:
            del node.attr[key]
        if node.name == out_name:
            node.name = OUTPUT_NAME
        keep.append(node)
    graph_def.ClearField("node")
    graph_def.node.extend(keep)
    graph_def.ClearField("library")  # no functions left after freezing
    return graph_def


def strip_default_attrs(graph_def: Any) -> list[str]:
    """Remove attributes that hold their op's default value (what old runtimes may not know)."""
    from tensorflow.python.framework import op_def_registry

    stripped = []
    for node in graph_def.node:
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            continue
        for attr_def in op_def.attr:
            if attr_def.name in node.attr and attr_def.HasField("default_value"):
                if node.attr[attr_def.name] == attr_def.default_value:
                    del node.attr[attr_def.name]
                    stripped.append(f"{node.op}.{attr_def.name}")
    return sorted(set(stripped))


def check_graph_ops(graph_def: Any, source: str | Path = "frozen graph") -> dict[str, int]:
    """Op type -> count; UserError naming every op or attribute an old runtime would not know."""
    counts: dict[str, int] = {}
    bad_ops: set[str] = set()
    bad_attrs: set[str] = set()
    for node in graph_def.node:
        counts[node.op] = counts.get(node.op, 0) + 1
        known = ALLOWED_OPS.get(node.op)
        if known is None:
            bad_ops.add(node.op)
            continue
        for key in node.attr:
            if not key.startswith("_") and key not in known:
                bad_attrs.add(f"{node.op}.{key}")
    if bad_ops or bad_attrs:
        parts = []
        if bad_ops:
            parts.append(f"ops outside the set checked to run in DeepImageJ's TensorFlow 1.15/2.7 engines: "
                         f"{sorted(bad_ops)} (replace the layer that makes them)")
        if bad_attrs:
            parts.append(f"attributes those runtimes do not define: {sorted(bad_attrs)}")
        raise UserError(f"{source}: " + "; ".join(parts) + f"; checked ops: {', '.join(sorted(ALLOWED_OPS))}")
    return dict(sorted(counts.items()))


def check_old_engine_ops(model: Any, source: str | Path = "model", scale: int = 2, multiple: int = 1) -> dict[str, int]:
    """Freeze ``model`` as the export will and check its ops, before any other work: a model with an
    op DeepImageJ's old TensorFlow cannot run is refused in one line naming the op."""
    graph_def = freeze_keras_model(model, padding=0, scale=scale, multiple=multiple)
    strip_default_attrs(graph_def)
    return check_graph_ops(graph_def, source)


def count_constant_values(graph_def: Any) -> int:
    """Number of float values stored in Const nodes (the weights, plus a few scalars)."""
    from tensorflow.core.framework import types_pb2

    total = 0
    for node in graph_def.node:
        if node.op == "Const" and node.attr["dtype"].type == types_pb2.DT_FLOAT:
            dims = [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
            total += int(np.prod(dims)) if dims else 1
    return total


def write_frozen_savedmodel(graph_def: Any, out_dir: Path) -> Path:
    """Write ``graph_def`` as a TF1-style SavedModel (tag serve, signature serving_default)."""
    import tensorflow as tf

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(graph_def, name="")
        x = graph.get_tensor_by_name(f"{INPUT_NAME}:0")
        y = graph.get_tensor_by_name(f"{OUTPUT_NAME}:0")
        with tf.compat.v1.Session(graph=graph) as sess:
            builder = tf.compat.v1.saved_model.Builder(str(out_dir))
            signature = tf.compat.v1.saved_model.signature_def_utils.predict_signature_def(
                inputs={INPUT_NAME: x}, outputs={OUTPUT_NAME: y})
            builder.add_meta_graph_and_variables(
                sess, [TAG], signature_def_map={SIGNATURE_KEY: signature}, strip_default_attrs=True)
            builder.save(as_text=False)
    (out_dir / "variables").mkdir(exist_ok=True)  # empty: every weight is a graph constant
    return out_dir


def deterministic_zip(folder: Path, zip_path: Path, *, exclude: Iterable[str] = ()) -> Path:
    """Zip ``folder``'s content at the zip root: sorted entries, fixed times and permissions.

    Directories get their own entries (so an empty ``variables/`` survives). ``exclude`` holds
    top-level names to leave out.
    """
    folder, zip_path = Path(folder), Path(zip_path)
    excluded = set(exclude)
    entries: list[tuple[str, Path]] = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder)
        if rel.parts[0] in excluded:
            continue
        entries.append((rel.as_posix() + ("/" if path.is_dir() else ""), path))
    entries.sort(key=lambda e: e[0])
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        for name, path in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE_TIME)
            info.create_system = 3  # unix, so the permission bits below mean the same everywhere
            if path.is_dir():
                info.external_attr = (0o40755 << 16) | 0x10
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                with path.open("rb") as fh:
                    zf.writestr(info, fh.read(), compresslevel=6)
    return zip_path


def export_savedmodel(model: Any, zip_path: str | Path, *, source: str | Path = "model",
                      padding: int = 0, scale: int = 2, multiple: int = 1) -> SavedModelExport:
    """Freeze ``model`` (with ``padding`` px of in-graph symmetric padding), check its ops, write the
    SavedModel and zip it to ``zip_path``."""
    zip_path = Path(zip_path)
    graph_def = freeze_keras_model(model, padding=padding, scale=scale, multiple=multiple)
    stripped = strip_default_attrs(graph_def)
    ops = check_graph_ops(graph_def, source)
    n_weights = count_constant_values(graph_def)
    with scratch_dir("savedmodel") as tmp:
        sm_dir = write_frozen_savedmodel(graph_def, Path(tmp) / "savedmodel")
        # re-check what was actually written (the Builder may add nodes of its own)
        written = written_graph_def(sm_dir)
        ops = check_graph_ops(written, f"{source} (as written)")
        graph_bytes = (sm_dir / "saved_model.pb").stat().st_size
        deterministic_zip(sm_dir, zip_path)
    log.info("SavedModel: %d ops of %d types, %d weights (%.1f MB graph) -> %s",
             sum(ops.values()), len(ops), n_weights, graph_bytes / 1e6, zip_path)
    return SavedModelExport(zip_path=zip_path, ops=ops, n_weights=n_weights,
                            n_params=int(model.count_params()), graph_bytes=graph_bytes,
                            attrs_stripped=stripped)


def written_graph_def(sm_dir: Path) -> Any:
    """The graph exactly as ``saved_model.pb`` stores it (a loader would add default attributes back,
    ones TensorFlow 1.15 may not know, such as MaxPool's ``explicit_paddings``)."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(sm_dir) / "saved_model.pb").read_bytes())
    return sm.meta_graphs[0].graph_def
