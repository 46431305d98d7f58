"""w2sr.core.tiling: tiled prediction equals whole-image prediction once the halo covers the model's
receptive field, with a real ONNX model run by onnxruntime (tests/fixtures/tiny_model.py)."""
from __future__ import annotations

import numpy as np
import pytest

from w2sr.core.contract import outside_tolerance
from w2sr.core.tiling import (balanced_tile, canvas_shape, count_tiles, predict_tiled, predict_whole,
                           mirror_indices, tile_starts)
from tests.fixtures.tiny_model import RF_RADIUS, write_tiny_onnx

MIN, STEP = 16, 8


def valid(n: int) -> int:
    """Sizes min + k*step, like BundleInfo.valid_size_at_least."""
    return MIN if n <= MIN else MIN + -(-(n - MIN) // STEP) * STEP


def zoo_close(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ~outside_tolerance(a, b)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import onnxruntime as ort

    path = write_tiny_onnx(tmp_path_factory.mktemp("tiny") / "tiny.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def fn(x):
        return session.run(None, {"input": x})[0]
    return fn


class Recorder:
    """Wraps the real model and remembers the batch shapes it was called with."""

    def __init__(self, fn):
        self.fn, self.shapes = fn, []

    def __call__(self, x):
        assert x.dtype == np.float32 and x.ndim == 4 and x.shape[-1] == 1
        self.shapes.append(x.shape)
        return self.fn(x)


@pytest.mark.parametrize("shape", [(333, 517), (97, 131), (64, 200), (201, 17)])
@pytest.mark.parametrize("batch", [1, 3])
def test_tiled_equals_whole_when_halo_covers_receptive_field(model, shape, batch):
    img = np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)
    whole = predict_whole(model, img, valid)
    rec = Recorder(model)
    tiled = predict_tiled(rec, img, tile=48, halo=RF_RADIUS, valid_size=valid, batch=batch)
    assert tiled.shape == whole.shape == (2 * shape[0], 2 * shape[1])
    assert tiled.dtype == np.float32
    assert zoo_close(tiled, whole).all(), np.abs(tiled - whole).max()
    assert len(rec.shapes) > 1 or max(shape) <= 48  # it really tiled


def test_too_small_halo_breaks_parity_at_the_seams(model):
    img = np.random.default_rng(3).normal(size=(333, 517)).astype(np.float32)
    whole = predict_whole(model, img, valid)
    tiled = predict_tiled(model, img, tile=48, halo=1, valid_size=valid)
    bad = ~zoo_close(tiled, whole)
    assert bad.sum() > 100
    # the damage sits near tile seams, not everywhere: most pixels still agree
    assert bad.mean() < 0.5


def test_model_never_sees_more_than_one_tile_batch_and_only_valid_sizes(model):
    img = np.random.default_rng(4).normal(size=(300, 250)).astype(np.float32)
    rec = Recorder(model)
    predict_tiled(rec, img, tile=50, halo=RF_RADIUS, valid_size=valid, batch=2)
    n_tiles = count_tiles(img.shape, 50, RF_RADIUS, valid)
    assert len(rec.shapes) == -(-n_tiles // 2)
    for b, h, w, _ in rec.shapes:
        assert b <= 2
        assert (h, w) == (valid(50), valid(50)) == (56, 56)


def test_balanced_tiles_need_the_same_calls_and_less_compute(model):
    for shape in [(200, 200), (333, 517), (97, 700), (40, 40)]:
        th, tw = balanced_tile(shape, 96, RF_RADIUS, valid)
        assert th <= valid(96) and tw <= valid(96)
        assert valid(th) == th and valid(tw) == tw  # sizes the model accepts
        assert count_tiles(shape, (th, tw), RF_RADIUS, valid) == count_tiles(shape, 96, RF_RADIUS, valid)
    # 200 px with 96 px tiles needs 3 per axis; 3 balanced tiles of 72 px cover it as well
    assert balanced_tile((200, 200), 96, RF_RADIUS, valid) == (72, 72)  # 3 x (72 - 2*4) + 2*4 = 200
    img = np.random.default_rng(8).normal(size=(333, 517)).astype(np.float32)
    tiles = balanced_tile(img.shape, 96, RF_RADIUS, valid)
    assert zoo_close(predict_tiled(model, img, tiles, RF_RADIUS, valid_size=valid), predict_whole(model, img, valid)).all()


def test_image_smaller_than_min_size_is_mirrored_up(model):
    img = np.random.default_rng(5).normal(size=(10, 13)).astype(np.float32)
    rec = Recorder(model)
    out = predict_tiled(rec, img, tile=48, halo=RF_RADIUS, valid_size=valid)
    assert out.shape == (20, 26)
    assert rec.shapes == [(1, 16, 16, 1)]
    np.testing.assert_array_equal(out, predict_whole(model, img, valid))


def test_one_tile_is_exactly_the_whole_image(model):
    img = np.random.default_rng(6).normal(size=(40, 45)).astype(np.float32)
    np.testing.assert_array_equal(predict_tiled(model, img, tile=512, halo=RF_RADIUS, valid_size=valid),
                                  predict_whole(model, img, valid))


def test_whole_pads_symmetrically_and_crops(model):
    """The canvas repeats the edge pixel (numpy 'symmetric'), as the exported graph and DeepImageJ do."""
    img = np.random.default_rng(7).normal(size=(21, 30)).astype(np.float32)
    assert canvas_shape(img.shape, valid) == (24, 32)
    padded = np.pad(img, ((0, 3), (0, 2)), mode="symmetric")
    expect = model(padded[None, :, :, None])[0, :42, :60, 0]
    np.testing.assert_array_equal(predict_whole(model, img, valid), expect)


@pytest.mark.parametrize("n_out,n", [(10, 4), (37, 5), (5, 1), (64, 64), (100, 3)])
def test_mirror_indices_match_numpy_symmetric(n_out, n):
    a = np.arange(n)
    np.testing.assert_array_equal(a[mirror_indices(n_out, n)], np.pad(a, (0, n_out - n), mode="symmetric"))


def test_tile_starts_cover_with_enough_overlap():
    for length in range(16, 400, 7):
        for tile in (16, 24, 40, 64, 128):
            for halo in (0, 3, 7):
                if tile <= 2 * halo:
                    continue
                starts = tile_starts(length, tile, halo)
                assert starts[0] == 0
                if tile >= length:
                    assert starts == [0]
                    continue
                assert starts[-1] == length - tile
                steps = np.diff(starts)
                assert (steps > 0).all()
                assert (tile - steps >= 2 * halo).all(), (length, tile, halo, starts)


def test_bad_arguments_raise():
    img = np.zeros((64, 64), np.float32)

    def double(x):
        return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)
    with pytest.raises(ValueError, match="2 \\* halo"):
        predict_tiled(double, img, tile=16, halo=8)
    with pytest.raises(ValueError, match="2D"):
        predict_tiled(double, np.zeros((2, 8, 8), np.float32), tile=16, halo=2)
    with pytest.raises(ValueError, match="expected"):
        predict_tiled(lambda x: x, img, tile=32, halo=2)  # a model that does not upscale
    # a plain nearest-neighbour upscaler is tiled exactly, whatever the halo
    np.testing.assert_array_equal(predict_tiled(double, img + np.arange(64), tile=20, halo=0),
                                  double((img + np.arange(64))[None, :, :, None])[0, :, :, 0])
