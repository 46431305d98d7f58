"""Shared, real fixtures for the exporter tests: a tiny run folder and one fully exported bundle.

The run is a real ``training.models.build_generator`` RRDBNet (nb=1, nf=8, gc=4, random weights)
saved as RUN/generator.keras with a resolved RUN/config.yaml (``training.config.dump_config``).
The bundle is built once per test session by the real ``export.bundle.export_bundle`` (TensorFlow,
tf2onnx, ONNX Runtime, ``bioimageio test``) and shared by test_export.py and test_validate.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

NORM = dict(input_mean=150.0, input_std=60.0, target_mean=140.0, target_std=55.0)

_CACHE: dict[str, Path] = {}


def make_run(folder: Path, *, seed: int = 0, model=None, normalization: dict | None = None) -> Path:
    """Write RUN/generator.keras + RUN/config.yaml (+ DONE) for a tiny generator (or ``model``);
    the product's default normalisation (percentile), or ``normalization`` (e.g. NORM, fixed)."""
    import keras

    from training.config import NormalizationConfig, dump_config, load_config, packaged_config
    from training.models import build_generator

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(packaged_config("tiny"))
    cfg.data.root = folder / "no-data-here"  # no data: the exporter simulates its sample image
    if normalization is not None:
        cfg.normalization = NormalizationConfig(**normalization)
    if model is None:
        keras.utils.set_random_seed(seed)
        model = build_generator(cfg.generator)
    model.save(folder / "generator.keras")
    dump_config(cfg, folder / "config.yaml")
    (folder / "DONE").write_text("done\n")
    return folder


def _session_dir(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.getbasetemp() / name


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    if "run" not in _CACHE:
        _CACHE["run"] = make_run(_session_dir(tmp_path_factory, "export-run"))
    return _CACHE["run"]


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory, tiny_run) -> Path:
    """The full export (bioimageio test included) of ``tiny_run``, done once."""
    if "bundle" not in _CACHE:
        from export.bundle import export_bundle

        out = _session_dir(tmp_path_factory, "export-out") / "bundle"
        _CACHE["bundle"] = export_bundle(tiny_run, out, name="w2sr-tiny-test", tile=128)
    return _CACHE["bundle"]


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
