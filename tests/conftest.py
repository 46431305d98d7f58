"""Session fixtures shared across the test tree: one tiny run folder and its full export, built once
per session by the real trainer's model code and the real exporter (TensorFlow, tf2onnx, ONNX Runtime,
``bioimageio test``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.runs import make_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run folder of a tiny random generator (percentile normalisation)."""
    return make_run(tmp_path_factory.getbasetemp() / "export-run")


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory, tiny_run) -> Path:
    """The full export (bioimageio test included) of ``tiny_run``, with the default DeepImageJ tile."""
    from export.bundle import export_bundle

    out = tmp_path_factory.getbasetemp() / "export-out" / "bundle"
    return export_bundle(tiny_run, out, name="w2sr-tiny-test")
