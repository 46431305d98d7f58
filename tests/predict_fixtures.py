"""A tiny, real 2x model for the tiling and predict tests (no mocks).

``tiny_weights`` draws conv weights in numpy; ``write_tiny_onnx`` turns them into an ONNX graph
(NHWC input "input" -> output "output", dynamic b/y/x, opset 17) that onnxruntime runs for real;
``write_tiny_savedmodel_zip`` builds the same network in Keras and exports a SavedModel zip.
Structure: 3 convs 3x3 + ReLU at input resolution, nearest 2x upsampling, one conv 3x3 at output
resolution. Receptive-field radius in input pixels: 3 + 1 = 4 (halo 4 is exact, halo 1 is not).
``write_bundle`` writes an rdf.yaml that ``export.bundle_info.read_bundle`` accepts.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import yaml

RF_RADIUS = 4  # input pixels


def tiny_weights(seed: int = 0, nf: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """(kernel HWIO, bias) for 4 convs: 1->nf, nf->nf, nf->nf, [upsample], nf->1."""
    rng = np.random.default_rng(seed)
    shapes = [(1, nf), (nf, nf), (nf, nf), (nf, 1)]
    out = []
    for cin, cout in shapes:
        k = rng.normal(0, 1.0 / np.sqrt(9 * cin), size=(3, 3, cin, cout)).astype(np.float32)
        b = rng.normal(0, 0.1, size=(cout,)).astype(np.float32)
        out.append((k, b))
    return out


def write_tiny_onnx(path: Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = tiny_weights(seed)
    inits, nodes = [], []
    nodes.append(helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2]))
    cur = "x0"
    for i, (k, b) in enumerate(weights):
        if i == 3:
            inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
            nodes.append(helper.make_node(
                "Resize", [cur, "", "scales"], ["up"], mode="nearest",
                coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
            cur = "up"
        inits.append(numpy_helper.from_array(np.transpose(k, (3, 2, 0, 1)).copy(), f"w{i}"))
        inits.append(numpy_helper.from_array(b, f"b{i}"))
        nodes.append(helper.make_node("Conv", [cur, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        cur = f"c{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"]))
            cur = f"r{i}"
    nodes.append(helper.make_node("Transpose", [cur], ["output"], perm=[0, 2, 3, 1]))
    graph = helper.make_graph(
        nodes, "tiny2x",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["b", "y", "x", 1])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["b", "y2", "x2", 1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_tiny_savedmodel_zip(path: Path, seed: int = 0) -> Path:
    """The same network as a TF SavedModel (serving_default, input "input"), zipped at the root."""
    import keras
    import tensorflow as tf

    weights = tiny_weights(seed)
    inp = keras.Input((None, None, 1), name="input")
    x = inp
    for i, (k, b) in enumerate(weights):
        if i == 3:
            x = keras.layers.UpSampling2D(2, interpolation="nearest")(x)
        conv = keras.layers.Conv2D(k.shape[-1], 3, padding="same", activation="relu" if i < 3 else None)
        x = conv(x)
        conv.set_weights([k, b])
    model = keras.Model(inp, x)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="input")])
    def serve(input):  # noqa: A002 - the signature key must be "input"
        return {"output": model(input)}

    tmp = Path(tempfile.mkdtemp())
    try:
        module = tf.Module()
        module.model = model
        tf.saved_model.save(module, str(tmp / "sm"), signatures={"serving_default": serve})
        path = Path(path)
        with zipfile.ZipFile(path, "w") as zf:
            for f in sorted((tmp / "sm").rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(tmp / "sm").as_posix())
    finally:
        shutil.rmtree(tmp)
    return path


def write_bundle(root: Path, *, input_mean: float = 100.0, input_std: float = 20.0,
                 target_mean: float = 50.0, target_std: float = 10.0, halo: int = RF_RADIUS,
                 min_size: int = 16, step: int = 8, savedmodel: bool = False, seed: int = 0,
                 percentiles: tuple[float, float] | None = None) -> Path:
    """A minimal format-0.4.10 bundle around the tiny model (what read_bundle needs); fixed
    normalisation, or per-image ``scale_range`` with ``percentiles=(low, high)``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    write_tiny_onnx(root / "weights.onnx", seed)
    weights = {"onnx": {"source": "weights.onnx", "opset_version": 17}}
    if savedmodel:
        write_tiny_savedmodel_zip(root / "tf_saved_model.zip", seed)
        weights["tensorflow_saved_model_bundle"] = {"source": "tf_saved_model.zip", "tensorflow_version": "2.10"}
    np.save(root / "test_input.npy", np.zeros((1, min_size, min_size, 1), np.float32))
    np.save(root / "test_output.npy", np.zeros((1, 2 * min_size, 2 * min_size, 1), np.float32))
    rdf = {
        "format_version": "0.4.10",
        "type": "model",
        "name": "tiny-test-model",
        "inputs": [{
            "name": "input", "axes": "byxc", "data_type": "float32",
            "shape": {"min": [1, min_size, min_size, 1], "step": [0, step, step, 0]},
            "preprocessing": [{"name": "zero_mean_unit_variance",
                               "kwargs": {"mode": "fixed", "mean": input_mean, "std": input_std, "axes": "xy"}}]
            if percentiles is None else
            [{"name": "scale_range", "kwargs": {"mode": "per_sample", "axes": "xy", "min_percentile": percentiles[0],
                                                "max_percentile": percentiles[1], "eps": 1e-6}}],
        }],
        "outputs": [{
            "name": "output", "axes": "byxc", "data_type": "float32",
            "shape": {"reference_tensor": "input", "scale": [1, 2, 2, 1], "offset": [0, 0, 0, 0]},
            "halo": [0, 2 * halo, 2 * halo, 0],
            "postprocessing": [{"name": "scale_linear",
                                "kwargs": {"gain": target_std, "offset": target_mean, "axes": "xy"}}],
        }],
        "weights": weights,
        "test_inputs": ["test_input.npy"],
        "test_outputs": ["test_output.npy"],
    }
    if percentiles is not None:  # outputs stay in normalised units
        del rdf["outputs"][0]["postprocessing"]
    (root / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return root
