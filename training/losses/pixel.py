"""Pixel-wise losses (report 2.4.1): mean absolute (L1) or mean squared (L2) error.

Computed in float32 whatever the compute dtype, so mixed precision does not change their value.
"""
from __future__ import annotations

from typing import Callable

from keras import ops


def l1_loss(y_true, y_pred):
    """Mean |y_true - y_pred| over all pixels and the batch."""
    return ops.mean(ops.abs(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")))


def l2_loss(y_true, y_pred):
    """Mean (y_true - y_pred)^2 over all pixels and the batch."""
    return ops.mean(ops.square(ops.cast(y_true, "float32") - ops.cast(y_pred, "float32")))


_LOSSES = {"l1": l1_loss, "l2": l2_loss}


def pixel_loss(kind: str = "l1") -> Callable:
    """``"l1"`` or ``"l2"`` -> ``fn(y_true, y_pred) -> scalar``."""
    try:
        return _LOSSES[kind.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown pixel loss '{kind}', expected one of {sorted(_LOSSES)}") from None
