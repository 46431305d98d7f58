"""`w2sr bundle MODEL.keras` (issue 20): any Keras image-to-image model into a bundle that is proven to
run. The gallery (tests/fixtures/gallery.py) holds the kinds of models microscopists train; each one
the exporter supports goes through `w2sr bundle` as a user calls it and must pass every gate: the
exporter's own (bioimageio test of rdf.yaml and of the zoo package, the parity matrix, DeepImageJ 3.1's
tiling on every pixel, odd sizes), DeepImageJ's old engines, the collection's DeepImageJ check, and the
consumers (w2sr predict, DeepImageJ called directly, bioimageio.core's predict on the zoo package).
Models it cannot bundle yet are refused in one line before any work."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tests.fixtures.gallery import EXPECTED, GALLERY, save
from w2sr.core.contract import outside_tolerance

#: gallery models w2sr bundle exports today, with the rdf scale each must get
# sr_x4_transpose (x4, Conv2DTranspose) passes every gate alone (129 s), but its export exited 2 inside one
# full fresh-clone run (cause not yet found): kept out of CI until it is; see docs/bundle_your_model.md
SUPPORTED = {"care_residual": 1, "fixed_size_sigmoid": 1, "unet_denoise": 1}
#: options a user would give for a model (the probability model takes raw values)
OPTIONS = {"fixed_size_sigmoid": ("--normalization", "none")}
#: gallery models it detects and refuses (not yet supported), with the words the one line must hold
REFUSED = {"segment_softmax": "2 output channels", "two_channel_input": "2 input"}


def _cli(*args: str) -> int:
    from w2sr.cli import main

    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gallery")


@pytest.mark.parametrize("name", sorted(GALLERY))
def test_inspection_finds_what_each_model_is(name, gallery_dir):
    from export.keras_model import open_model

    model, spec, rebuilt = open_model(save(name, gallery_dir))
    assert (spec.in_channels, spec.out_channels, spec.scale, spec.multiple, spec.output_kind) == EXPECTED[name]
    assert rebuilt == (name == "fixed_size_sigmoid")  # a fixed 64x64 input is rebuilt with free sizes
    assert model.inputs[0].shape[1] is None


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_models_not_yet_supported_are_refused_in_one_line_before_any_work(name, gallery_dir, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert _cli("bundle", save(name, gallery_dir), "--out", out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and REFUSED[name] in err[0], err
    assert "not supported yet" in err[0] and f"{name}.keras" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".bundle*"))


def _two_inputs():
    import keras

    a, b = keras.Input((None, None, 1)), keras.Input((None, None, 1))
    return keras.Model([a, b], keras.layers.Add()([a, b]))


def _dense():
    import keras

    inp = keras.Input((16,))
    return keras.Model(inp, keras.layers.Dense(4)(inp))


def _gelu():  # exact GELU freezes to Erfc: not in the op set checked in DeepImageJ's engines
    import keras

    inp = keras.Input((None, None, 1))
    return keras.Model(inp, keras.layers.Conv2D(1, 3, padding="same", activation="gelu")(inp))


@pytest.mark.parametrize("make, words", [
    (_two_inputs, "2 input(s) and 1 output(s)"),
    (_dense, "not a 2D image model"),
    (_gelu, "ops outside the set checked to run in DeepImageJ's TensorFlow 1.15/2.7 engines: ['Erfc']"),
])
def test_what_the_bundle_cannot_carry_is_refused_in_one_line(make, words, tmp_path, capsys):
    path = tmp_path / "m.keras"
    make().save(path)
    assert _cli("bundle", path, "--out", tmp_path / "b") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and str(path) in err[0], err
    assert not (tmp_path / "b").exists()


def test_bad_metadata_and_normalisation_options_are_one_line_errors(gallery_dir, tmp_path, capsys):
    model = save("care_residual", gallery_dir)
    meta = tmp_path / "meta.yaml"
    meta.write_text("name: x\nauthor: [me]\n")  # a typo of 'authors'
    assert _cli("bundle", model, "--out", tmp_path / "b", "--meta", meta) == 2
    assert "unknown metadata key(s) ['author']" in capsys.readouterr().err
    assert _cli("bundle", model, "--out", tmp_path / "b", "--normalization", "fixed") == 2
    assert "--normalization fixed needs --mean and --std" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------
# every gate, per supported gallery model


@pytest.fixture(scope="module", params=sorted(SUPPORTED))
def bundled(request, gallery_dir) -> tuple[str, Path]:
    """The model bundled by the CLI as a user runs it (bioimageio test and timing on)."""
    name = request.param
    meta = gallery_dir / f"{name}.yaml"
    meta.write_text(f"description: gallery model {name}\nauthors: [{{name: Test Author, affiliation: Lab}}]\n"
                    "cite: [{text: 'Author A. A gallery model. 2026', doi: 10.5281/zenodo.0}]\nlicense: CC-BY-4.0\n")
    out = gallery_dir / f"{name}_bundle"
    assert _cli("bundle", save(name, gallery_dir), "--out", out, "--meta", meta, *OPTIONS.get(name, ())) == 0
    return name, out


def test_the_exporters_gates_passed(bundled):
    from w2sr.bundle.reader import read_bundle, read_rdf

    name, out = bundled
    report = json.loads((out / "parity.json").read_text())
    assert report["ok"] and not report["failures"]
    assert {r["status"] for r in report["bioimageio"]} == {"passed"}
    assert report["parity"] and all(r["status"] in ("passed", "skipped") for r in report["parity"])
    assert any("DeepImageJ 3.1" in r["label"] and r["status"] == "passed" for r in report["parity"])
    assert report["sizes"] and all(r["status"] == "passed" for r in report["sizes"])
    (zoo_test,) = (out / "packages").glob("*_zoo-0.5.test.json")
    assert {t["status"] for t in json.loads(zoo_test.read_text())} == {"passed"}
    info, doc = read_bundle(out), read_rdf(out)
    assert info.scale == SUPPORTED[name]
    assert doc["license"] == "CC-BY-4.0" and doc["authors"][0]["affiliation"] == "Lab"
    assert doc["description"].startswith(f"gallery model {name}")
    assert doc["config"]["w2sr"]["run"]["model"]["scale"] == SUPPORTED[name]
    assert "Exported from" in (out / "README.md").read_text()


def test_deepimagejs_old_engines_reproduce_the_test_output(bundled):
    from export.engines import check_engines

    rows = check_engines(bundled[1])
    ran = [r for r in rows if r.status != "skipped"]
    if not ran:
        pytest.skip("no DeepImageJ engine environment here: " + "; ".join(sorted({r.reason for r in rows})))
    assert all(r.ok for r in rows), [(r.engine, r.loader, r.status, r.reason) for r in rows if not r.ok]


def test_collection_deepimagej_check_replayed_on_the_sample(bundled):
    from w2sr.bundle import jdll
    from w2sr.bundle.reader import read_rdf
    from w2sr.bundle.runtimes import OnnxRuntime

    out = bundled[1]
    doc = read_rdf(out)
    doc["outputs"][0].pop("halo", None)
    model = jdll.JdllModel.from_rdf(doc)
    sample = np.squeeze(tifffile.imread(out / "sample_input.tif"))
    got = jdll.predict(model, OnnxRuntime(out / "weights.onnx", providers=["CPUExecutionProvider"]).predict, sample)
    assert not outside_tolerance(got, np.squeeze(np.load(out / "test_output.npy"))).any()


def test_consumers_agree_with_w2sr_predict(bundled, tmp_path):
    """An odd-sized image: w2sr predict, DeepImageJ through the Fiji macro's padding, and
    bioimageio.core's default predict on the zoo package give the same pixels."""
    import subprocess
    import sys

    from bioimageio.core import predict
    from bioimageio.core.tensor import Tensor
    from bioimageio.spec import load_description

    from w2sr.bundle import jdll
    from w2sr.bundle.reader import read_rdf
    from w2sr.bundle.runtimes import OnnxRuntime
    from tests.export.test_consumers import _image

    name, out = bundled
    image = _image((201, 173), seed=5)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image)
    r = subprocess.run([sys.executable, "-m", "w2sr.cli", "predict", str(out), str(src), "--out",
                        str(tmp_path / "o"), "--precision", "fp32", "--runtime", "onnx"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ours = np.squeeze(tifffile.imread(next((tmp_path / "o").glob("*.tif"))))
    s = SUPPORTED[name]
    assert ours.shape == (201 * s, 173 * s)
    model = jdll.JdllModel.from_rdf(read_rdf(out))
    rt = OnnxRuntime(out / "weights.onnx", providers=["CPUExecutionProvider"])
    assert not outside_tolerance(jdll.predict_like_macro(model, rt.predict, image), ours).any()
    (zoo,) = (out / "packages").glob("*_zoo-0.5.zip")
    descr = load_description(str(zoo), perform_io_checks=False)
    core = predict(model=descr, inputs={"input": Tensor.from_numpy(image[None, :, :, None],
                                                                   dims=("batch", "y", "x", "channel"))})
    core_out = np.squeeze(core.members["output"].data.to_numpy())
    assert core_out.shape == ours.shape
    # bioimageio.core interpolates percentiles (docs/consumers.md): compared at the size where the two
    # definitions can differ, within a loose bound; without percentiles it must be exact
    if read_rdf(out)["inputs"][0].get("preprocessing"):
        assert np.abs(core_out - ours).max() < 0.05 * (np.abs(ours).max() + 1e-6)
    else:
        assert not outside_tolerance(core_out, ours).any()


def test_the_fiji_macro_gives_w2sr_predicts_pixels(bundled, tmp_path):
    """DeepImageJ through the bundle's own macro (ImageJ 1.x + the DeepImageJ stand-in, JDLL 0.6.1's
    tiling): an odd-sized calibrated image comes out at the model's scale, pixel size divided by it,
    and equal to `w2sr predict` on every pixel."""
    import subprocess
    import sys

    from tests.export.test_consumers import _image
    from tests.fiji_macros.test_macro import _MISSING, args, assert_zoo_close, read_tif, run_macro

    if _MISSING:
        pytest.skip("cannot run ImageJ here, missing: " + "; ".join(_MISSING))
    name, out = bundled
    src = tmp_path / "in"
    src.mkdir()
    image = _image((123, 97), seed=9)
    tifffile.imwrite(src / "cells.tif", image, imagej=True, resolution=(1 / 0.1, 1 / 0.1), metadata={"unit": "micron"})
    res = run_macro(out / "fiji_macros" / "deepimagej_predict.ijm",
                    args(model=out, input=src, output=tmp_path / "fiji"), timeout=400)
    assert res.returncode == 0, res.output[-3000:]
    got, px, unit, _ = read_tif(tmp_path / "fiji" / "cells_sr.tif")
    r = subprocess.run([sys.executable, "-m", "w2sr.cli", "predict", str(out), str(src / "cells.tif"), "--out",
                        str(tmp_path / "py"), "--precision", "fp32", "--runtime", "onnx"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = np.squeeze(tifffile.imread(tmp_path / "py" / "cells_sr.tif"))
    s = SUPPORTED[name]
    assert got.shape == (123 * s, 97 * s) and px == pytest.approx(0.1 / s, rel=1e-5) and unit == "micron"
    assert_zoo_close(got.astype(np.float32), ref, f"{name}: Fiji macro vs w2sr predict")
