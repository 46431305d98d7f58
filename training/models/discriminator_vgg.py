"""SRGAN/ESRGAN VGG-style discriminator ("vgg128") returning one logit per image.

Five conv pairs (3x3 stride 1, then 4x4 stride 2), widths base x (1, 2, 4, 8, 8), batch norm
after every conv but the first, LeakyReLU(0.2); then flatten, dense 100, LeakyReLU, dense 1.
No sigmoid: the RaGAN loss works on logits (training/losses/gan.py).
"""
from __future__ import annotations

import logging

import keras
from keras import layers

from training.models.registry import register_discriminator
from w2sr.core.errors import UserError

logger = logging.getLogger(__name__)


def build_vgg_discriminator(patch: int = 128, base: int = 64, in_channels: int = 1,
                            name: str = "discriminator_vgg128") -> keras.Model:
    """(B, patch, patch, C) -> (B, 1) float32 logits; patch must be a multiple of 32."""
    if patch % 32 != 0 or patch < 32:
        raise UserError(f"discriminator.patch must be a multiple of 32 (5 stride-2 convs), got {patch}")
    inp = keras.Input(shape=(patch, patch, in_channels), name="input")
    x = inp
    widths = [base, base * 2, base * 4, base * 8, base * 8]
    for i, width in enumerate(widths):
        first = i == 0
        # 3x3 stride 1; the very first conv keeps its bias and has no batch norm
        x = layers.Conv2D(width, 3, strides=1, padding="same", use_bias=first, name=f"conv{i}_0")(x)
        if not first:
            x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{i}_0")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"lrelu{i}_0")(x)
        # 4x4 stride 2 halves the size ("same" pads one pixel each side here)
        x = layers.Conv2D(width, 4, strides=2, padding="same", use_bias=False, name=f"conv{i}_1")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"bn{i}_1")(x)
        x = layers.LeakyReLU(negative_slope=0.2, name=f"lrelu{i}_1")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(100, name="dense1")(x)
    x = layers.LeakyReLU(negative_slope=0.2, name="dense1_lrelu")(x)
    out = layers.Dense(1, dtype="float32", name="logits")(x)
    return keras.Model(inp, out, name=name)


@register_discriminator("vgg128")
def build_from_config(cfg) -> keras.Model:
    """Registry entry: ``DiscriminatorConfig`` -> VGG-style discriminator."""
    return build_vgg_discriminator(patch=cfg.patch, base=cfg.base)
