"""RRDBNet, the ESRGAN generator, for 1-channel 2x joint denoising + super-resolution.

Built from stock Keras layers (Conv2D, LeakyReLU, Concatenate, UpSampling2D nearest) plus one
tiny registered layer for the residual scaling, so that (a) it runs on any Keras 3 backend,
(b) ``generator.keras`` reloads after ``import training.models`` and (c) the frozen TensorFlow
graph contains only ops that DeepImageJ's old TensorFlow runtimes (1.15, 2.7) know:
Conv2D, BiasAdd, LeakyRelu, ConcatV2, Mul, AddV2 and the nearest-neighbour upsampling.

Layout (x2, no conv right after the upsampling other than the HR conv):
conv_first(1->nf) -> nb x RRDB -> trunk conv -> + global skip -> nearest x2 ->
HR conv + LeakyReLU(0.2) -> conv_last(nf->1).
The default (nb=23, nf=64, gc=32) has 16,621,825 parameters.

Initialisation as in ESRGAN: the dense-block convs get MSRA/He-normal kernels scaled by
``cfg.init_scale`` (0.1) and zero biases, which keeps the residual trunk near identity at the
start (the brightness stability the report cites). The outer convs (first, trunk, HR, last) get
PyTorch's default conv kernel distribution, which ESRGAN leaves them with
(kaiming-uniform with a=sqrt(5), i.e. VarianceScaling(1/3, fan_in, uniform)), and zero biases.
"""
from __future__ import annotations

import logging

import keras
from keras import layers, ops

from training.models.registry import register_generator

logger = logging.getLogger(__name__)


@keras.saving.register_keras_serializable(package="w2sr")
class ScaledResidual(layers.Layer):
    """``x + scale * residual``: the residual scaling of ESRGAN (Mul + AddV2 when frozen)."""

    def __init__(self, scale: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs):
        x, residual = inputs
        return ops.add(x, ops.multiply(residual, ops.cast(self.scale, residual.dtype)))

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale})
        return config


def scaled_he_normal(scale: float) -> keras.initializers.Initializer:
    """He/MSRA normal (std = sqrt(2 / fan_in), not truncated) multiplied by ``scale``.

    Same distribution as PyTorch's ``kaiming_normal_`` followed by ``weight *= scale`` (ESRGAN).
    A stock VarianceScaling, so it serialises without custom code.
    """
    return keras.initializers.VarianceScaling(
        scale=2.0 * float(scale) ** 2, mode="fan_in", distribution="untruncated_normal"
    )


def torch_default_conv_init() -> keras.initializers.Initializer:
    """PyTorch's default Conv2d kernel init: uniform(+-1/sqrt(fan_in))."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


def _conv(filters: int, name: str, init, dtype=None) -> layers.Conv2D:
    return layers.Conv2D(
        filters, 3, padding="same", use_bias=True, kernel_initializer=init,
        bias_initializer="zeros", name=name, dtype=dtype,
    )


def _dense_block(x, nf: int, gc: int, res_scale: float, init_scale: float, name: str):
    """Residual dense block: 5 convs, each seeing the concatenation of all earlier features."""
    features = [x]
    for i in range(4):
        inp = features[0] if i == 0 else layers.Concatenate(axis=-1, name=f"{name}_cat{i + 1}")(features)
        h = _conv(gc, f"{name}_conv{i + 1}", scaled_he_normal(init_scale))(inp)
        h = layers.LeakyReLU(negative_slope=0.2, name=f"{name}_lrelu{i + 1}")(h)
        features.append(h)
    inp = layers.Concatenate(axis=-1, name=f"{name}_cat5")(features)
    h = _conv(nf, f"{name}_conv5", scaled_he_normal(init_scale))(inp)
    return ScaledResidual(res_scale, name=f"{name}_res")([x, h])


def _rrdb(x, nf: int, gc: int, res_scale: float, init_scale: float, name: str):
    """Residual-in-residual dense block: three dense blocks and a scaled skip around them."""
    h = x
    for j in range(3):
        h = _dense_block(h, nf, gc, res_scale, init_scale, f"{name}_rdb{j + 1}")
    return ScaledResidual(res_scale, name=f"{name}_res")([x, h])


def build_rrdbnet(nb: int = 23, nf: int = 64, gc: int = 32, scale: int = 2,
                  residual_scale: float = 0.2, init_scale: float = 0.1,
                  in_channels: int = 1, out_channels: int = 1, name: str = "rrdbnet") -> keras.Model:
    """The functional RRDBNet. Fully convolutional: input (None, H, W, 1) -> (None, 2H, 2W, 1)."""
    if scale != 2:
        raise ValueError(f"rrdbnet here is built for x2 only, got scale={scale}")
    inp = keras.Input(shape=(None, None, in_channels), name="input")
    fea = _conv(nf, "conv_first", torch_default_conv_init())(inp)
    h = fea
    for b in range(nb):
        h = _rrdb(h, nf, gc, residual_scale, init_scale, f"rrdb{b}")
    h = _conv(nf, "conv_trunk", torch_default_conv_init())(h)
    h = layers.Add(name="global_skip")([fea, h])
    h = layers.UpSampling2D(size=2, interpolation="nearest", name="upsample")(h)
    h = _conv(nf, "conv_hr", torch_default_conv_init())(h)
    h = layers.LeakyReLU(negative_slope=0.2, name="conv_hr_lrelu")(h)
    # float32 even under a mixed_float16 policy: the output (and the loss on it) stays full precision.
    out = _conv(out_channels, "conv_last", torch_default_conv_init(), dtype="float32")(h)
    model = keras.Model(inp, out, name=name)
    logger.debug("built %s: nb=%d nf=%d gc=%d, %d parameters", name, nb, nf, gc, model.count_params())
    return model


@register_generator("rrdbnet")
def build_from_config(cfg) -> keras.Model:
    """Registry entry: ``GeneratorConfig`` -> RRDBNet."""
    return build_rrdbnet(nb=cfg.nb, nf=cfg.nf, gc=cfg.gc, scale=cfg.scale,
                         residual_scale=cfg.residual_scale, init_scale=cfg.init_scale,
                         in_channels=cfg.in_channels, out_channels=cfg.out_channels)
