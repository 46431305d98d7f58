"""The bundle as DeepImageJ 3.1 runs it: JDLL 0.6.1's rules (w2sr.bundle.jdll) applied to the exported rdf.

JDLL's rules themselves are checked against cases worked out by hand from its source (tag
dl-modelrunner-0.6.1: TileCalculator, TileMaker, TileGrid, ZeroMeanUnitVarianceTransformation); then
the exported bundle must satisfy them: processing kwargs JDLL accepts, one fixed tile whatever the
image size, and DeepImageJ's output equal to test_output.npy / whole-image inference on every
pixel, edges included. Real TensorFlow, ONNX Runtime and bioimageio.spec; the bundle is the tiny
one of tests/fixtures/runs.py, tests/conftest.py (tile 128).
"""
from __future__ import annotations

import re

import copy

import numpy as np
import pytest
import yaml

from w2sr.bundle import jdll

from w2sr.core.contract import ATOL as ZOO_ATOL, RTOL as ZOO_RTOL  # noqa: E402


def _doc(bundle) -> dict:
    return yaml.safe_load((bundle / "rdf.yaml").read_text())


def _axis(min_: int, step: int, halo: int) -> jdll.JdllAxis:
    return jdll.JdllAxis(min=min_, step=step, halo=halo, scale=2.0, out_halo=2 * halo)


def _model(axis: jdll.JdllAxis, pre=(), post=()) -> jdll.JdllModel:
    return jdll.JdllModel(axes="byxc", y=axis, x=axis, tiling=True, preprocessing=list(pre),
                          postprocessing=list(post))


def _assert_zoo_close(a, b, what: str) -> None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    bad = ~(np.abs(a - b) <= ZOO_ATOL + ZOO_RTOL * np.abs(b))
    assert not bad.any(), f"{what}: {int(bad.sum())} px outside the zoo tolerance, max {np.abs(a - b).max():.3g}"


# --------------------------------------------------------------------------------------------
# JDLL's rules, against hand-worked cases from its source


@pytest.mark.parametrize("size,axis,tile", [
    (512, _axis(40, 1, 12), 536),        # step 1: (size + 2*halo) // 1: the whole image is one tile
    (333, _axis(40, 1, 12), 357),
    (1000, _axis(64, 256, 12), 1024),    # (1000 + 24) // 256 * 256
    (100, _axis(64, 256, 12), 0),        # (100 + 24) // 256 = 0: JDLL floors to a zero tile
    (60, _axis(50, 100, 100), 100),      # 260 // 100 * 100 = 200 > 3 x 60 and 200 - 100 >= 50: one step less
    (8000, _axis(512, 0, 15), 512),      # step 0: always min
    (97, _axis(512, 0, 15), 512),
])
def test_jdll_tile_formula(size, axis, tile):
    assert jdll.tile_size(size, axis) == tile


def test_jdll_hangs_only_when_the_tile_grows_with_the_image():
    grows, fixed = _model(_axis(40, 1, 12)), _model(_axis(512, 0, 15))
    assert not jdll.never_returns(grows, (7000, 7000))      # 7024^2 < 4096*4096*3
    assert jdll.never_returns(grows, (7100, 7100))          # 7124^2 > 4096*4096*3
    assert not jdll.never_returns(fixed, (30000, 30000))
    with pytest.raises(jdll.JdllError, match="never returns"):
        jdll.plan(grows, (8000, 3000 * 3))


def test_jdll_grid_and_one_pixel_shift_for_small_images():
    fixed = _model(_axis(128, 0, 10))
    tp = jdll.plan(fixed, (300, 200))  # multi-tile: ROIs of 108 px, the last one clamped
    assert tp.in_y.roi == 108 and tp.in_y.patch_starts == (-10, 98, 182) and tp.in_y.roi_starts == (0, 108, 192)
    assert tp.out_y.patch_starts == (-20, 196, 364) and not tp.shifted
    # 61 px: tile - size = 67 is odd and > 2*halo: input padded by 34 px, output placed as if by 33.5
    tp = jdll.plan(fixed, (61, 64))
    assert tp.in_y.patch_starts == (-34,) and tp.out_y.patch_starts == (-67,) and tp.shifted
    with pytest.raises(jdll.JdllError, match="3 times the image size"):
        jdll.plan(fixed, (42, 64))


def test_jdll_shift_is_reproduced_and_the_macro_padding_avoids_it():
    """A network that copies its (upsampled) input shows JDLL's placement directly."""
    fixed = _model(_axis(128, 0, 10))
    up = lambda t: np.repeat(np.repeat(t, 2, 1), 2, 2)  # noqa: E731 - nearest 2x, exact
    img = np.random.default_rng(0).normal(size=(61, 64)).astype(np.float32)
    want = up(img[None])[0]
    got = jdll.predict(fixed, up, img)
    np.testing.assert_array_equal(got[1:, :], want[:-1, :])   # y: shifted down by one output pixel
    assert not np.array_equal(got, want)
    np.testing.assert_array_equal(jdll.predict_like_macro(fixed, up, img), want)
    assert jdll.macro_canvas(fixed, (61, 64)) == (122, 128)   # whole copies reaching 128 - 2*10 = 108
    assert jdll.macro_canvas(fixed, (300, 109)) == (300, 109)  # 109 >= 128 - 2*10: no padding
    assert jdll.macro_canvas(fixed, (30, 107)) == (120, 214)


def test_zero_mean_unit_variance_kwargs_as_jdll_checks_them():
    x = np.full((1, 4, 4, 1), 10.0, np.float32)
    scalar = {"mode": "fixed", "axes": "xy", "mean": 4.0, "std": 2.0, "eps": 1e-6}
    with pytest.raises(jdll.JdllError, match=r"The parameters 'mean' and ' std' have to be arrays with the "
                                             r"introduced 'axes'\."):
        jdll.zero_mean_unit_variance(x, scalar, "byxc")
    listed = {**scalar, "mean": [4.0], "std": [2.0]}
    np.testing.assert_allclose(jdll.zero_mean_unit_variance(x, listed, "byxc"), 3.0, rtol=1e-6)
    no_axes = {"mode": "fixed", "mean": 4.0, "std": 2.0}
    np.testing.assert_allclose(jdll.zero_mean_unit_variance(x, no_axes, "byxc"), 3.0, rtol=1e-6)
    with pytest.raises(jdll.JdllError, match="cannot be arrays"):
        jdll.zero_mean_unit_variance(x, {"mode": "fixed", "axes": "byxc", "mean": [1.0], "std": [1.0]}, "byxc")


# --------------------------------------------------------------------------------------------
# the exported bundle


def test_rdf_processing_is_what_jdll_and_bioimageio_accept(exported_bundle):
    """Percentile mode (the export): scale_range kwargs JDLL has setters for, no postprocessing.
    Fixed mode: one-element lists with axes xy, the only form JDLL's per-axis branch takes."""
    from w2sr.core.normalization import Normalization
    from export.rdf import input_processing, output_processing

    doc = _doc(exported_bundle)
    model = jdll.JdllModel.from_rdf(doc)
    jdll.check_processing(model)  # raises with JDLL's message where JDLL would throw
    assert [op["name"] for op in model.preprocessing] == ["scale_range"] and model.postprocessing == []
    assert model.preprocessing[0]["kwargs"]["axes"] == "xy"
    assert "reference_tensor" not in model.preprocessing[0]["kwargs"]  # JDLL does not support it

    fixed = Normalization(mode="fixed", input_mean=150.0, input_std=60.0, target_mean=140.0, target_std=55.0)
    doc = copy.deepcopy(doc)
    doc["inputs"][0]["preprocessing"] = input_processing(fixed)
    doc["outputs"][0]["postprocessing"] = output_processing(fixed)
    model = jdll.JdllModel.from_rdf(doc)
    jdll.check_processing(model)
    for op in model.preprocessing + model.postprocessing:
        kw = op["kwargs"]
        assert op["name"] == "zero_mean_unit_variance" and kw["axes"] == "xy"
        assert isinstance(kw["mean"], list) and isinstance(kw["std"], list) and len(kw["mean"]) == 1
    broken = copy.deepcopy(doc)
    broken["inputs"][0]["preprocessing"][0]["kwargs"]["mean"] = 150.0
    broken["inputs"][0]["preprocessing"][0]["kwargs"]["std"] = 60.0
    with pytest.raises(jdll.JdllError, match="have to be arrays"):
        jdll.check_processing(jdll.JdllModel.from_rdf(broken))


def test_deepimagej_tile_is_fixed_whatever_the_image(exported_bundle):
    doc = _doc(exported_bundle)
    inp = doc["inputs"][0]
    tile = inp["shape"]["min"][1]
    assert inp["shape"]["step"] == [0, 0, 0, 0] and inp["shape"]["min"] == [1, tile, tile, 1]
    assert doc["config"]["deepimagej"]["allow_tiling"] is True
    network = doc["config"]["w2sr"]["network"]
    assert network["deepimagej_tile"] == tile and network["deepimagej_halo"] == doc["outputs"][0]["halo"][1] // 2
    model = jdll.JdllModel.from_rdf(doc)
    core = tile - 2 * model.y.halo
    for shape in [(512, 512), (2048, 2048), (4096, 4096), (8000, 3000)]:
        tp = jdll.plan(model, shape)
        assert tp.tile == (tile, tile) and not jdll.never_returns(model, shape)
        assert tp.n_tiles == -(-shape[0] // core) * -(-shape[1] // core)


def test_deepimagej_reproduces_test_output_on_every_pixel(exported_bundle):
    """JDLL's path (tiles mirror-padded by the halo) == the stored whole-image output, edges included;
    the same weights without the graph's own padding do not match at the edges: the check can fail."""
    from w2sr.bundle.reader import read_bundle
    from w2sr.bundle.runtimes import OnnxRuntime, SavedModelRuntime
    from export.runtimes import KerasRuntime

    info = read_bundle(exported_bundle)
    model = jdll.JdllModel.from_rdf(_doc(exported_bundle))
    raw = np.load(info.test_input)[0, :, :, 0]
    expected = np.load(info.test_output)[0, :, :, 0]
    assert jdll.plan(model, raw.shape).n_tiles == 4
    for rt in (OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"]), SavedModelRuntime(info.savedmodel_zip)):
        _assert_zoo_close(jdll.predict(model, rt.predict, raw), expected, type(rt).__name__)
    padded = KerasRuntime(exported_bundle / "generator.keras", padding=info.padding)
    _assert_zoo_close(jdll.predict(model, padded.predict, raw), expected, "Keras + padding")
    # the weights the bundle shipped before (no graph padding): DeepImageJ's mirror-padded tiles no
    # longer match that network's own whole-image output (what bioimageio test stored) at the edges
    norm = info.normalization
    plain = KerasRuntime(exported_bundle / "generator.keras")
    plain_whole = norm.output(plain.predict(norm.input(raw)[None, :, :, None]))[0, :, :, 0]
    diff = np.abs(jdll.predict(model, plain.predict, raw) - plain_whole)
    assert diff.max() > 10 * (ZOO_ATOL + ZOO_RTOL * np.abs(expected).max())
    border = np.zeros_like(diff, bool)
    border[:4 * info.halo], border[-4 * info.halo:], border[:, :4 * info.halo], border[:, -4 * info.halo:] = (True,) * 4
    assert diff[~border].max() < diff[border].max() / 10  # the difference is at the edges


@pytest.mark.parametrize("shape", [(150, 131), (97, 173), (61, 64), (300, 129)])
def test_fiji_user_and_python_user_get_the_same_pixels(exported_bundle, shape):
    """Raw images of odd sizes: DeepImageJ through the Fiji macro's padding (and alone where JDLL
    does not shift), `w2sr predict`'s own tiling and whole-image inference agree on every pixel."""
    from w2sr.bundle.reader import read_bundle
    from w2sr.predict.model import Model, Settings
    from w2sr.bundle.runtimes import OnnxRuntime

    info = read_bundle(exported_bundle)
    model = jdll.JdllModel.from_rdf(_doc(exported_bundle))
    rng = np.random.default_rng(sum(shape))
    img = (rng.gamma(4.0, 40.0, shape) + 20).astype(np.float32)
    rt = OnnxRuntime(info.onnx_path, providers=["CPUExecutionProvider"])
    assert info.normalization.percentile  # the default mode: DeepImageJ computes the percentiles itself
    whole = info.normalization.output(rt.predict(info.normalization.input(img)[None, :, :, None]))[0, :, :, 0]
    _assert_zoo_close(jdll.predict_like_macro(model, rt.predict, img), whole, f"DeepImageJ + macro {shape}")
    settings = Settings(bundle=str(exported_bundle), runtime="onnx", progress=False, tile=64)
    _assert_zoo_close(Model.load(settings).predict_slice(img, settings), whole, f"w2sr predict, tile 64, {shape}")
    try:
        shifted = jdll.plan(model, shape).shifted
    except jdll.JdllError:  # a side under a third of the tile: JDLL refuses it (the macro pads it)
        assert min(shape) * 3 < model.y.min
        return
    if not shifted:
        _assert_zoo_close(jdll.predict(model, rt.predict, img), whole, f"DeepImageJ alone {shape}")


def test_validate_reports_deepimagej_rows_and_fails_on_kwargs_jdll_rejects(exported_bundle, tmp_path):
    from export.validate import validate_bundle
    from tests.fixtures.rdf_edit import edit_rdf

    good = validate_bundle(exported_bundle, bioimageio=False, sizes=())
    # bioimageio.core interpolates its percentiles; the residual it sees on the (one-tile) test input is
    # reported (docs/consumers.md: on 512^2 it is within the tolerance, tests/export/test_consumers.py)
    [note] = [n for n in good.notes if n.startswith("percentile definitions")]
    assert re.search(r"max diff [0-9.e+-]+, \d+ px outside the zoo tolerance$", note), note
    rows = {r.key: r for r in good.parity}
    for key in ("deepimagej-onnx", "deepimagej-savedmodel"):
        assert rows[key].status == "passed" and rows[key].vs_test_output.ok, rows[key]
        assert "4 tiles" in rows[key].reason and "JDLL" in rows[key].label + rows[key].reason

    def no_setter(doc):
        kwargs = doc["inputs"][0]["preprocessing"][0]["kwargs"]
        kwargs["epsilon"] = kwargs.pop("eps")  # bioimageio would read it; JDLL has no setEpsilon

    bad = edit_rdf(exported_bundle, no_setter, copy_to=tmp_path / "no-setter")
    report = validate_bundle(bad, bioimageio=False, sizes=())
    rows = {r.key: r for r in report.parity}
    assert rows["deepimagej-onnx"].status == "failed" and not report.ok
    assert "Setter for argument 'epsilon'" in rows["deepimagej-onnx"].reason
    assert rows["onnx-cpu"].status == "passed"  # the same numbers elsewhere


def test_zoo_package_is_as_jdll_readable_as_the_spec_allows(exported_bundle):
    import zipfile

    [pkg] = sorted((exported_bundle / "packages").glob("*_zoo-0.5.zip"))
    doc = yaml.safe_load(zipfile.ZipFile(pkg).read("rdf.yaml"))
    assert doc["id"] == "w2sr-tiny-test"
    steps = [op for t in doc["inputs"] + doc["outputs"] for op in t.get("preprocessing", []) + t.get("postprocessing", [])]
    assert [op["id"] for op in steps if op["id"] != "ensure_dtype"] == ["scale_range"]
    [sr] = [op for op in steps if op["id"] == "scale_range"]
    assert sr["kwargs"]["axes"] == ["x", "y"] and (sr["kwargs"]["min_percentile"], sr["kwargs"]["max_percentile"]) == (1.0, 99.8)
    assert "reference_tensor" not in sr["kwargs"]
    # JDLL casts documentation to a String: left out (optional), the README travels as an attachment
    assert doc.get("documentation") is None
    assert "README.md" in [a["source"] for a in doc["attachments"]]
    # sizes both JDLL (refTile * output scale) and the spec (ref.size * ref.scale / scale) read as 2x,
    # any size from the graph's smallest, and no halo (bioimageio.core pads before it normalises)
    space_in = [a for a in doc["inputs"][0]["axes"] if a.get("type") == "space"]
    space_out = [a for a in doc["outputs"][0]["axes"] if a.get("type") == "space"]
    assert [a["scale"] for a in space_in] == [4.0, 4.0] and [a["scale"] for a in space_out] == [2.0, 2.0]
    assert all(a["size"]["step"] == 1 for a in space_in) and not any("halo" in a for a in space_out)


@pytest.mark.parametrize("p", [1, 3, 7])
def test_graph_padding_is_numpy_symmetric_in_tensorflow(p):
    """w2sr.core.padding's TF ops (what the frozen graph and the ONNX carry) == numpy's 'symmetric'."""
    import tensorflow as tf

    from w2sr.core.padding import crop_numpy, crop_tf, pad_numpy, pad_tf

    x = np.random.default_rng(p).normal(size=(2, 9, 13, 1)).astype(np.float32)
    np.testing.assert_array_equal(pad_tf(tf.constant(x), p).numpy(), pad_numpy(x, p))
    np.testing.assert_array_equal(pad_numpy(x, p)[:, p:-p, p:-p], x)
    y = np.arange(2 * 30 * 34, dtype=np.float32).reshape(2, 30, 34, 1)
    np.testing.assert_array_equal(crop_tf(tf.constant(y), p, 2).numpy(), crop_numpy(y, p, 2))
    assert crop_numpy(y, p, 2).shape == (2, 30 - 4 * p, 34 - 4 * p, 1)
