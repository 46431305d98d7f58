"""ONNX weights (opset 17) converted by tf2onnx from the frozen SavedModel graph.

The ONNX file is made from the very graph that goes into ``tf_saved_model.zip`` (not from Keras), so
both weight formats describe one computation. Names equal the rdf tensor ids: input ``input``,
output ``output``; batch, height and width are dynamic (named ``batch``/``height``/``width`` and
``batch``/``height_x2``/``width_x2``). Serialised deterministically: converting the same graph twice
gives the same bytes. Opset 17 is what a fresh DeepImageJ installs (ONNX Runtime Java 1.13).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from w2sr.core.contract import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

INPUT_DIMS = ("batch", "height", "width", 1)
OUTPUT_DIMS = ("batch", "height_x2", "width_x2", 1)


@dataclass
class OnnxExport:
    path: Path
    opset: int
    ops: dict[str, int]
    n_bytes: int


def _rename_value(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def _set_dims(value_info: Any, dims: tuple) -> None:
    shape = value_info.type.tensor_type.shape
    if len(shape.dim) != len(dims):
        raise UserError(f"ONNX tensor '{value_info.name}' has rank {len(shape.dim)}, expected {len(dims)}")
    for d, want in zip(shape.dim, dims):
        if isinstance(want, int):
            d.ClearField("dim_param")
            d.dim_value = want
        else:
            d.ClearField("dim_value")
            d.dim_param = want


def canonical_order(graph: Any) -> None:
    """Sort the nodes topologically with ties broken by a structural hash (op, attributes, and the
    hashes of the inputs, initializers by content), so that the node order does not depend on
    tf2onnx's naming: two siblings (the two mirrored borders of ``w2sr.core.padding``) otherwise swap
    places between two conversions in one process."""
    import hashlib
    import heapq

    sig: dict[str, str] = {vi.name: f"input:{vi.name}" for vi in graph.input}
    for init in graph.initializer:
        sig[init.name] = "init:" + hashlib.sha256(init.raw_data or init.SerializeToString()).hexdigest()
    producers = {out: k for k, node in enumerate(graph.node) for out in node.output}
    consumers: dict[int, list[int]] = {}
    pending: dict[int, int] = {}
    for k, node in enumerate(graph.node):
        deps = {producers[i] for i in node.input if i in producers}
        pending[k] = len(deps)
        for d in deps:
            consumers.setdefault(d, []).append(k)

    def node_hash(k: int) -> str:
        node = graph.node[k]
        attrs = sorted(a.SerializeToString() for a in node.attribute)
        text = repr((node.op_type, node.domain, attrs, [sig.get(i, i) for i in node.input]))
        return hashlib.sha256(text.encode()).hexdigest()

    ready = [(node_hash(k), k) for k, n in pending.items() if n == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        h, k = heapq.heappop(ready)
        order.append(k)
        for j, out in enumerate(graph.node[k].output):
            sig[out] = f"{h}:{j}"
        for c in consumers.get(k, []):
            pending[c] -= 1
            if pending[c] == 0:
                heapq.heappush(ready, (node_hash(c), c))
    if len(order) != len(graph.node):
        raise UserError("ONNX graph has a cycle")
    nodes = [graph.node[k] for k in order]
    graph.ClearField("node")
    graph.node.extend(nodes)


def canonical_names(graph: Any) -> None:
    """Rename every intermediate tensor (``t0``, ``t1``... in order of first use) and node
    (``Conv_12``) structurally. tf2onnx names carry process-wide counters (``Conv__483``) and its
    constant de-duplication keeps either of two equal constants, so the raw names differ from one
    conversion to the next; structural names make converting the same graph give the same bytes."""
    keep = {vi.name for vi in list(graph.input) + list(graph.output)}
    mapping: dict[str, str] = {}

    def canon(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping)}"
        return mapping[name]

    for k, node in enumerate(graph.node):
        ins = [canon(n) for n in node.input]
        outs = [canon(n) for n in node.output]
        node.ClearField("input")
        node.input.extend(ins)
        node.ClearField("output")
        node.output.extend(outs)
        node.name = f"{node.op_type}_{k}"
        node.doc_string = ""
    inits = list(graph.initializer)
    for init in inits:
        init.name = canon(init.name)
    inits.sort(key=lambda t: int(t.name[1:]) if t.name[1:].isdigit() else -1)
    graph.ClearField("initializer")
    graph.initializer.extend(inits)


def convert_graph_def(graph_def: Any, opset: int = ONNX_OPSET) -> Any:
    """Frozen GraphDef (``input`` -> ``output``) -> onnx.ModelProto with clean names and dims."""
    import tf2onnx

    model, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=[f"{INPUT_NAME}:0"], output_names=[f"{OUTPUT_NAME}:0"], opset=opset)
    g = model.graph
    _rename_value(g, f"{INPUT_NAME}:0", INPUT_NAME)
    _rename_value(g, f"{OUTPUT_NAME}:0", OUTPUT_NAME)
    _set_dims(g.input[0], INPUT_DIMS)
    _set_dims(g.output[0], OUTPUT_DIMS)
    # drop shape annotations of intermediates: they carry generated "unk__N" names
    g.ClearField("value_info")
    canonical_order(g)
    canonical_names(g)
    g.name = "w2sr_generator"
    used_domains = {n.domain for n in g.node}
    keep = [o for o in model.opset_import if o.domain in ("", "ai.onnx") or o.domain in used_domains]
    model.ClearField("opset_import")
    model.opset_import.extend(keep)
    model.doc_string = "w2sr generator (joint denoising + 2x SR), converted by tf2onnx from the frozen graph"
    return model


def check_onnx(path_or_model: Any, source: str | Path = "weights.onnx") -> dict[str, int]:
    """Op counts; UserError if names, opset or dynamic dims are not what the rdf promises."""
    import onnx

    model = onnx.load(str(path_or_model)) if isinstance(path_or_model, (str, Path)) else path_or_model
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise UserError(f"{source}: ONNX checker failed: {exc}") from None
    g = model.graph
    if [i.name for i in g.input] != [INPUT_NAME] or [o.name for o in g.output] != [OUTPUT_NAME]:
        raise UserError(f"{source}: inputs {[i.name for i in g.input]} / outputs {[o.name for o in g.output]}, "
                        f"expected ['{INPUT_NAME}'] / ['{OUTPUT_NAME}']")
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset > ONNX_OPSET:
        raise UserError(f"{source}: opset {opset} is newer than {ONNX_OPSET} (what DeepImageJ installs)")
    for vi in (g.input[0], g.output[0]):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != 4 or any(d.HasField("dim_value") for d in dims[:3]) or dims[3].dim_value != 1:
            raise UserError(f"{source}: tensor '{vi.name}' must be (dynamic, dynamic, dynamic, 1)")
    counts: dict[str, int] = {}
    for node in g.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def export_onnx(savedmodel: str | Path, out_path: str | Path, opset: int = ONNX_OPSET) -> OnnxExport:
    """Convert the frozen SavedModel (folder or zip) to ``out_path`` (deterministic bytes)."""
    from w2sr.bundle.savedmodel import load_graph_def
    from w2sr.core.files import atomic_write_bytes

    out_path = Path(out_path)
    graph_def = load_graph_def(savedmodel)
    try:
        model = convert_graph_def(graph_def, opset)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{savedmodel}: tf2onnx conversion failed: {exc}") from None
    ops = check_onnx(model, out_path)
    data = model.SerializeToString(deterministic=True)
    atomic_write_bytes(out_path, data)
    log.info("ONNX: opset %d, %d nodes of %d types, %.1f MB -> %s",
             opset, sum(ops.values()), len(ops), len(data) / 1e6, out_path)
    return OnnxExport(path=out_path, opset=opset, ops=ops, n_bytes=len(data))
