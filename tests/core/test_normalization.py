"""Percentile normalisation (issue 9): each image is scaled by its own percentiles, with JDLL 0.6.1's
percentile, so a camera offset, a gain or the pixel type does not change the output; through
`w2sr predict` and through the bundle as DeepImageJ 3.1 runs it (w2sr.bundle.jdll).

The tiny fixture network has no padding of its own, so its two paths differ at the border (each
path is compared with itself here); that the two paths agree on every pixel for exported bundles is
test_deepimagej_conformance.py's job, which runs on a percentile-mode export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from w2sr.bundle import jdll
from w2sr.bundle.reader import read_bundle
from w2sr.core.contract import outside_tolerance
from w2sr.predict.model import Model, Settings
from w2sr.core.normalization import Normalization, NormalizationError, jdll_percentile
from w2sr.bundle.runtimes import OnnxRuntime
from tests.fixtures.tiny_model import RF_RADIUS, write_bundle
from w2sr.cli import main as cli



def cells(shape=(96, 80), seed=0) -> np.ndarray:
    """A fluorescence-like image in camera counts: blobs on a background, Poisson noise, integers."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, 100.0)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(3, 8)
        img += rng.uniform(200, 1500) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return rng.poisson(img).astype(np.float64)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("pct") / "bundle", percentiles=(1.0, 99.8))


def test_percentile_is_jdlls_sorted_index_without_interpolation():
    n = 512 * 512
    values = np.random.default_rng(0).permutation(n).astype(np.float32)
    # JDLL: sorted[(int)(N * p / 100)] -> 2621 and 261619 for 1 % and 99.8 % of 262,144 (by hand)
    assert jdll_percentile(values, 1.0) == 2621.0 and jdll_percentile(values, 99.8) == 261619.0
    assert np.percentile(values, 99.8) != 261619.0  # numpy (and bioimageio.core) interpolate
    assert jdll_percentile(values, 100.0) == n - 1  # clamped to the last element


def test_python_and_deepimagej_normalise_identically():
    """w2sr.core.normalization (training, predict) and w2sr.bundle.jdll (DeepImageJ's ScaleRange on b,y,x,c)."""
    img = cells()
    norm = Normalization(low_percentile=1.0, high_percentile=99.8)
    kwargs = {"mode": "per_sample", "axes": "xy", "min_percentile": 1.0, "max_percentile": 99.8, "eps": 1e-6}
    ours = norm.input(img)
    theirs = jdll.scale_range(img.astype(np.float32)[None, :, :, None], kwargs, "byxc")[0, :, :, 0]
    np.testing.assert_array_equal(ours, theirs)
    assert np.mean(ours < 0) == pytest.approx(0.01, abs=0.002) and np.mean(ours > 1) <= 0.002 + 1e-9


def test_deepimagej_rejects_a_kwarg_it_has_no_setter_for():
    with pytest.raises(jdll.JdllError, match="Setter for argument 'percentile_mode'.*setPercentileMode"):
        jdll.apply_processing(np.zeros((1, 4, 4, 1)), [{"name": "scale_range", "kwargs": {"percentile_mode": 1}}],
                              "byxc")


def _python(bundle: Path, image: np.ndarray) -> np.ndarray:
    # fp32: compared at the zoo tolerance (auto may keep bf16 or tf32, within the guard but not that)
    settings = Settings(bundle=str(bundle), progress=False, runtime="onnx", precision="fp32")
    return Model.load(settings).predict_slice(image, settings)


def _deepimagej(bundle: Path, image: np.ndarray) -> np.ndarray:
    import yaml

    model = jdll.JdllModel.from_rdf(yaml.safe_load((bundle / "rdf.yaml").read_text()))
    onnx = OnnxRuntime(read_bundle(bundle).onnx_path, providers=["CPUExecutionProvider"])
    return jdll.predict(model, onnx.predict, image)


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    bad = outside_tolerance(a, b)
    assert not bad.any(), f"{what}: {int(bad.sum())} px outside the zoo tolerance, max diff {np.abs(a - b).max():.3g}"


@pytest.mark.parametrize("gain,offset", [(1, 1000), (10, 0), (0.25, 37), (3, 500)])
def test_camera_offset_and_gain_do_not_change_the_output(bundle, gain, offset):
    img = cells()
    changed = (gain * img + offset).astype(np.float32)
    for run, path in ((_python, "w2sr predict"), (_deepimagej, "DeepImageJ 3.1 path")):
        _close(run(bundle, changed), run(bundle, img.astype(np.float32)), f"{path}, {gain} x img + {offset}")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_pixel_type_does_not_change_the_output(bundle, dtype):
    img = np.clip(cells() // 8, 0, 255)  # integers that fit 8 bits
    for run, path in ((_python, "w2sr predict"), (_deepimagej, "DeepImageJ 3.1 path")):
        _close(run(bundle, img.astype(dtype)), run(bundle, img.astype(np.float64)), f"{path}, {dtype}")


def test_the_fiji_macros_padding_keeps_the_percentiles(tmp_path):
    """Small images are padded with whole mirrored copies (w2sr.bundle.jdll.macro_canvas): same
    percentiles, so the network sees the image's own normalisation."""
    import yaml

    bundle = write_bundle(tmp_path / "tile32", percentiles=(1.0, 99.8), tile=32)

    model = jdll.JdllModel.from_rdf(yaml.safe_load((bundle / "rdf.yaml").read_text()))
    onnx = OnnxRuntime(read_bundle(bundle).onnx_path, providers=["CPUExecutionProvider"])
    img = cells((11, 13)).astype(np.float32)
    ch, cw = jdll.macro_canvas(model, img.shape)
    assert ch % 11 == 0 and cw % 13 == 0 and (ch, cw) != img.shape
    canvas = np.pad(img, ((0, ch - 11), (0, cw - 13)), mode="symmetric")
    for p in (1.0, 99.8):
        assert jdll_percentile(canvas, p) == jdll_percentile(img, p)
    whole_copies = jdll.predict(model, onnx.predict, canvas)[: 2 * 11, : 2 * 13]
    np.testing.assert_array_equal(jdll.predict_like_macro(model, onnx.predict, img), whole_copies)


def test_a_constant_image_is_predicted_as_deepimagej_does_with_a_warning_and_refused_by_training(
        bundle, tmp_path, capsys, caplog):
    """Issue 16, item 5: ``w2sr predict`` no longer refuses an image whose percentiles coincide; it
    writes DeepImageJ's result (``(x - lo) / (hi - lo + eps)`` = all zeros, then the network) with a
    warning naming the file. Training and evaluation (the strict default) still refuse it."""
    import logging

    flat = np.full((40, 40), 500, np.uint16)
    tifffile.imwrite(tmp_path / "flat.tif", flat)
    with caplog.at_level(logging.WARNING, logger="w2sr.predict"):
        assert cli(["predict", str(bundle), str(tmp_path / "flat.tif"), "--out", str(tmp_path / "out"),
                    "--runtime", "onnx", "--precision", "fp32"]) == 0
    assert "Traceback" not in capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(w.startswith(f"{tmp_path / 'flat.tif'}: its 1st and 99.8th percentiles are equal (500): the "
                            f"plane is (nearly) constant; its output is what DeepImageJ gives") for w in warnings)
    out = tifffile.imread(tmp_path / "out" / "flat_sr.tif")
    theirs = _deepimagej(bundle, flat)
    assert np.isfinite(theirs).all()  # JDLL divides by eps: defined, not NaN
    # DeepImageJ's numbers, not a refusal: a flat plane. The two paths differ only where the tiny
    # network's own zero padding reaches from the border (see the module docstring)
    m = 2 * RF_RADIUS
    assert np.ptp(theirs) < 1e-5
    np.testing.assert_allclose(out[m:-m, m:-m], theirs[m:-m, m:-m], rtol=0, atol=1e-6)

    # the lenient map is DeepImageJ's, flagged; the strict default (training, evaluation) refuses
    norm = Normalization()
    lenient = norm.measure(flat, strict=False)
    assert lenient.degenerate and (lenient.lo, lenient.hi) == (500.0, 500.0)
    np.testing.assert_array_equal(lenient.apply(flat), np.zeros(flat.shape, np.float32))
    assert not norm.measure(cells(), strict=False).degenerate
    with pytest.raises(NormalizationError, match="percentiles are equal"):
        norm.measure(flat)
    with pytest.raises(NormalizationError):
        norm.input(flat)
    with pytest.raises(NormalizationError):
        norm.target(flat)  # training never trains towards a blank target


def test_on_sizes_where_the_definitions_agree_core_and_jdll_pick_the_same_percentiles():
    """The zoo package's test-tensor size (export.assets.zoo_test_side): numpy's interpolated percentile
    (bioimageio.core) equals JDLL's sorted[int(N p / 100)] there, and not on a neighbouring size."""
    from w2sr.core.normalization import definitions_agree, jdll_percentiles

    rng = np.random.default_rng(0)
    p = (1.0, 99.8)
    assert definitions_agree(251 * 251, p) and not definitions_agree(250 * 250, p)
    for side, agree in ((251, True), (250, False)):
        img = rng.gamma(2.0, 50.0, (side, side)).astype(np.float32)
        same = np.allclose(np.percentile(img, p, method="linear"), jdll_percentiles(img, p), rtol=0, atol=0)
        assert same == agree, side
