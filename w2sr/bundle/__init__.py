"""The floor for a finished bundle: read its rdf (``reader``), run its weights (``runtimes``, one per
weight format, and ``savedmodel`` for the TF1 loader), and do what DeepImageJ 3.1 does with it
(``jdll``). Imports only ``w2sr.core``; the exporter, prediction and the Fiji stand-in build on it."""
