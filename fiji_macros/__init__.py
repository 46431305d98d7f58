"""The Fiji macros (``*.ijm``), installed as package data so that every install of w2sr, editable or
not, exports bundles that carry them (``export.assets.fiji_macros``). The headless ImageJ runner and
the DeepImageJ stand-in used by the tests (``imagej_runner.py``, ``runner/``) are not installed."""
