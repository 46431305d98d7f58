"""Generator/discriminator structure: parameter count, any input size, save/load, logits."""
from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras 3 is a project dependency")

from training.config import DiscriminatorConfig, GeneratorConfig  # noqa: E402
from training.models import build_discriminator, build_generator  # noqa: E402
from training.models.registry import GENERATORS  # noqa: E402
from w2sr.core.errors import UserError  # noqa: E402

TINY = GeneratorConfig(nb=1, nf=8, gc=4)


def analytic_rrdbnet_params(nb: int, nf: int, gc: int, cin: int = 1, cout: int = 1) -> int:
    """3x3 conv with bias: 9*in*out + out. Dense block convs: in nf+k*gc -> gc (k=0..3), nf+4gc -> nf."""
    conv = lambda i, o: 9 * i * o + o  # noqa: E731
    dense_block = sum(conv(nf + k * gc, gc) for k in range(4)) + conv(nf + 4 * gc, nf)
    rrdb = 3 * dense_block
    return (conv(cin, nf)          # conv_first
            + nb * rrdb
            + conv(nf, nf)         # trunk conv
            + conv(nf, nf)         # HR conv after the nearest upsampling
            + conv(nf, cout))      # conv_last


def test_default_generator_parameter_count():
    model = build_generator(GeneratorConfig())
    assert analytic_rrdbnet_params(23, 64, 32) == 16_621_825
    assert model.count_params() == 16_621_825


@pytest.mark.parametrize("nb,nf,gc", [(1, 8, 4), (2, 6, 3)])
def test_small_generator_parameter_count(nb, nf, gc):
    model = build_generator(GeneratorConfig(nb=nb, nf=nf, gc=gc))
    assert model.count_params() == analytic_rrdbnet_params(nb, nf, gc)


def test_generator_input_contract():
    model = build_generator(TINY)
    assert model.layers[0].name == "input"
    assert tuple(model.inputs[0].shape) == (None, None, None, 1)
    assert model.outputs[0].dtype == "float32"


@pytest.mark.parametrize("h,w", [(13, 17), (16, 16), (1, 5), (40, 24)])
def test_generator_any_size_gives_2x(h, w):
    model = build_generator(TINY)
    x = np.random.default_rng(0).standard_normal((2, h, w, 1)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, 2 * h, 2 * w, 1)
    assert np.isfinite(y).all()


def test_generator_keras_round_trip(tmp_path):
    model = build_generator(TINY)
    x = np.random.default_rng(1).standard_normal((1, 13, 17, 1)).astype("float32")
    before = np.asarray(model(x, training=False))
    path = tmp_path / "generator.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    after = np.asarray(loaded(x, training=False))
    np.testing.assert_array_equal(before, after)
    assert loaded.count_params() == model.count_params()


def test_dense_block_init_is_scaled_he_normal():
    """Dense-block kernels ~ N(0, (0.1 * sqrt(2/fan_in))^2), biases zero (ESRGAN init)."""
    model = build_generator(GeneratorConfig(nb=1, nf=64, gc=32))
    layer = model.get_layer("rrdb0_rdb1_conv5")
    kernel, bias = (np.asarray(v) for v in layer.get_weights())
    fan_in = 3 * 3 * (64 + 4 * 32)
    expected = 0.1 * np.sqrt(2.0 / fan_in)
    assert kernel.std() == pytest.approx(expected, rel=0.05)
    assert not np.any(bias)


def test_generator_output_float32_under_mixed_precision():
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_generator(TINY)
        y = model(np.zeros((1, 8, 8, 1), "float32"), training=False)
        assert keras.backend.standardize_dtype(y.dtype) == "float32"
        assert model.get_layer("rrdb0_rdb1_conv1").compute_dtype == "float16"
    finally:
        keras.config.set_dtype_policy(old)


def test_discriminator_returns_logits():
    import keras

    keras.utils.set_random_seed(0)  # the check below depends on the weights: not on the tests run before
    model = build_discriminator(DiscriminatorConfig(base=4))
    assert model.layers[-1].activation.__name__ == "linear"
    x = np.random.default_rng(2).standard_normal((3, 128, 128, 1)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (3, 1)
    assert y.dtype == np.float32
    # logits, not probabilities: a sigmoid would keep every value inside (0, 1)
    big = np.asarray(model(100 * x, training=False))
    assert (big < 0).any() or (big > 1).any()


def test_discriminator_default_widths():
    model = build_discriminator(DiscriminatorConfig())
    widths = [model.get_layer(f"conv{i}_1").filters for i in range(5)]
    assert widths == [64, 128, 256, 512, 512]
    assert model.get_layer("dense1").units == 100
    # batch norm after every conv but the first
    bns = [layer.name for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 9 and "bn0_0" not in bns


def test_unknown_architecture_lists_known_names():
    cfg = GeneratorConfig(name="srresnet_nonexistent")
    with pytest.raises(UserError) as info:
        build_generator(cfg)
    assert "rrdbnet" in str(info.value) and "srresnet_nonexistent" in str(info.value)
    assert "rrdbnet" in GENERATORS


def test_frozen_generator_graph_uses_only_simple_ops():
    """The export freezes this graph for TF 1.15/2.7: no exotic ops may appear."""
    tf = pytest.importorskip("tensorflow", reason="freezing needs the TensorFlow backend")
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    model = build_generator(TINY)

    @tf.function
    def serve(x):
        return model(x, training=False)

    concrete = serve.get_concrete_function(tf.TensorSpec([None, None, None, 1], tf.float32))
    ops_used = {n.op for n in convert_variables_to_constants_v2(concrete).graph.as_graph_def().node}
    compute = {"Conv2D", "BiasAdd", "LeakyRelu", "ConcatV2", "Mul", "AddV2", "Tile"}
    plumbing = {"Const", "Identity", "NoOp", "Placeholder", "Reshape", "Shape", "StridedSlice",
                "Pack", "ExpandDims", "Squeeze", "Cast"}
    assert ops_used <= compute | plumbing, ops_used - compute - plumbing
    assert {"Conv2D", "LeakyRelu", "ConcatV2", "Mul", "AddV2"} <= ops_used
