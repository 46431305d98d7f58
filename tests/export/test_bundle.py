"""Exporter tests on a tiny real RRDBNet: files, zip layouts, rdf, op set, ONNX, determinism, refusals.

The bundle is built once (tests/fixtures/runs.py, tests/conftest.py) by the real exporter, which also runs
``bioimageio test`` on the 0.4.10 rdf and on the 0.5 package and refuses to write a bundle that fails.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.fixtures.runs import make_run
from w2sr.core.errors import UserError
from tests.fixtures import REPO

EXPECTED_FILES = [
    "rdf.yaml", "tf_saved_model.zip", "weights.onnx", "test_input.npy", "test_output.npy",
    "sample_input.tif", "sample_output.tif", "cover.png", "README.md", "parity.md", "parity.json",
    "preprocessing.ijm", "postprocessing.ijm", "training_config.yaml", "generator.keras",
]


def _rdf(bundle: Path) -> dict:
    return yaml.safe_load((bundle / "rdf.yaml").read_text())


def _sha(path: Path) -> str:
    from w2sr.bundle.reader import sha256_file

    return sha256_file(path)


# --------------------------------------------------------------------------------------------
# the bundle


def test_bundle_has_expected_files_and_packages(exported_bundle):
    for name in EXPECTED_FILES:
        assert (exported_bundle / name).is_file(), name
    pkgs = sorted(p.name for p in (exported_bundle / "packages").glob("*.zip"))
    assert pkgs == ["w2sr-tiny-test_deepimagej.zip", "w2sr-tiny-test_zoo-0.5.zip"]
    # nothing half-written left beside the bundle
    assert not [p for p in exported_bundle.parent.iterdir() if p.name.startswith(".bundle.")]
    assert (exported_bundle / "README.md").read_text().count("## Validation") == 1


def test_savedmodel_zip_layout_and_determinism_of_entries(exported_bundle):
    with zipfile.ZipFile(exported_bundle / "tf_saved_model.zip") as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == ["saved_model.pb", "variables/"]  # at the zip root, sorted
    assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)


def test_deepimagej_zip_layout(exported_bundle):
    doc = _rdf(exported_bundle)
    with zipfile.ZipFile(exported_bundle / "packages" / "w2sr-tiny-test_deepimagej.zip") as zf:
        names = set(zf.namelist())
        inner = zipfile.ZipFile(__import__("io").BytesIO(zf.read("tf_saved_model.zip"))).namelist()
    assert "rdf.yaml" in names and "saved_model.pb" in inner
    for entry in doc["weights"].values():
        assert entry["source"] in names
    for f in doc["attachments"]["files"]:
        assert f in names
    assert "generator.keras" not in names and not any(n.startswith("packages/") for n in names)
    macros = sorted(p.name for p in (REPO / "fiji_macros").glob("*.ijm"))
    assert sorted(n.split("/", 1)[1] for n in names if n.startswith("fiji_macros/") and n.endswith(".ijm")) == macros


def test_rdf_content_and_bundle_info(exported_bundle):
    from w2sr.bundle.reader import read_bundle

    doc = _rdf(exported_bundle)
    info = read_bundle(exported_bundle)
    assert doc["format_version"] == "0.4.10"
    # percentile mode (the default): scale_range per sample before the network, nothing after it
    assert info.normalization.percentile
    assert (info.normalization.low_percentile, info.normalization.high_percentile) == (1.0, 99.8)
    assert doc["inputs"][0]["preprocessing"] == [{"name": "scale_range", "kwargs": {
        "mode": "per_sample", "axes": "xy", "min_percentile": 1.0, "max_percentile": 99.8, "eps": 1e-6}}]
    assert "postprocessing" not in doc["outputs"][0] and "normalised units" in doc["outputs"][0]["description"]
    assert info.scale == 2 and info.halo >= 1
    assert info.min_size > 2 * info.halo  # min must exceed the halo, tiles 2x the halo
    out = doc["outputs"][0]
    assert out["shape"] == {"reference_tensor": "input", "scale": [1, 2, 2, 1], "offset": [0, 0, 0, 0]}
    assert out["halo"] == [0, 2 * info.halo, 2 * info.halo, 0]
    tf_w, onnx_w = doc["weights"]["tensorflow_saved_model_bundle"], doc["weights"]["onnx"]
    assert tf_w["tensorflow_version"] == "1.15" and onnx_w["opset_version"] == 17
    assert tf_w["sha256"] == _sha(exported_bundle / "tf_saved_model.zip")
    assert onnx_w["sha256"] == _sha(exported_bundle / "weights.onnx")
    dij = doc["config"]["deepimagej"]
    assert dij["pyramidal_model"] is False and dij["allow_tiling"] is True and dij["model_keys"] is None
    ti = dij["test_information"]
    h, w = np.load(exported_bundle / "test_input.npy").shape[1:3]
    assert ti["inputs"][0]["size"] == f"{h} x {w} x 1" and ti["outputs"][0]["size"] == f"{2 * h} x {2 * w} x 1"
    assert ti["memory_peak"].endswith("Mb") and ti["runtime"].endswith(" s")
    assert dij["prediction"]["preprocess"][0]["kwargs"] == "preprocessing.ijm"
    # every file of the bundle is listed with its sha256
    files = doc["config"]["w2sr"]["files"]
    assert set(EXPECTED_FILES) - {"rdf.yaml"} <= set(files)
    assert all(files[f] == _sha(exported_bundle / f) for f in files)
    cites = " ".join(c["url"] for c in doc["cite"])
    assert "mchatton/w2s-tensorflow" in cites and "1809.00219" in cites and "2003.05961" in cites


def test_test_tensors_are_float32_byxc_and_match_the_savedmodel(exported_bundle):
    from w2sr.bundle.reader import read_bundle
    from w2sr.bundle.savedmodel import run_tf1

    info = read_bundle(exported_bundle)
    x, y = np.load(info.test_input), np.load(info.test_output)
    assert x.dtype == np.float32 and y.dtype == np.float32
    assert x.ndim == 4 and x.shape[0] == 1 and x.shape[3] == 1 and y.shape == (1, 2 * x.shape[1], 2 * x.shape[2], 1)
    norm = info.normalization
    got = norm.output(run_tf1(info.savedmodel_zip, norm.input(x[0, :, :, 0])[None, :, :, None]))
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1.5e-4)


def test_bioimageio_test_passed_for_both_formats_and_the_zoo_package(exported_bundle):
    report = json.loads((exported_bundle / "parity.json").read_text())
    rows = {r["weight_format"]: r for r in report["bioimageio"]}
    assert rows["tensorflow_saved_model_bundle"]["status"] == "passed"
    assert rows["onnx"]["status"] == "passed"
    zoo = json.loads((exported_bundle / "packages" / "w2sr-tiny-test_zoo-0.5.test.json").read_text())
    assert {r["weight_format"]: r["status"] for r in zoo} == {
        "tensorflow_saved_model_bundle": "passed", "onnx": "passed"}
    with zipfile.ZipFile(exported_bundle / "packages" / "w2sr-tiny-test_zoo-0.5.zip") as zf:
        zdoc = yaml.safe_load(zf.read("rdf.yaml"))
    assert zdoc["format_version"].startswith("0.5")
    tol = zdoc["config"]["bioimageio"]["reproducibility_tolerance"][0]
    assert tol["absolute_tolerance"] == 1.5e-4 and tol["relative_tolerance"] == 1e-4


# --------------------------------------------------------------------------------------------
# SavedModel and ONNX


def test_savedmodel_graph_ops_and_tf1_loader(exported_bundle):
    import tensorflow as tf

    from w2sr.bundle.savedmodel import _Unzipped
    from export.savedmodel import ALLOWED_OPS
    from w2sr.core.contract import INPUT_NAME as INPUT_KEY, OUTPUT_NAME as OUTPUT_KEY

    sm = _Unzipped(exported_bundle / "tf_saved_model.zip")
    try:
        graph = tf.Graph()
        with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
            meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(sm.dir))
            sig = meta.signature_def["serving_default"]
            assert list(sig.inputs) == [INPUT_KEY] and list(sig.outputs) == [OUTPUT_KEY]
            assert sig.inputs[INPUT_KEY].name == "input:0" and sig.outputs[OUTPUT_KEY].name == "output:0"
            shape = [d.size for d in sig.inputs[INPUT_KEY].tensor_shape.dim]
            assert shape == [-1, -1, -1, 1]
            for node in meta.graph_def.node:
                assert node.op in ALLOWED_OPS, node.op
                assert all(k.startswith("_") or k in ALLOWED_OPS[node.op] for k in node.attr), node
            x = np.random.default_rng(1).standard_normal((2, 19, 23, 1)).astype(np.float32)
            y = sess.run(sig.outputs[OUTPUT_KEY].name, {sig.inputs[INPUT_KEY].name: x})
            assert y.shape == (2, 38, 46, 1)
        assert not list((sm.dir / "variables").iterdir())  # weights live once, as constants
    finally:
        sm.cleanup()


def test_check_graph_ops_rejects_an_op_old_runtimes_lack():
    import keras

    from export.savedmodel import check_graph_ops, freeze_keras_model

    inp = keras.Input((None, None, 1), name="input")
    out = keras.layers.Conv2D(1, 3, padding="same", activation="gelu")(keras.layers.UpSampling2D(2)(inp))
    gd = freeze_keras_model(keras.Model(inp, out))
    with pytest.raises(UserError, match="Erf|Tanh|Pow"):
        check_graph_ops(gd, "gelu-model")


def test_onnx_opset_names_and_dynamic_dims(exported_bundle):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(exported_bundle / "weights.onnx"))
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    assert opset <= 17
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    for vi in (model.graph.input[0], model.graph.output[0]):
        dims = vi.type.tensor_type.shape.dim
        assert [d.dim_param != "" for d in dims[:3]] == [True, True, True] and dims[3].dim_value == 1
    sess = ort.InferenceSession(str(exported_bundle / "weights.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(["output"], {"input": np.zeros((3, 17, 29, 1), np.float32)})[0]
    assert y.shape == (3, 34, 58, 1)


def test_too_small_halo_fails_the_tolerance(exported_bundle):
    """The generator's measured halo passes tiled-vs-whole and one pixel less does not; the bundle's
    halo (= the graph's own padding) adds a margin and passes on the exported weights."""
    from export.halo import tiled_max_diff
    from w2sr.bundle.reader import read_bundle
    from w2sr.bundle.runtimes import OnnxRuntime
    from export.runtimes import KerasRuntime

    info = read_bundle(exported_bundle)
    measured = _rdf(exported_bundle)["config"]["w2sr"]["halo"]
    g = measured["generator_halo"]
    assert measured["halo"] == info.halo == info.padding > g and measured["too_small"] == g - 1
    assert measured["too_small_fails"] is True and measured["converged"]
    x = info.normalization.input(np.load(info.test_input)[0, :, :, 0])
    post = info.normalization.output
    rt = OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"])
    ref = post(rt.predict(x[None, :, :, None])[0, :, :, 0])
    _, ok = tiled_max_diff(rt.predict, x, ref, post, info.halo, 2 * info.halo + 16)
    assert ok
    plain = KerasRuntime(exported_bundle / "generator.keras")  # the generator without graph padding
    ref_plain = post(plain.predict(x[None, :, :, None])[0, :, :, 0])
    _, ok_g = tiled_max_diff(plain.predict, x, ref_plain, post, g, 2 * g + 16)
    d_small, ok_small = tiled_max_diff(plain.predict, x, ref_plain, post, g - 1, 2 * (g - 1) + 16)
    assert ok_g and not ok_small, d_small


# --------------------------------------------------------------------------------------------
# determinism, refusals, errors


def test_exporting_twice_gives_identical_weights(exported_bundle, tiny_run, tmp_path):
    from export.bundle import export_bundle

    import shutil

    # exported over a copy of the first bundle: same model name, so the old bundle is replaced
    shutil.copytree(exported_bundle, tmp_path / "again")
    (tmp_path / "again" / "stale.txt").write_text("from the old bundle")
    again = export_bundle(tiny_run, tmp_path / "again", name="w2sr-tiny-test", bioimageio=False,
                          measure=False, odd_sizes=())
    assert again == tmp_path / "again" and not (again / "stale.txt").exists()
    for f in ("tf_saved_model.zip", "weights.onnx", "test_input.npy", "test_output.npy"):
        assert _sha(again / f) == _sha(exported_bundle / f), f
    assert _rdf(again)["weights"] == _rdf(exported_bundle)["weights"]


def test_refuses_to_overwrite_a_folder_that_is_not_a_bundle(tiny_run, tmp_path):
    from export.bundle import export_bundle

    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(UserError, match="not a w2sr bundle"):
            export_bundle(tiny_run, out, force=force, bioimageio=False, measure=False, odd_sizes=())
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["precious"]  # no staging left behind


def test_a_model_name_without_usable_characters_is_refused_before_any_work(tiny_run, tmp_path):
    from export.bundle import export_bundle
    from w2sr.core.errors import UserError

    with pytest.raises(UserError, match="model name '///' has no usable characters"):
        export_bundle(tiny_run, tmp_path / "out", name="///", bioimageio=False, measure=False, odd_sizes=())
    assert list(tmp_path.iterdir()) == []  # no staging folder, no bundle


def test_unknown_export_options_are_refused(tiny_run, tmp_path):
    from export.bundle import export_bundle

    with pytest.raises(TypeError, match="unknown option\\(s\\) tiles"):
        export_bundle(tiny_run, tmp_path / "out", tiles=64)


def test_existing_bundle_is_replaced_only_by_a_validated_one(exported_bundle, tiny_run, tmp_path):
    """Another model's bundle needs --force; the same model's is updated, but only by a bundle that
    validated: halo 0 fails the tiled-vs-whole checks and leaves the old bundle untouched."""
    import shutil

    from export.bundle import export_bundle

    out = tmp_path / "bundle"
    shutil.copytree(exported_bundle, out)
    before = {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match="another model.*--force"):
        export_bundle(tiny_run, out, name="other-model", bioimageio=False, measure=False, odd_sizes=())
    for kw in ({"name": "w2sr-tiny-test"}, {"name": "other-model", "force": True}):
        with pytest.raises(UserError, match="no halo up to 0 px reproduces"):
            export_bundle(tiny_run, out, halo=0, bioimageio=False, measure=False, odd_sizes=(), **kw)
    after = {p.relative_to(out): _sha(p) for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_clear_errors_for_broken_run_folders(tmp_path, tiny_run):
    from export.bundle import export_bundle

    def fails(source, match, **kw):
        with pytest.raises(UserError, match=match):
            export_bundle(source, tmp_path / "out", bioimageio=False, measure=False, odd_sizes=(), **kw)

    fails(tmp_path / "missing", "not found")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    fails(empty, "no generator.keras")
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "generator.keras").write_bytes(b"not a keras file")
    (broken / "config.yaml").write_text((tiny_run / "config.yaml").read_text())
    fails(broken, r"generator.keras: not a Keras .keras file \(not a zip archive: truncated or damaged")
    (broken / "generator.keras").write_bytes((tiny_run / "generator.keras").read_bytes()[:4000])
    fails(broken, r"generator.keras: not a Keras .keras file")  # a truncated copy, not "File not found"
    no_cfg = tmp_path / "no-config"
    no_cfg.mkdir()
    (no_cfg / "generator.keras").write_bytes((tiny_run / "generator.keras").read_bytes())
    fails(no_cfg, "config.yaml: config not found")
    bad_cfg = tmp_path / "bad-config"
    bad_cfg.mkdir()
    (bad_cfg / "generator.keras").write_bytes((tiny_run / "generator.keras").read_bytes())
    (bad_cfg / "config.yaml").write_text("generator: {nb: -3}\n")
    fails(bad_cfg, "bad-config/config.yaml")
    unresolved = make_run(tmp_path / "unresolved", normalization={"mode": "fixed"})
    fails(unresolved, "normalization is not resolved")
    assert not (tmp_path / "out").exists()


def test_clear_error_for_a_model_that_is_not_single_channel_2x(tmp_path):
    import keras

    from export.bundle import export_bundle

    inp = keras.Input((None, None, 1), name="input")
    same_size = keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same")(inp))
    run = make_run(tmp_path / "run1x", model=same_size)
    with pytest.raises(UserError, match=r"generator.keras: not a single-channel 2x model"):
        export_bundle(run, tmp_path / "out", bioimageio=False, measure=False, odd_sizes=())
    inp3 = keras.Input((None, None, 3), name="input")
    rgb = keras.Model(inp3, keras.layers.Conv2D(1, 3, padding="same")(keras.layers.UpSampling2D(2)(inp3)))
    run3 = make_run(tmp_path / "run-rgb", model=rgb)
    with pytest.raises(UserError, match="single-channel input"):
        export_bundle(run3, tmp_path / "out", bioimageio=False, measure=False, odd_sizes=())
    assert not (tmp_path / "out").exists()


def test_cli_help_does_not_import_tensorflow():
    code = ("import sys\nfrom w2sr.cli import build_parser\n"
            "p = build_parser()\n"
            "try:\n    p.parse_args(['export', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'tensorflow' not in sys.modules and 'bioimageio.core' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "--force" in proc.stdout and "RUN_DIR" in proc.stdout


def test_cli_export_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "w2sr.cli", "export", str(tmp_path / "nope"), "--out",
                           str(tmp_path / "b")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'nope'}: run folder (or .keras file) not found"]
