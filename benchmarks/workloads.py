"""What the benchmarks run and how much arithmetic it is: the full generator (random weights, exported
once and cached) and FLOP counts, both of the Keras network and of the exported graph that actually
runs (which pads the image inside the graph: 9.39 instead of 8.77 TFLOP for the full model at 512^2)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "w2sr" / "bench"
log = logging.getLogger("workloads")


def full_bundle() -> Path:
    """Export the full generator (nb 23 / nf 64 / gc 32, random weights with non-zero biases so that
    convolution, bias and LeakyReLU fuse as in a trained model) once; cached."""
    bundle = CACHE / "full-bundle-v2"  # v2: DeepImageJ's default tile (512 + 2 x halo), as users get it
    if (bundle / "rdf.yaml").is_file():
        return bundle
    import keras

    from export.bundle import export_bundle
    from training.config import dump_config, load_config, packaged_config
    from training.models import build_generator

    run = CACHE / "full-run"
    run.mkdir(parents=True, exist_ok=True)
    cfg = load_config(packaged_config("w2s"))
    cfg.data.root = run / "no-data"  # the exporter simulates its sample image
    keras.utils.set_random_seed(0)
    model = build_generator(cfg.generator)
    rng = np.random.default_rng(0)
    for layer in model.layers:  # zero biases would let grappler drop BiasAdd and skip the fusions
        weights = layer.get_weights()
        if len(weights) == 2:
            layer.set_weights([weights[0], rng.normal(0, 0.01, weights[1].shape).astype(np.float32)])
    model.save(run / "generator.keras")
    dump_config(cfg, run / "config.yaml")
    (run / "DONE").write_text("benchmark run (random weights)\n")
    log.info("exporting the full generator once (about 40 minutes on 2 cores: every check runs) -> %s", bundle)
    export_bundle(run, bundle, name="bench-full", bioimageio=False, measure=False, odd_sizes=())
    return bundle


def test_image(side: int, seed: int = 0) -> np.ndarray:
    """A widefield-like image of ``side`` x ``side`` (gamma-distributed counts)."""
    return np.random.default_rng(seed).gamma(4.0, 100.0, (side, side)).astype(np.float32)


def keras_flops(keras_path: Path, side: int) -> float:
    """2 x multiply-adds of every convolution of the Keras generator for a side x side input (no padding)."""
    from training.models import load_generator

    model = load_generator(keras_path)
    total, scale = 0.0, 1
    for layer in model.layers:
        if "UpSampling" in type(layer).__name__:
            scale = 2
        kernel = getattr(layer, "kernel", None)
        if kernel is not None and "Conv" in type(layer).__name__:
            kh, kw, cin, cout = kernel.shape
            total += 2.0 * (side * scale) ** 2 * kh * kw * cin * cout
    return total


def graph_flops(onnx_path: Path, height: int, width: int) -> float:
    """2 x multiply-adds of every Conv, MatMul and Gemm of the exported ONNX graph for a
    1 x height x width x 1 input, from ONNX shape inference with data propagation (the in-graph
    padding's sizes are computed from the input's shape)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    concrete = [1, height, width, 1] if len(dims) == 4 else None
    if concrete is None:
        raise ValueError(f"{onnx_path}: expected one 4D input, found {len(dims)} dimensions")
    for d, v in zip(dims, concrete):
        d.ClearField("dim_param")
        d.dim_value = v
    inferred = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
    weights = {t.name: tuple(numpy_helper.to_array(t).shape) for t in model.graph.initializer}
    total = 0.0
    for node in inferred.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm"):
            continue
        out = shapes.get(node.output[0])
        if not out or any(v is None for v in out):
            raise ValueError(f"{onnx_path}: the output shape of {node.op_type} {node.name!r} is not inferable")
        if node.op_type == "Conv":
            w = weights.get(node.input[1]) or tuple(shapes.get(node.input[1]) or ())
            cout, cin_per_group, *kernel = w
            total += 2.0 * float(np.prod(out)) * cin_per_group * float(np.prod(kernel))
        else:
            a = shapes.get(node.input[0]) or [None]
            total += 2.0 * float(np.prod(out)) * float(a[-1])
    return total


def tiled_flops(onnx_path: Path, shape: tuple[int, int], tile, halo: int, valid_size=None) -> float:
    """FLOPs of the exported graph over the tiles ``w2sr.core.tiling`` runs for an image of ``shape``
    (every tile's halo and in-graph padding included)."""
    from w2sr.core.tiling import iter_tiles

    per_tile: dict = {}
    total = 0.0
    for _, _, th, tw, *_ in iter_tiles(shape, tile, halo, valid_size):
        if (th, tw) not in per_tile:
            per_tile[(th, tw)] = graph_flops(onnx_path, th, tw)
        total += per_tile[(th, tw)]
    return total
