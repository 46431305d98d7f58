"""Generators and discriminators, built by name from the config.

Importing this package imports every architecture module, which registers its builder and its
serialisable custom layers (so ``keras.models.load_model("generator.keras")`` works afterwards).
"""
from __future__ import annotations

from training.models.registry import DISCRIMINATORS, GENERATORS, register_discriminator, register_generator

# Architecture modules: imported for their registrations.
from training.models import rrdbnet as _rrdbnet  # noqa: F401,E402
from training.models import discriminator_vgg as _discriminator_vgg  # noqa: F401,E402


def build_generator(cfg):
    """``GeneratorConfig`` -> keras.Model (input "input", (None, None, None, 1) -> 2x)."""
    return GENERATORS.get(cfg.name)(cfg)


def build_discriminator(cfg):
    """``DiscriminatorConfig`` -> keras.Model ((B, patch, patch, 1) -> (B, 1) logits)."""
    return DISCRIMINATORS.get(cfg.name)(cfg)


__all__ = [
    "build_generator", "build_discriminator", "GENERATORS", "DISCRIMINATORS",
    "register_generator", "register_discriminator",
]
