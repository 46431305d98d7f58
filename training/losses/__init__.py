"""Losses: pixel (L1/L2), perceptual (pre-activation VGG19) and RaGAN (from logits)."""
