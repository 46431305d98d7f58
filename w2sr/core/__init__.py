"""The shared bottom layer: errors, the bundle contract, the normalisation, files, CPU features.

Everything above (training, export, prediction, Fiji, the CLI) may import it; it imports nothing from
them (``tests/test_architecture.py`` checks the direction of every import)."""
