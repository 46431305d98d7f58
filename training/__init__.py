"""Training: W2S data, RRDBNet/ESRGAN models and losses, two-phase training, evaluation."""
