"""Relativistic average GAN (RaGAN) losses, from discriminator logits (report 2.5, ESRGAN).

With C the discriminator logit and the batch means E[.]:
    D_Ra(x_r, x_f) = sigmoid(C(x_r) - E[C(x_f)]),   D_Ra(x_f, x_r) = sigmoid(C(x_f) - E[C(x_r)])
    L_D = -E_r[log D_Ra(x_r, x_f)] - E_f[log(1 - D_Ra(x_f, x_r))]
    L_G = -E_r[log(1 - D_Ra(x_r, x_f))] - E_f[log D_Ra(x_f, x_r)]
Each term is a sigmoid cross-entropy evaluated directly on the logit difference in the stable
form ``max(z, 0) - z*y + log(1 + exp(-|z|))``. (The original code passed raw logits to a
cross-entropy expecting probabilities, ``from_logits=False``: values were clipped and the
gradients vanished.) As in the report's formulas, the two terms are summed, not averaged.
"""
from __future__ import annotations

from keras import ops


def sigmoid_cross_entropy_with_logits(logits, labels):
    """Elementwise -[y log s(z) + (1-y) log(1 - s(z))], stable for any |z|; float32."""
    z = ops.cast(logits, "float32")
    y = ops.cast(labels, "float32")
    return ops.relu(z) - z * y + ops.log1p(ops.exp(-ops.abs(z)))


def _relativistic(real_logits, fake_logits):
    real = ops.reshape(ops.cast(real_logits, "float32"), (-1,))
    fake = ops.reshape(ops.cast(fake_logits, "float32"), (-1,))
    return real - ops.mean(fake), fake - ops.mean(real)


def ragan_discriminator_loss(real_logits, fake_logits):
    """Discriminator: real images should look more real than the average fake, and vice versa."""
    real_rel, fake_rel = _relativistic(real_logits, fake_logits)
    return (ops.mean(sigmoid_cross_entropy_with_logits(real_rel, ops.ones_like(real_rel)))
            + ops.mean(sigmoid_cross_entropy_with_logits(fake_rel, ops.zeros_like(fake_rel))))


def ragan_generator_loss(real_logits, fake_logits):
    """Generator: the symmetric objective (labels swapped); gradients flow through both terms."""
    real_rel, fake_rel = _relativistic(real_logits, fake_logits)
    return (ops.mean(sigmoid_cross_entropy_with_logits(real_rel, ops.zeros_like(real_rel)))
            + ops.mean(sigmoid_cross_entropy_with_logits(fake_rel, ops.ones_like(fake_rel))))
