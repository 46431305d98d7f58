"""The accuracy guard sees the whole test input and every block of it, and rejects the worst cases
that can be built: a bias offset that bf16 rounds away, and damage confined to a small region."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from w2sr.bundle.reader import read_bundle
from tests.fixtures.tiny_model import write_bundle
from w2sr.predict import paths as ip
from w2sr.predict.model import load_path


@pytest.fixture(autouse=True)
def own_guard_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("W2SR_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def bundle(tmp_path):
    root = write_bundle(tmp_path / "bundle")
    info = read_bundle(root)
    raw = np.random.default_rng(0).normal(100, 20, (1, 96, 96, 1)).astype(np.float32)
    ref = load_path(info, "onnx-fp32").predict(info.normalization.input(raw[0, :, :, 0])[None, :, :, None])
    np.save(root / "test_input.npy", raw)
    np.save(root / "test_output.npy", info.normalization.output(ref))
    return root


def test_a_small_badly_damaged_patch_passes_a_whole_image_psnr_but_not_the_block_check():
    want = np.random.default_rng(0).uniform(0, 1, (512, 512))
    got = want.copy()
    got[200:216, 300:316] += 0.1  # 10 % of the range over 16 x 16 pixels
    result = ip.guard_scores(got, want)
    assert result.psnr_db >= ip.GUARD_PSNR_DB  # a global PSNR alone would keep this path
    assert result.worst_block_db < ip.GUARD_BLOCK_PSNR_DB and not result.passed
    assert result.margin_db < 0 and "worst 64x64 block" in result.describe()
    clean = ip.guard_scores(want + 1e-4, want)
    assert clean.passed and clean.margin_db > 0 and clean.pixels == 512 * 512


def test_remainder_blocks_at_the_border_are_checked_too():
    want = np.random.default_rng(1).uniform(0, 1, (150, 150))  # 150 = 2 x 64 + 22
    got = want.copy()
    got[140:, 140:] += 0.2  # only in the corner beyond the last whole block
    assert ip.guard_scores(got, want).worst_block_db < ip.GUARD_BLOCK_PSNR_DB


def test_a_bias_offset_that_bf16_rounds_away_is_rejected():
    """x -> (x + 1000) - 1000 is the identity in fp32; in bf16 (8 significant bits) x + 1000 is rounded
    to a multiple of 4 and the signal is gone: the worst case of an offset carried through a network."""
    import keras

    from export.runtimes import mixed_precision_copy

    inp = keras.Input((None, None, 1))
    up = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(1000.0))(inp)
    out = keras.layers.Conv2D(1, 1, kernel_initializer="ones", bias_initializer=keras.initializers.Constant(-1000.0))(up)
    model = keras.Model(inp, out)
    x = np.random.default_rng(2).uniform(0, 1, (1, 64, 64, 1)).astype(np.float32)
    fp32 = np.asarray(model(x))[0, :, :, 0]
    bf16 = np.asarray(mixed_precision_copy(model, "bf16")(x), np.float32)[0, :, :, 0]
    assert np.allclose(fp32, x[0, :, :, 0], atol=1e-4)
    result = ip.guard_scores(bf16, fp32)
    assert result.psnr_db < 10 and not result.passed


def test_the_guard_sees_damage_at_the_border_of_the_test_input(bundle, caplog):
    """A path that is wrong only near the image border: a centre window would have passed it."""
    info = read_bundle(bundle)
    reference = load_path(info, "onnx-fp32")

    class BorderDamage:
        def predict(self, x):
            y = reference.predict(x).copy()
            y[:, :12, :, :] += 0.5 * (y.max() - y.min())
            return y

    with caplog.at_level(logging.INFO, logger="w2sr.predict.paths"):
        choice, _ = ip.choose(info, "auto", "auto",
                              lambda p: BorderDamage() if p == "openvino-bf16" else load_path(info, p),
                              flags=frozenset({"avx512_bf16"}))
    assert choice.path == "onnx-fp32" and choice.rejected[0][0] == "openvino-bf16"
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("accuracy guard for openvino-bf16")]
    assert f"over {192 * 192} output pixels" in line  # the whole 96^2 test input, 2x


def test_a_passing_path_logs_its_margin_and_the_verdict_is_cached(bundle, caplog):
    info = read_bundle(bundle)
    calls = []

    def load(path):
        calls.append(path)
        return load_path(info, "openvino-fp32" if path == "openvino-bf16" else path)

    choice, _ = ip.choose(info, "auto", "auto", load, flags=frozenset({"avx512_bf16"}))
    assert choice.path == "openvino-bf16" and choice.margin_db > 0 and choice.guard_db > ip.GUARD_PSNR_DB
    with caplog.at_level(logging.INFO, logger="w2sr.predict.paths"):
        again, _ = ip.choose(info, "auto", "auto", load, flags=frozenset({"avx512_bf16"}))
    assert again.margin_db == pytest.approx(choice.margin_db)
    assert not [r for r in caplog.records if "accuracy guard" in r.getMessage()]
