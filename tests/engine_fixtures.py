"""A real tiny bundle for the engine tests, and an unfrozen variant of its SavedModel.

``make_tiny_bundle(tmp)`` writes a run folder (``run/generator.keras`` of a tiny RRDBNet, nb=1 nf=8
gc=4, random weights, and ``run/config.yaml`` with resolved normalisation) and exports it with the
project's exporter, ``export.bundle.export_bundle(run, tmp/"bundle")``.

``write_unfrozen_savedmodel_zip(bundle, zip_path)`` exports the same generator the plain Keras way
(``keras.export.ExportArchive``, the machinery behind ``model.export``): variables in a checkpoint,
signature ``serving_default`` taking ``input`` and returning ``{"output": ...}`` - the right names,
but written by TF 2.21 without freezing, which the old runtimes cannot read.
"""
from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

NORMALIZATION = dict(input_mean=100.0, input_std=20.0, target_mean=50.0, target_std=10.0)


def make_tiny_run(root: Path) -> Path:
    import keras

    from training.config import Config, GeneratorConfig, NormalizationConfig, dump_config
    from training.models import build_generator

    run = Path(root) / "run"
    run.mkdir(parents=True)
    keras.utils.set_random_seed(7)
    gen_cfg = GeneratorConfig(nb=1, nf=8, gc=4)
    model = build_generator(gen_cfg)
    model.save(run / "generator.keras")
    cfg = Config(name="tiny-engines", generator=gen_cfg, normalization=NormalizationConfig(**NORMALIZATION))
    dump_config(cfg, run / "config.yaml")
    return run


def make_tiny_bundle(root: Path) -> Path:
    from export.bundle import export_bundle

    run = make_tiny_run(root)
    out = Path(root) / "bundle"
    # bioimageio test and the timing subprocess are other tests' business; here only the files count
    result = export_bundle(run, out, bioimageio=False, measure=False, tile=128)
    bundle = Path(result) if isinstance(result, (str, Path)) else out
    assert (bundle / "rdf.yaml").exists(), f"export_bundle wrote no rdf.yaml in {bundle}"
    return bundle


def write_unfrozen_savedmodel_zip(bundle: Path, zip_path: Path) -> Path:
    """Export ``bundle``'s generator (from ``../run/generator.keras``) unfrozen, zipped at the root."""
    import keras
    import tensorflow as tf

    import training.models  # noqa: F401 - registers the custom layers for load_model

    from export.bundle_info import read_bundle
    from w2sr.core.padding import crop_tf, pad_tf

    model = keras.models.load_model(Path(bundle).parent / "run" / "generator.keras", compile=False)
    pad = read_bundle(bundle).padding  # the same in-graph padding as the frozen export
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(input):  # noqa: A002 - the signature key must be "input", as in the rdf
        return {"output": crop_tf(model(pad_tf(input, pad), training=False), pad)}

    archive.add_endpoint("serving_default", serve,
                         input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32, name="input")])
    tmp = Path(tempfile.mkdtemp(prefix="w2sr-unfrozen-"))
    try:
        archive.write_out(str(tmp / "sm"))
        zip_path = Path(zip_path)
        zip_path.unlink(missing_ok=True)
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted((tmp / "sm").rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(tmp / "sm").as_posix())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return zip_path

