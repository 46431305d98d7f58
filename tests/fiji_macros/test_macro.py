"""The Fiji macro (deepimagej_predict.ijm, an image file or a folder), run for real in ImageJ 1.53t
(Debian) under Xvfb, with the headless runner.

"DeepImageJ Run" is the stand-in plugin (fiji_macros/runner/plugin_src/DeepImageJ_Run.java): it
follows DeepImageJ 3.1's macro interface and file naming, and runs the bundle through the Python
predictor. What only a real Fiji + DeepImageJ can confirm is listed in fiji_macros/README.md.

The bundle is a tiny generator (nb=1, nf=8, gc=4) exported with export.bundle.export_bundle, built
once per session (W2SR_FIJI_TEST_BUNDLE=/path/to/bundle uses an existing bundle instead).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fiji_macros import imagej_runner
from tests.fixtures import REPO
from tests.fixtures.rdf_edit import edit_rdf
from w2sr.core.contract import ATOL as ZOO_ATOL, RTOL as ZOO_RTOL

ROOT = REPO  # the repository root
MACROS = ROOT / "fiji_macros"
MACRO = MACROS / "deepimagej_predict.ijm"  # input = an image file or a folder


_MISSING = imagej_runner.missing_tools()
needs_imagej = pytest.mark.skipif(bool(_MISSING), reason="cannot run ImageJ here, missing: " + "; ".join(_MISSING)
                                  + " (scripts/install_system_deps.sh installs them)")
imagej = [pytest.mark.imagej, needs_imagej]



# --------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------
def run_macro(macro, argument="", **kw):
    res = imagej_runner.run_macro(macro, argument, timeout=kw.pop("timeout", 240), **kw)
    print(f"--- {Path(macro).name} {argument!r} -> rc {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
    return res


def args(**kv) -> str:
    return " ".join(f"{k}=[{v}]" for k, v in kv.items())


def tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_zoo_close(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    bad = np.abs(actual - expected) > ZOO_ATOL + ZOO_RTOL * np.abs(expected)
    assert not bad.any(), (f"{what}: {int(bad.sum())} pixels outside the zoo tolerance, max |diff| "
                           f"{float(np.abs(actual - expected).max()):.3g}")


def read_tif(path: Path):
    """(array, pixel size x, unit, imagej metadata)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        a = tif.asarray()
        meta = tif.imagej_metadata or {}
        tag = tif.pages[0].tags.get("XResolution")
        num, den = tag.value if tag is not None else (1, 1)  # none written: 1 pixel per unit
    return a, den / num, meta.get("unit"), meta


def write_inputs(folder: Path) -> dict[str, np.ndarray]:
    """Mixed 8/16/32-bit images, a Z stack and a non-image file; most calibrated at 0.1 micron."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    cal = dict(imagej=True, resolution=(10.0, 10.0), metadata={"unit": "micron"})
    images = {
        "a8.tif": (rng.random((40, 48)) * 255).astype(np.uint8),
        "b16.tif": (rng.random((36, 44)) * 4000).astype(np.uint16),
        "c32_uncalibrated.tif": (rng.normal(100, 30, (32, 40))).astype(np.float32),
        "d_stack.tif": (rng.random((3, 24, 32)) * 3000).astype(np.uint16),
    }
    tifffile.imwrite(folder / "a8.tif", images["a8.tif"], **cal)
    tifffile.imwrite(folder / "b16.tif", images["b16.tif"], **cal)
    tifffile.imwrite(folder / "c32_uncalibrated.tif", images["c32_uncalibrated.tif"])
    tifffile.imwrite(folder / "d_stack.tif", images["d_stack.tif"], imagej=True, resolution=(10.0, 10.0),
                     metadata={"unit": "micron", "axes": "ZYX", "spacing": 0.3})
    (folder / "notes.txt").write_text("acquisition notes, not an image\n")
    return images


@pytest.fixture(scope="session")
def fiji_bundle(tmp_path_factory) -> Path:
    override = os.environ.get("W2SR_FIJI_TEST_BUNDLE")
    if override:
        return Path(override)
    import keras

    from export.bundle import export_bundle

    from training.config import Config, dump_config
    from training.models import build_generator

    run = tmp_path_factory.mktemp("fiji_run")
    cfg = Config.model_validate({
        "name": "w2sr-fiji-test",
        "generator": {"nb": 1, "nf": 8, "gc": 4},  # the default normalisation: percentile (per image)
    })
    keras.utils.set_random_seed(3)
    build_generator(cfg.generator).save(run / "generator.keras")
    dump_config(cfg, run / "config.yaml")
    out = tmp_path_factory.mktemp("fiji_bundle") / "bundle"
    # the exporter's own tests run bioimageio test and the timings; here only the bundle is needed
    export_bundle(run, out, bioimageio=False, measure=False, tile=64, halo_image_size=96, odd_sizes=())
    assert (out / "rdf.yaml").is_file()
    return out


@pytest.fixture(scope="session")
def predictor(fiji_bundle):
    """The Python predictor on one 2D plane (float32 in, float32 out): what the macro must match."""
    from w2sr.predict.model import Model, Settings

    settings = Settings(bundle=str(fiji_bundle), runtime="onnx", progress=False)
    model = Model.load(settings)

    def predict(plane: np.ndarray) -> np.ndarray:
        return model.predict_slice(np.asarray(plane, np.float32), settings)
    return predict


# --------------------------------------------------------------------------------------------
# the macro files themselves (no ImageJ needed)
# --------------------------------------------------------------------------------------------
def test_one_macro_for_files_and_folders_with_each_function_once():
    assert sorted(p.name for p in MACROS.glob("*.ijm")) == [MACRO.name]
    names = re.findall(r"^function (\w+)\(", MACRO.read_text(), re.M)
    assert "predictImage" in names and "processFile" in names
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_macro_uses_deepimagej_31_syntax_and_converts_to_32_bit():
    text = MACRO.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    run_lines = [line for line in code.splitlines() if 'run("DeepImageJ Run"' in line]
    assert len(run_lines) == 1, run_lines
    for key in ("model_path=[", "input_path=[", "output_folder=[", "display_output=null"):
        assert key in run_lines[0]
    assert 'run("32-bit")' in code
    assert "getArgument()" in code and "Dialog.create" in code
    # the 2.x / camelCase forms are documented in the comments
    assert "modelPath=" in text and "format=Tensorflow" in text


def test_the_bundle_carries_the_macro(fiji_bundle):
    if os.environ.get("W2SR_FIJI_TEST_BUNDLE"):
        pytest.skip("W2SR_FIJI_TEST_BUNDLE: a bundle built elsewhere may carry other macro versions")
    copy = fiji_bundle / "fiji_macros" / MACRO.name
    assert copy.is_file(), f"{copy} missing from the bundle"
    assert copy.read_text() == MACRO.read_text()


@pytest.mark.imagej
@needs_imagej
def test_deepimagej2_preprocessing_macro_is_the_bundles_normalisation(fiji_bundle, tmp_path):
    """preprocessing.ijm (DeepImageJ 2.1) run by ImageJ on a 16-bit image == w2sr.core.normalization."""
    import tifffile

    from w2sr.bundle.reader import read_bundle

    img = np.random.default_rng(9).poisson(300, (37, 53)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "in.tif", img)
    macro = tmp_path / "pre.ijm"
    macro.write_text(f'open("{tmp_path / "in.tif"}");\n'
                     f'runMacro("{fiji_bundle / "preprocessing.ijm"}");\n'
                     f'saveAs("Tiff", "{tmp_path / "out.tif"}");\n')
    res = run_macro(macro)
    assert res.returncode == 0, res.stderr
    got, *_ = read_tif(tmp_path / "out.tif")
    want = read_bundle(fiji_bundle).normalization.input(img)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# the headless runner
# --------------------------------------------------------------------------------------------
RUNNER_CASES = {
    "ok": ('print("hello " + getArgument());', 0, "stdout", "hello ARG"),
    "macro_error": ('print("x");\ny = undefinedVariable + 1;', 1, "stderr", "Undefined variable in line 2"),
    "exit_message": ('exit("fatal: no model here");', 2, "stderr", "fatal: no model here"),
    "unknown_command": ('run("No Such Command Anywhere");', 1, "stderr", 'Unrecognized command: "No Such Command Anywhere"'),
    "dialog": ('Dialog.create("Asks a person"); Dialog.addString("Name:", "x"); Dialog.show();', 4, "stderr",
               "a dialog opened during an unattended run: 'Asks a person'"),
}


@pytest.mark.imagej
@needs_imagej
@pytest.mark.parametrize("case", list(RUNNER_CASES))
def test_runner_turns_macro_outcomes_into_exit_codes(case, tmp_path):
    code, rc, stream, text = RUNNER_CASES[case]
    macro = tmp_path / f"{case}.ijm"
    macro.write_text(code + "\n")
    res = run_macro(macro, "ARG", timeout=60)
    assert res.returncode == rc
    assert text in getattr(res, stream)


# --------------------------------------------------------------------------------------------
# the DeepImageJ Run stand-in: DeepImageJ 3.1's interface and output naming
# --------------------------------------------------------------------------------------------
@pytest.mark.imagej
@needs_imagej
def test_standin_writes_outputs_the_way_deepimagej_31_does(fiji_bundle, predictor, tmp_path):
    import tifffile

    rng = np.random.default_rng(11)
    img32 = rng.normal(120, 40, (40, 48)).astype(np.float32)
    img16 = (rng.random((40, 48)) * 400).astype(np.uint16)
    tifffile.imwrite(tmp_path / "my cell.tif", img32, imagej=True, resolution=(10.0, 10.0),
                     metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "raw16.tif", img16)
    out, active = tmp_path / "out", tmp_path / "active"
    macro = tmp_path / "standin.ijm"
    macro.write_text(f"""
run("DeepImageJ Run", "model_path=[{fiji_bundle}] input_path=[{tmp_path / 'my cell.tif'}] output_folder=[{out}] display_output=null");
run("DeepImageJ Run", "model_path=[{fiji_bundle}] input_path=[{tmp_path / 'raw16.tif'}] output_folder=[{out}] display_output=null");
open("{tmp_path / 'raw16.tif'}");
run("32-bit");
rename("active_image.tif");
run("DeepImageJ Run", "model_path=[{fiji_bundle}] input_path=null output_folder=[{active}] display_output=null");
print("done");
""")
    res = run_macro(macro)
    assert res.returncode == 0 and "done" in res.stdout
    # title = ImagePlus.getShortTitle() (no extension; ImageJ 1.53t drops the spaces) + "_" + rdf output name
    assert sorted(p.name for p in out.iterdir()) == ["mycell_output.tif", "raw16_output.tif"]
    a, px, unit, _ = read_tif(out / "mycell_output.tif")
    assert a.dtype == np.float32 and a.shape == (80, 96)
    assert px == pytest.approx(1.0) and unit in (None, "pixel"), "DeepImageJ's output carries no calibration"
    assert_zoo_close(a, predictor(img32), "stand-in, 32-bit file")
    # active-image mode on the 32-bit copy
    b, *_ = read_tif(active / "active_image_output.tif")
    assert_zoo_close(b, predictor(img16), "stand-in, active image")
    # a 16-bit image handed over as is: JDLL 0.6.1 copies it to float first (measured), so no
    # "black output" trap: the same result as its 32-bit conversion
    c, *_ = read_tif(out / "raw16_output.tif")
    assert_zoo_close(c, predictor(img16), "stand-in, raw 16-bit file")
    assert "JDLL 0.6.1 semantics" in res.stderr


@pytest.mark.imagej
@needs_imagej
def test_standin_errors_behave_like_deepimagej_31(fiji_bundle, tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "x.tif", np.ones((32, 32), np.float32))
    no_rdf = tmp_path / "not_a_model"
    no_rdf.mkdir()
    out = tmp_path / "out"
    macro = tmp_path / "errors.ijm"
    macro.write_text(f"""
run("DeepImageJ Run", "model_path=[{no_rdf}] input_path=[{tmp_path / 'x.tif'}] output_folder=[{out}] display_output=null");
print("after missing rdf");
run("DeepImageJ Run", "input_path=[{tmp_path / 'x.tif'}] output_folder=[{out}]");
print("after missing model_path");
run("DeepImageJ Run", "model_path=[{fiji_bundle}] input_path=[{tmp_path / 'nope.tif'}] output_folder=[{out}]");
print("after missing input");
""")
    res = run_macro(macro)
    # DeepImageJ 3.1 prints these problems (stack trace / Exception window); the macro goes on
    assert res.returncode == 0
    assert "after missing input" in res.stdout
    assert "FileNotFoundException" in res.stderr and "rdf.yaml" in res.stderr
    assert "requires to the variable 'model_path'" in res.stderr
    assert "The provided input folder does not exist" in res.stderr
    assert not any(out.glob("*.tif")), "nothing may be written for a failed run"


# --------------------------------------------------------------------------------------------
# a folder as input
# --------------------------------------------------------------------------------------------
@pytest.mark.imagej
@needs_imagej
def test_folder_input_matches_the_python_predictor(fiji_bundle, predictor, tmp_path):
    from w2sr.predict.batch import predict_files

    src, out, py_out = tmp_path / "in", tmp_path / "sr", tmp_path / "py"
    images = write_inputs(src)
    before = tree_hashes(src)

    java_tmp = tmp_path / "java_tmp"  # ImageJ's temp folder, where the macro keeps its planes
    java_tmp.mkdir()
    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=out),
                    java_options=(f"-Djava.io.tmpdir={java_tmp}",))
    assert res.returncode == 0, res.stderr
    assert "Summary: 4 done, 1 skipped, 0 failed" in res.stdout
    assert not any(java_tmp.iterdir()), "temporary planes left behind"
    assert "skipped notes.txt: not an image file" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "a8_sr.tif", "b16_sr.tif", "c32_uncalibrated_sr.tif", "d_stack_sr.tif"]
    assert tree_hashes(src) == before, "inputs changed"

    # fp32: the precision DeepImageJ runs in (auto may take bf16 on this CPU: close, not identical)
    results = predict_files(fiji_bundle, [src], py_out, progress=False, runtime="onnx", precision="fp32")
    assert all(r.status == "written" for r in results), results
    for name, raw in images.items():
        stem = name[:-4]
        got, px, unit, meta = read_tif(out / f"{stem}_sr.tif")
        ref, ref_px, ref_unit, ref_meta = read_tif(py_out / f"{stem}_sr.tif")
        assert got.dtype == np.float32
        # the predictor's file and the predictor called plane by plane on float32 copies
        assert_zoo_close(got, ref, f"{name}: macro vs w2sr predict")
        planes = raw if raw.ndim == 3 else raw[None]
        expected = np.stack([predictor(p.astype(np.float32)) for p in planes])
        assert_zoo_close(got.reshape(expected.shape), expected, f"{name}: macro vs predictor")
        if "uncalibrated" in name:
            assert px == pytest.approx(0.5) and unit in (None, "", "pixel")  # ImageJ omits the unit "pixel"
        else:
            assert px == pytest.approx(0.05, rel=1e-5) and unit == "micron"
        assert px == pytest.approx(ref_px, rel=1e-5)
    _, _, _, meta = read_tif(out / "d_stack_sr.tif")
    assert meta.get("slices") == 3 and float(meta.get("spacing")) == pytest.approx(0.3)

    # again: existing outputs are skipped and left alone ...
    outputs = tree_hashes(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=out))
    assert res.returncode == 0
    assert "Summary: 0 done, 5 skipped, 0 failed" in res.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    # ... unless overwrite=true
    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=out) + " overwrite=true")
    assert res.returncode == 0 and "Summary: 4 done, 1 skipped, 0 failed" in res.stdout
    assert tree_hashes(out) == outputs  # same numbers, rewritten
    assert all(p.stat().st_mtime_ns >= mtimes[p.name] for p in out.iterdir())
    assert sorted(p.name for p in out.iterdir()) == sorted(mtimes), "no temporary files left behind"
    assert tree_hashes(src) == before


@pytest.mark.imagej
@needs_imagej
def test_folder_input_leaves_the_users_open_images_alone(fiji_bundle, tmp_path):
    import tifffile

    src, out = tmp_path / "in", tmp_path / "sr"
    src.mkdir()
    tifffile.imwrite(src / "z.tif", np.ones((2, 32, 32), np.float32))
    caller = tmp_path / "caller.ijm"
    caller.write_text(f'''
newImage("my open image", "16-bit ramp", 64, 64, 1);
runMacro("{MACRO}", "{args(model=fiji_bundle, input=src, output=out)}");
print("open after: " + nImages + " " + getTitle());
''')
    res = run_macro(caller)
    assert res.returncode == 0
    assert "open after: 1 my open image" in res.stdout
    assert (out / "z_sr.tif").is_file()


@pytest.mark.imagej
@needs_imagej
def test_folder_input_logs_unreadable_files_and_goes_on(fiji_bundle, predictor, tmp_path):
    import tifffile

    src, out = tmp_path / "in", tmp_path / "sr"
    src.mkdir()
    good = (np.random.default_rng(5).random((32, 40)) * 300).astype(np.float32)
    tifffile.imwrite(src / "good.tif", good)
    (src / "empty.tif").write_bytes(b"")
    (src / "garbage.tif").write_bytes(os.urandom(4000))
    (src / "text_named.png").write_text("not a png\n" * 20)
    (src / "header_only.tif").write_bytes((src / "good.tif").read_bytes()[:8])
    before = tree_hashes(src)

    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=out))
    assert res.returncode == 2, "failed files make the batch end with exit(...)"
    assert "Summary: 1 done, 0 skipped, 4 failed" in res.stdout
    for name, why in [("empty.tif", "empty file"), ("garbage.tif", "not a TIFF file"),
                      ("text_named.png", "not a PNG file"), ("header_only.tif", "ImageJ cannot open")]:
        assert re.search(rf"FAILED {re.escape(name)}: .*{why}", res.stdout), name
    assert "4 of 5 image(s) failed" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good_sr.tif"]
    assert_zoo_close(read_tif(out / "good_sr.tif")[0], predictor(good), "good.tif next to bad files")
    assert tree_hashes(src) == before


@pytest.mark.imagej
@needs_imagej
def test_folder_input_refuses_images_that_would_give_garbage(fiji_bundle, predictor, tmp_path):
    """As w2sr predict: a truncated TIFF, NaN/Inf pixels and a >3-D array ImageJ would flatten get
    no output and a reason; an earlier run's bad output (NaN) is not taken as done."""
    import tifffile

    rng = np.random.default_rng(8)
    src, out = tmp_path / "in", tmp_path / "sr"
    src.mkdir()
    out.mkdir()
    good = rng.normal(120, 40, (32, 40)).astype(np.float32)
    tifffile.imwrite(src / "good.tif", good)
    redo = rng.normal(120, 40, (32, 40)).astype(np.float32)
    tifffile.imwrite(src / "redo.tif", redo)
    tifffile.imwrite(out / "redo_sr.tif", np.full((64, 80), np.nan, np.float32))  # an earlier bad result
    full = rng.normal(120, 40, (64, 64)).astype(np.float32)
    tifffile.imwrite(tmp_path / "full.tif", full)
    data = (tmp_path / "full.tif").read_bytes()
    (src / "truncated.tif").write_bytes(data[: len(data) // 2])
    nan = good.copy()
    nan[5, 7] = np.nan
    tifffile.imwrite(src / "nan.tif", nan)
    inf_stack = np.stack([good, good]).copy()
    inf_stack[1, 3, 3] = np.inf
    tifffile.imwrite(src / "inf_stack.tif", inf_stack, imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(src / "five_d.tif", rng.random((2, 2, 2, 16, 16)).astype(np.float32))
    before = tree_hashes(src)

    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=out))
    assert res.returncode == 2
    assert "Summary: 2 done, 0 skipped, 4 failed" in res.stdout
    for name, why in [("truncated.tif", "truncated TIFF: its image data runs to byte"),
                      ("nan.tif", "holds NaN or Inf values \\(1 pixels\\)"),
                      ("inf_stack.tif", "holds NaN or Inf values in plane 2 of 2"),
                      ("five_d.tif", "a 5-D array \\(shape \\[2, 2, 2, 16, 16\\]\\)")]:
        assert re.search(rf"FAILED {re.escape(name)}: .*{why}", res.stdout), (name, res.stdout)
    assert "redo_sr.tif exists but holds NaN/Inf" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["good_sr.tif", "redo_sr.tif"]
    assert_zoo_close(read_tif(out / "redo_sr.tif")[0], predictor(redo), "redone output")
    assert tree_hashes(src) == before


@pytest.mark.imagej
@needs_imagej
def test_folder_input_reports_a_model_that_does_not_run(fiji_bundle, tmp_path):
    """DeepImageJ fails on every image (here: the weights are gone): each file fails, with a reason."""
    import tifffile

    broken = tmp_path / "broken_model"
    shutil.copytree(fiji_bundle, broken)
    for onnx in broken.glob("*.onnx"):
        onnx.unlink()
    src, out = tmp_path / "in", tmp_path / "sr"
    src.mkdir()
    tifffile.imwrite(src / "one.tif", np.ones((32, 32), np.float32))
    res = run_macro(MACRO, args(model=broken, input=src, output=out))
    assert res.returncode == 2
    assert "FAILED one.tif: DeepImageJ Run wrote no output" in res.stdout
    assert "Summary: 0 done, 0 skipped, 1 failed" in res.stdout
    assert not list(out.glob("*.tif"))


@pytest.mark.imagej
@needs_imagej
def test_standin_throws_like_jdll_on_processing_kwargs_it_rejects(fiji_bundle, tmp_path):
    """JDLL 0.6.1 throws at preprocessing on kwargs it rejects (measured: scalar mean/std with axes;
    read in its source, TransformationInstance.getMethodForArgument: a kwarg without a setter, the
    case here); the image gets no output and the macro goes on. The exported bundle runs."""
    import tifffile

    def scalar(doc):
        kwargs = doc["inputs"][0]["preprocessing"][0]["kwargs"]
        kwargs["epsilon"] = kwargs.pop("eps")  # JDLL has no setEpsilon

    old = edit_rdf(fiji_bundle, scalar, copy_to=tmp_path / "scalar_kwargs")
    tifffile.imwrite(tmp_path / "x.tif", np.full((64, 64), 100, np.float32))
    out_old, out_new = tmp_path / "out_old", tmp_path / "out_new"
    macro = tmp_path / "kwargs.ijm"
    macro.write_text(f"""
run("DeepImageJ Run", "model_path=[{old}] input_path=[{tmp_path / 'x.tif'}] output_folder=[{out_old}] display_output=null");
print("after the scalar rdf");
run("DeepImageJ Run", "model_path=[{fiji_bundle}] input_path=[{tmp_path / 'x.tif'}] output_folder=[{out_new}] display_output=null");
""")
    res = run_macro(macro)
    assert res.returncode == 0 and "after the scalar rdf" in res.stdout
    assert "Setter for argument 'epsilon' of the processing transformation 'scale_range' not found" in res.stderr
    assert not any(out_old.glob("*.tif"))
    assert [p.name for p in out_new.glob("*.tif")] == ["x_output.tif"]


@pytest.mark.imagej
@needs_imagej
def test_folder_input_pads_small_images_that_deepimagej_alone_gets_wrong(fiji_bundle, predictor, tmp_path):
    """DeepImageJ 3.1 alone (the stand-in follows JDLL 0.6.1) shifts a 27 px side by one output pixel
    (tile - side odd and > 2 x halo) and refuses a side under a third of the tile; the macro
    mirror-pads such images with whole copies of themselves (so the percentiles DeepImageJ computes
    are the image's) and crops, and then matches the Python predictor."""
    import tifffile

    from w2sr.bundle import jdll

    rng = np.random.default_rng(5)
    src, out, alone = tmp_path / "in", tmp_path / "sr", tmp_path / "alone"
    src.mkdir()
    odd = rng.normal(120, 40, (27, 44)).astype(np.float32)
    tiny = rng.normal(120, 40, (18, 40)).astype(np.float32)
    tifffile.imwrite(src / "odd.tif", odd)
    tifffile.imwrite(src / "tiny.tif", tiny)
    model = jdll.JdllModel.from_rdf(__import__("yaml").safe_load((fiji_bundle / "rdf.yaml").read_text()))
    assert jdll.plan(model, odd.shape).shifted
    with pytest.raises(jdll.JdllError, match="3 times"):
        jdll.plan(model, tiny.shape)

    macro = tmp_path / "alone.ijm"
    macro.write_text(f'run("DeepImageJ Run", "model_path=[{fiji_bundle}] input_path=[{src}] '
                     f'output_folder=[{alone}] display_output=null");\n')
    res = run_macro(macro)
    assert res.returncode == 0 and "3 times the image size" in res.stderr
    assert [p.name for p in alone.glob("*.tif")] == ["odd_output.tif"]  # tiny.tif: refused, no output
    shifted, *_ = read_tif(alone / "odd_output.tif")
    want = predictor(odd)
    assert np.abs(shifted - want).max() > 20 * (ZOO_ATOL + ZOO_RTOL * np.abs(want).max())  # JDLL's one-pixel shift
    np.testing.assert_allclose(shifted[1:], want[:-1], atol=1e-3, rtol=1e-4)

    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=out))
    assert res.returncode == 0, res.stderr
    assert "Summary: 2 done, 0 skipped, 0 failed" in res.stdout
    for name, img in (("odd", odd), ("tiny", tiny)):
        got, *_ = read_tif(out / f"{name}_sr.tif")
        assert_zoo_close(got, predictor(img), f"{name}: macro vs predictor")


@pytest.mark.imagej
@needs_imagej
def test_folder_input_skips_images_deepimagej_would_hang_on(fiji_bundle, predictor, tmp_path):
    """With an rdf whose tile grows with the image (step 1, as bundles had before), JDLL 0.6.1 never
    returns above 4096*4096*3 pixels: the macro skips such an image with a warning that names it and
    points to w2sr predict, and processes the rest."""
    import tifffile

    def growing_tile(doc):
        doc["inputs"][0]["shape"] = {"min": [1, 16, 16, 1], "step": [0, 1, 1, 0]}
        del doc["config"]["w2sr"]["network"]["deepimagej_tile"]

    old = edit_rdf(fiji_bundle, growing_tile, copy_to=tmp_path / "step1_model")
    src, out = tmp_path / "in", tmp_path / "sr"
    src.mkdir()
    tifffile.imwrite(src / "huge.tif", np.zeros((7100, 7100), np.uint8))
    small = np.random.default_rng(9).normal(120, 40, (40, 48)).astype(np.float32)
    tifffile.imwrite(src / "small.tif", small)
    res = run_macro(MACRO, args(model=old, input=src, output=out), timeout=300)
    assert res.returncode == 0, res.stderr
    assert "WARNING: skipped huge.tif: 7100x7100 is above DeepImageJ 3.1's limit" in res.stdout
    assert "use 'w2sr predict'" in res.stdout
    assert "Summary: 1 done, 1 skipped, 0 failed" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["small_sr.tif"]
    got, *_ = read_tif(out / "small_sr.tif")
    assert_zoo_close(got, predictor(small), "small image with the step-1 rdf")


def _fatal_cases(tmp_path: Path, bundle: Path) -> dict[str, tuple[str, str]]:
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "x.tif", np.ones((32, 32), np.float32))
    empty = tmp_path / "empty"
    empty.mkdir()
    only_text = tmp_path / "only_text"
    only_text.mkdir()
    (only_text / "readme.txt").write_text("x")
    no_rdf = tmp_path / "no_rdf_model"
    no_rdf.mkdir()
    alias = tmp_path / "alias_of_in"
    alias.symlink_to(src, target_is_directory=True)
    out = tmp_path / "out"
    return {
        "model_not_found": (args(model=tmp_path / "no_such_model", input=src, output=out), "Model not found"),
        "model_without_rdf": (args(model=no_rdf, input=src, output=out), "Not a model folder (no rdf.yaml)"),
        "model_zip": (args(model=tmp_path / "model.zip", input=src, output=out), "is a zip"),
        "input_missing": (args(model=bundle, input=tmp_path / "nope", output=out), "Input folder not found"),
        "empty_folder": (args(model=bundle, input=empty, output=out), "No image files in"),
        "no_images_in_folder": (args(model=bundle, input=only_text, output=out), "No image files in"),
        "output_is_input": (args(model=bundle, input=src, output=src), "The output folder is the input folder"),
        "output_is_input_by_link": (args(model=bundle, input=src, output=alias), "The output folder is the input folder"),
        "no_output_given": (args(model=bundle, input=src), "No output folder given"),
    }


FATAL = ["model_not_found", "model_without_rdf", "model_zip", "input_missing", "empty_folder",
         "no_images_in_folder", "output_is_input", "output_is_input_by_link", "no_output_given"]


@pytest.mark.imagej
@needs_imagej
@pytest.mark.parametrize("case", FATAL)
def test_folder_input_stops_with_a_message(case, fiji_bundle, tmp_path):
    argument, message = _fatal_cases(tmp_path, fiji_bundle)[case]
    before = tree_hashes(tmp_path)
    res = run_macro(MACRO, argument, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr
    assert tree_hashes(tmp_path) == before, "a refused run must write nothing"
    assert not (tmp_path / "out").exists()


@pytest.mark.imagej
@needs_imagej
def test_folder_input_without_deepimagej_says_so(fiji_bundle, tmp_path):
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "x.tif", np.ones((32, 32), np.float32))
    empty_home = tmp_path / "fresh_imagej"
    (empty_home / "plugins").mkdir(parents=True)
    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=tmp_path / "out"),
                    java_options=(f"-Dplugins.dir={empty_home}",))
    assert res.returncode == 2
    assert 'DeepImageJ is not installed (no command "DeepImageJ Run")' in res.stderr


@pytest.mark.imagej
@needs_imagej
def test_macro_without_arguments_asks_in_a_dialog():
    res = run_macro(MACRO, "", timeout=60)
    assert res.returncode == imagej_runner.DIALOG
    assert "'w2sr: DeepImageJ super-resolution'" in res.stderr


# --------------------------------------------------------------------------------------------
# an image file as input
# --------------------------------------------------------------------------------------------
@pytest.mark.imagej
@needs_imagej
def test_image_file_input(fiji_bundle, predictor, tmp_path):
    import tifffile

    src, out = tmp_path / "in", tmp_path / "sr"
    src.mkdir()
    raw = (np.random.default_rng(9).random((3, 2, 24, 28)) * 2000).astype(np.uint16)  # 3 slices x 2 channels
    tifffile.imwrite(src / "hyper stack.tif", raw, imagej=True, resolution=(1 / 0.16, 1 / 0.16),
                     metadata={"unit": "micron", "axes": "ZCYX"})
    before = tree_hashes(src)
    res = run_macro(MACRO, args(model=fiji_bundle, input=src / "hyper stack.tif", output=out))
    assert res.returncode == 0, res.stderr
    assert "done hyper stack.tif" in res.stdout
    got, px, unit, meta = read_tif(out / "hyper stack_sr.tif")
    assert (meta.get("channels"), meta.get("slices")) == (2, 3)
    assert px == pytest.approx(0.08, rel=1e-5) and unit == "micron"
    stored = read_tif(src / "hyper stack.tif")[0]  # the planes in the order ImageJ keeps them
    assert stored.shape[-2:] == (24, 28) and stored.size == raw.size
    planes = stored.reshape(-1, 24, 28)
    expected = np.stack([predictor(p.astype(np.float32)) for p in planes])
    assert got.shape == stored.shape[:-2] + (48, 56)
    assert_zoo_close(got.reshape(expected.shape), expected, "hyperstack given as an image file")
    assert tree_hashes(src) == before

    again = run_macro(MACRO, args(model=fiji_bundle, input=src / "hyper stack.tif", output=out))
    assert again.returncode == 2 and "Output exists" in again.stderr


@pytest.mark.imagej
@needs_imagej
@pytest.mark.parametrize("case", ["missing_image", "unreadable_image", "output_is_image_folder", "not_an_image"])
def test_image_file_input_failures(case, fiji_bundle, tmp_path):
    src, out = tmp_path / "in", tmp_path / "sr"
    src.mkdir()
    (src / "broken.tif").write_bytes(os.urandom(500))
    (src / "notes.txt").write_text("x")
    argument, message = {
        "missing_image": (args(model=fiji_bundle, input=src / "nope.tif", output=out), "Input image not found"),
        "unreadable_image": (args(model=fiji_bundle, input=src / "broken.tif", output=out),
                             "FAILED broken.tif: cannot read"),
        "output_is_image_folder": (args(model=fiji_bundle, input=src / "broken.tif", output=src),
                                   "The output folder is the input folder"),
        "not_an_image": (args(model=fiji_bundle, input=src / "notes.txt", output=out), "Not an image file"),
    }[case]
    before = tree_hashes(src)
    res = run_macro(MACRO, argument, timeout=60)
    assert res.returncode == 2
    assert message in res.stderr
    assert tree_hashes(src) == before
    assert not list(out.glob("*.tif")) if out.exists() else True


@pytest.mark.imagej
@needs_imagej
def test_an_image_gives_the_same_file_as_a_file_input_and_in_a_folder(fiji_bundle, tmp_path):
    """One predictImage path for both inputs: the same bytes (and so pixels, calibration, layout),
    here for a calibrated 16-bit Z stack small enough to be mirror-padded."""
    import tifffile

    src = tmp_path / "in"
    src.mkdir()
    raw = (np.random.default_rng(4).random((2, 27, 44)) * 3000).astype(np.uint16)
    tifffile.imwrite(src / "cell.tif", raw, imagej=True, resolution=(10.0, 10.0),
                     metadata={"unit": "micron", "axes": "ZYX", "spacing": 0.3})
    by_folder, by_file = tmp_path / "by_folder", tmp_path / "by_file"
    res = run_macro(MACRO, args(model=fiji_bundle, input=src, output=by_folder))
    assert res.returncode == 0 and "Summary: 1 done, 0 skipped, 0 failed" in res.stdout, res.stderr
    res = run_macro(MACRO, args(model=fiji_bundle, input=src / "cell.tif", output=by_file))
    assert res.returncode == 0 and "done cell.tif" in res.stdout and "Summary:" not in res.stdout, res.stderr
    assert sorted(p.name for p in by_folder.iterdir()) == sorted(p.name for p in by_file.iterdir()) == ["cell_sr.tif"]
    a, b = read_tif(by_folder / "cell_sr.tif"), read_tif(by_file / "cell_sr.tif")
    assert a[0].shape == (2, 54, 88) and np.array_equal(a[0], b[0]) and a[1:3] == b[1:3]
    assert (by_folder / "cell_sr.tif").read_bytes() == (by_file / "cell_sr.tif").read_bytes()


# --------------------------------------------------------------------------------------------
# system dependencies
# --------------------------------------------------------------------------------------------
@pytest.mark.imagej
@needs_imagej
def test_install_script_is_a_no_op_when_everything_is_installed():
    res = subprocess.run(["bash", str(ROOT / "scripts" / "install_system_deps.sh")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "installing" not in res.stdout + res.stderr
