"""Pixel, RaGAN and perceptual losses.

Every VGG19 here uses weights="random" EXPLICITLY: the ImageNet file cannot be downloaded on
these machines, and the properties tested (pre-activation feature, preprocessing, error
messages) do not depend on the weight values.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras 3 is a project dependency")
tf = pytest.importorskip("tensorflow", reason="gradients are taken with the TensorFlow backend")

from keras import ops  # noqa: E402

from training.config import LossConfig  # noqa: E402
from training.losses import gan, perceptual, pixel  # noqa: E402
from w2sr.core.errors import UserError  # noqa: E402


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------- pixel
def test_pixel_losses_known_values():
    a = np.array([[0.0, 1.0], [2.0, 3.0]], "float32")
    b = np.array([[1.0, 1.0], [0.0, 3.0]], "float32")
    assert float(pixel.pixel_loss("l1")(a, b)) == pytest.approx(3.0 / 4)
    assert float(pixel.pixel_loss("l2")(a, b)) == pytest.approx(5.0 / 4)
    with pytest.raises(ValueError):
        pixel.pixel_loss("huber")


# ---------------------------------------------------------------- RaGAN
def test_ragan_matches_hand_computed_formula():
    real = np.array([[1.0], [2.0], [0.5]], "float32")
    fake = np.array([[0.0], [-1.0], [0.3]], "float32")
    real_rel = real[:, 0] - fake.mean()
    fake_rel = fake[:, 0] - real.mean()
    # L_D = -E[log s(C(xr) - E C(xf))] - E[log(1 - s(C(xf) - E C(xr)))]
    expected_d = -np.mean(np.log(_sigmoid(real_rel))) - np.mean(np.log(1 - _sigmoid(fake_rel)))
    # L_G = -E[log(1 - s(C(xr) - E C(xf)))] - E[log s(C(xf) - E C(xr))]
    expected_g = -np.mean(np.log(1 - _sigmoid(real_rel))) - np.mean(np.log(_sigmoid(fake_rel)))
    assert float(gan.ragan_discriminator_loss(real, fake)) == pytest.approx(expected_d, rel=1e-5)
    assert float(gan.ragan_generator_loss(real, fake)) == pytest.approx(expected_g, rel=1e-5)
    # symmetric: swapping real and fake turns one loss into the other
    assert float(gan.ragan_generator_loss(fake, real)) == pytest.approx(expected_d, rel=1e-5)


def test_ragan_stable_on_large_logits():
    """Saturated discriminator: finite loss equal to the logit gap, gradients still non-zero."""
    real = tf.constant([[1000.0], [900.0]])
    fake = tf.Variable([[-1000.0], [-800.0]])
    with tf.GradientTape() as tape:
        g_loss = gan.ragan_generator_loss(real, fake)
    grad = tape.gradient(g_loss, fake).numpy()
    real_rel = np.array([1000.0, 900.0]) - (-900.0)
    fake_rel = np.array([-1000.0, -800.0]) - 950.0
    # softplus(z) = z for large z: L_G = mean(real_rel) + mean(-fake_rel)
    assert float(g_loss) == pytest.approx(real_rel.mean() - fake_rel.mean(), rel=1e-6)
    assert np.isfinite(grad).all() and np.abs(grad).min() > 0.1
    d_loss = gan.ragan_discriminator_loss(real, fake)
    assert np.isfinite(float(d_loss)) and float(d_loss) == pytest.approx(0.0, abs=1e-6)
    # the defect: probabilities-expecting cross-entropy on the same logit differences saturates
    bce = keras.losses.BinaryCrossentropy(from_logits=False)
    with tf.GradientTape() as tape:
        wrong = bce(tf.ones(2), tf.reshape(fake, (-1,)) - tf.reduce_mean(real))
    wrong_grad = tape.gradient(wrong, fake)
    assert float(wrong) < 20 and (wrong_grad is None or np.abs(wrong_grad.numpy()).max() == 0)


def test_ragan_float16_logits_give_float32_loss():
    real = np.array([[3.0], [1.0]], "float16")
    fake = np.array([[-2.0], [0.0]], "float16")
    loss = gan.ragan_generator_loss(real, fake)
    assert keras.backend.standardize_dtype(loss.dtype) == "float32"


# ---------------------------------------------------------------- perceptual
@pytest.fixture(scope="module")
def random_vgg():
    """VGG19 with weights="random" on purpose (see module docstring)."""
    return perceptual.load_vgg19("random")


def test_random_weights_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="training.losses.perceptual"):
        perceptual.load_vgg19("random")
    assert any("not meaningful" in r.getMessage() for r in caplog.records)


def test_feature_is_pre_activation_conv_output(random_vgg):
    layer = "block3_conv4"
    fm = perceptual.vgg_feature_model(layer, vgg=random_vgg)
    x = perceptual.to_vgg_input(np.random.default_rng(0).standard_normal((2, 32, 32, 1)).astype("float32"))
    feat = np.asarray(fm(x))
    # the conv by hand: previous layer's output * kernel + bias, no activation
    prev = keras.Model(random_vgg.inputs, random_vgg.get_layer("block3_conv3").output)
    kernel, bias = random_vgg.get_layer(layer).get_weights()
    by_hand = np.asarray(ops.conv(prev(x), kernel, strides=1, padding="same")) + bias
    np.testing.assert_allclose(feat, by_hand, rtol=1e-4, atol=1e-3 * np.abs(by_hand).max())
    assert (feat < 0).mean() > 0.1, "pre-activation features must take negative values"
    # Keras' own block3_conv4 output is the ReLU of it (what the original code wrongly used)
    post = np.asarray(keras.Model(random_vgg.inputs, random_vgg.get_layer(layer).output)(x))
    assert post.min() >= 0
    np.testing.assert_allclose(post, np.maximum(feat, 0), rtol=1e-4, atol=1e-3 * np.abs(feat).max())


def test_unknown_layer_lists_conv_layers(random_vgg):
    with pytest.raises(UserError, match="block3_conv4"):
        perceptual.vgg_feature_model("block3_pool", vgg=random_vgg)


def test_vgg_input_preprocessing_matches_keras_caffe_mode():
    z = np.random.default_rng(1).standard_normal((1, 8, 8, 1)).astype("float32")
    gray = perceptual.GRAY_MEAN + perceptual.GRAY_STD * z
    expected = keras.applications.vgg19.preprocess_input(np.repeat(gray, 3, axis=-1).copy())
    np.testing.assert_allclose(np.asarray(perceptual.to_vgg_input(z)), expected, atol=1e-3)


def test_perceptual_loss_values_and_gradient(random_vgg):
    fm = perceptual.vgg_feature_model("block3_conv4", vgg=random_vgg)
    loss = perceptual.PerceptualLoss(criterion="l1", weights="random", feature_model=fm)
    rng = np.random.default_rng(2)
    y_true = rng.standard_normal((2, 32, 32, 1)).astype("float32")
    assert float(loss(y_true, y_true)) == pytest.approx(0.0, abs=1e-6)
    y_pred = tf.Variable(y_true + 0.5 * rng.standard_normal(y_true.shape).astype("float32"))
    with tf.GradientTape() as tape:
        value = loss(y_true, y_pred)
    grad = tape.gradient(value, y_pred).numpy()
    assert float(value) > 0 and np.abs(grad).max() > 0
    f_true, f_pred = np.asarray(loss.features(y_true)), np.asarray(loss.features(y_pred))
    assert float(value) == pytest.approx(np.abs(f_true - f_pred).mean(), rel=1e-4)


def test_texture_term_added_with_its_weight(random_vgg):
    fm = perceptual.vgg_feature_model("block2_conv2", vgg=random_vgg)
    loss = perceptual.PerceptualLoss(layer="block2_conv2", criterion="l2", weights="random",
                                     texture_weight=3.0, perceptual_weight=0.5, feature_model=fm)
    rng = np.random.default_rng(3)
    a = rng.standard_normal((1, 16, 16, 1)).astype("float32")
    b = rng.standard_normal((1, 16, 16, 1)).astype("float32")
    terms = loss.terms(a, b)
    assert float(terms["texture"]) > 0
    fa, fb = np.asarray(loss.features(a)), np.asarray(loss.features(b))
    ga = np.einsum("bnc,bnd->bcd", fa.reshape(1, -1, fa.shape[-1]), fa.reshape(1, -1, fa.shape[-1])) / fa[0].size
    gb = np.einsum("bnc,bnd->bcd", fb.reshape(1, -1, fb.shape[-1]), fb.reshape(1, -1, fb.shape[-1])) / fb[0].size
    assert float(terms["texture"]) == pytest.approx(np.mean((ga - gb) ** 2), rel=1e-3)
    assert float(loss(a, b)) == pytest.approx(0.5 * float(terms["perceptual"]) + 3.0 * float(terms["texture"]), rel=1e-5)


# ---------------------------------------------------------------- weights files
def test_missing_imagenet_weights_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    expected = tmp_path / "keras_home" / "models" / perceptual.VGG19_NOTOP_FILE
    with pytest.raises(UserError) as info:
        perceptual.load_vgg19("imagenet")
    assert str(expected) in str(info.value) and "loss.vgg_weights" in str(info.value)
    with pytest.raises(UserError, match=perceptual.VGG19_NOTOP_FILE):
        perceptual.check_vgg_weights_available(LossConfig(vgg_weights="imagenet"))


def test_check_skips_when_perceptual_unused(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    cfg = LossConfig(vgg_weights="imagenet", perceptual_weight=0.0, texture_weight=0.0)
    assert perceptual.check_vgg_weights_available(cfg) is None


def test_missing_or_corrupt_local_weights(tmp_path):
    missing = tmp_path / "nope.h5"
    with pytest.raises(UserError, match="nope.h5"):
        perceptual.load_vgg19(str(missing))
    with pytest.raises(UserError, match="nope.h5"):
        perceptual.check_vgg_weights_available(LossConfig(vgg_weights=str(missing)))
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"this is not an HDF5 file at all")
    with pytest.raises(UserError, match="corrupt.h5"):
        perceptual.load_vgg19(str(corrupt))


def test_local_weights_file_is_loaded(tmp_path, random_vgg):
    path = tmp_path / "vgg19_local.weights.h5"
    random_vgg.save_weights(path)
    assert perceptual.check_vgg_weights_available(LossConfig(vgg_weights=str(path))) == path
    loaded = perceptual.load_vgg19(str(path))
    for name in ("block1_conv1", "block5_conv4"):
        np.testing.assert_array_equal(loaded.get_layer(name).get_weights()[0],
                                      random_vgg.get_layer(name).get_weights()[0])


def test_corrupt_imagenet_cache_file_is_reported(tmp_path, monkeypatch):
    """A truncated cache file is refused (md5), without Keras trying to download it again."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    bad = tmp_path / "models" / perceptual.VGG19_NOTOP_FILE
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(UserError, match="corrupt or incomplete"):
        perceptual.load_vgg19("imagenet")
