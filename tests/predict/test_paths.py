"""`w2sr predict` picks its inference path per machine (issue 8): bf16 on OpenVINO only where the CPU
computes bf16 natively, kept only when its output on the bundle's test input stays within the
accuracy guard of test_output.npy, else fp32 with one line saying why."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from w2sr.predict import paths as ip
from w2sr.core.cpu import cpu_flags, native_bf16
from w2sr.bundle.reader import read_bundle
from w2sr.core.contract import outside_tolerance
from w2sr.predict.model import load_path
from tests.fixtures.tiny_model import write_bundle
from w2sr.core.errors import UserError

NO_BF16 = frozenset({"avx2", "avx512f", "fma"})
AVX512_BF16 = NO_BF16 | {"avx512_bf16", "avx512_vnni"}
AMX = AVX512_BF16 | {"amx_bf16", "amx_int8", "amx_tile"}


@pytest.fixture(autouse=True)
def own_guard_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("W2SR_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def bundle(tmp_path) -> Path:
    """The tiny bundle with real test tensors: a random image and its ONNX fp32 output."""
    root = write_bundle(tmp_path / "bundle")
    info = read_bundle(root)
    raw = np.random.default_rng(0).normal(100, 20, (1, 96, 96, 1)).astype(np.float32)
    ref = load_path(info, "onnx-fp32").predict(info.normalization.input(raw[0, :, :, 0])[None, :, :, None])
    np.save(root / "test_input.npy", raw)
    np.save(root / "test_output.npy", info.normalization.output(ref))
    return root


@pytest.mark.parametrize("flags,have_ov,want", [
    (NO_BF16, True, ["onnx-fp32"]),
    (AVX512_BF16, True, ["openvino-bf16", "onnx-fp32"]),
    (AMX, True, ["openvino-bf16", "onnx-fp32"]),
    (AMX, False, ["onnx-fp32"]),
])
def test_auto_uses_bf16_only_where_the_cpu_has_it(flags, have_ov, want):
    paths = ip.candidates("auto", "auto", flags, have_ov)
    assert [p for p, _ in paths] == want
    if want[0] == "openvino-bf16":
        assert ("amx_bf16" if "amx_bf16" in flags else "avx512_bf16") in paths[0][1]


def test_explicit_choices_are_honoured_or_refused_in_one_line():
    assert ip.candidates("onnx", "fp32", AMX, True) == [("onnx-fp32", "asked for")]
    assert ip.candidates("auto", "fp32", AMX, True) == [("onnx-fp32", "asked for fp32")]
    assert [p for p, _ in ip.candidates("openvino", "auto", AMX, True)] == ["openvino-bf16", "openvino-fp32"]
    assert [p for p, _ in ip.candidates("openvino", "auto", NO_BF16, True)] == ["openvino-fp32"]
    assert [p for p, _ in ip.candidates("tensorflow", "auto", AMX, True)] == ["tensorflow-fp32"]
    with pytest.raises(UserError, match="bf16 runs on OpenVINO only"):
        ip.candidates("onnx", "bf16", AMX, True)
    with pytest.raises(UserError, match="OpenVINO is not installed"):
        ip.candidates("openvino", "fp32", AMX, False)
    with pytest.raises(UserError, match="no SavedModel weights"):
        ip.candidates("tensorflow", "auto", AMX, True, have_savedmodel=False)


def test_without_native_bf16_auto_stays_on_the_accurate_path(bundle, caplog):
    info = read_bundle(bundle)
    loaded = []
    choice, _ = ip.choose(info, "auto", "auto", lambda p: loaded.append(p) or load_path(info, p), flags=NO_BF16)
    assert choice.path == "onnx-fp32" and loaded == ["onnx-fp32"] and "no native bf16" in choice.reason


def test_the_guard_rejects_a_path_whose_output_is_off_and_says_so(bundle, tmp_path, caplog):
    """A deliberately broken weights file stands in for a bad bf16/int8 build of the network."""
    import onnx
    from onnx import numpy_helper

    info = read_bundle(bundle)
    model = onnx.load(info.onnx_path)
    w = next(t for t in model.graph.initializer if numpy_helper.to_array(t).ndim == 4)
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.05, w.name))
    onnx.save(model, tmp_path / "broken.onnx")

    from w2sr.bundle.runtimes import OnnxRuntime

    def load(path):
        return OnnxRuntime(tmp_path / "broken.onnx") if path == "openvino-bf16" else load_path(info, path)

    with caplog.at_level(logging.WARNING, logger="w2sr.predict.paths"):
        choice, rt = ip.choose(info, "auto", "auto", load, flags=AVX512_BF16)
    assert choice.path == "onnx-fp32" and choice.rejected[0][0] == "openvino-bf16"
    [line] = [r.getMessage() for r in caplog.records if "not using" in r.getMessage()]
    assert "below the guard (50 dB whole, 40 dB per block); falling back to onnx-fp32" in line
    assert ip.guard(info, rt.predict).psnr_db > 100  # the reference reproduces its own test output


@pytest.mark.skipif(not native_bf16(cpu_flags()), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_bf16_passes_the_guard_here_and_the_verdict_is_cached(bundle, caplog):
    info = read_bundle(bundle)
    choice, _ = ip.choose(info, "auto", "auto", lambda p: load_path(info, p))
    assert choice.path == "openvino-bf16" and ip.GUARD_PSNR_DB <= choice.guard_db < 100
    with caplog.at_level(logging.INFO, logger="w2sr.predict.paths"):
        again, _ = ip.choose(info, "auto", "auto", lambda p: load_path(info, p))
    assert again.guard_db == pytest.approx(choice.guard_db) and not [r for r in caplog.records if "accuracy guard" in r.getMessage()]


def test_fp32_paths_agree_across_runtimes_within_the_zoo_tolerance(bundle):
    info = read_bundle(bundle)
    x = info.normalization.input(np.random.default_rng(1).normal(100, 20, (70, 50)))[None, :, :, None]
    ref = load_path(info, "onnx-fp32").predict(x)
    for path in ("openvino-fp32", "tensorflow-fp32"):
        out = load_path(info, path).predict(x)
        assert not outside_tolerance(out, ref).any(), (path, np.abs(out - ref).max())
