"""w2sr: W2S widefield-to-SIM super-resolution, from training to a Fiji-ready bundle."""
__version__ = "0.1.0"
