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


def load_generator(path):
    """``generator.keras`` -> keras.Model (not compiled); one-line UserError naming the file when it
    is missing, not a .keras archive (truncated, damaged) or not loadable."""
    import zipfile
    from pathlib import Path

    import keras

    from w2sr.core.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: generator file not found (has the run finished?)")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a Keras .keras file (not a zip archive: truncated or damaged? "
                        f"{path.stat().st_size} bytes)")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # unknown layer, damaged member, wrong format
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot load the Keras generator: {first}") from None


__all__ = [
    "build_generator", "build_discriminator", "load_generator", "GENERATORS", "DISCRIMINATORS",
    "register_generator", "register_discriminator",
]
