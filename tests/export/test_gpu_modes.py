"""Parity on a GPU is strict float32 (issue 17): TensorFlow and ONNX Runtime both use TensorFloat-32
by default on Ampere and newer NVIDIA GPUs, which moves the full model's output by up to 1e-2. Every
parity row switches it off; the fast modes (TF32, bf16, fp16) are extra rows, reported with their
deviation and never counted as parity. The settings are checked here without a GPU: TensorFlow's
switch is read at the moment each call runs, ONNX Runtime's is the option the session is given."""
from __future__ import annotations

import numpy as np
import pytest

from w2sr.bundle.reader import read_bundle
from export.parity import MEASURED, SKIPPED, fast_mode_rows
from w2sr.bundle.runtimes import (MATH_MODES, STRICT_MATH, OnnxRuntime, SavedModelRuntime, cuda_provider, ort_cuda_missing, session_providers, tf_gpu_missing)
from export.runtimes import KerasRuntime, available_runtimes, fast_runtimes, make_runtime
from export.validate import ValidationReport, format_report
from w2sr.core.errors import UserError


@pytest.fixture()
def tf32_default_on():
    """TensorFlow's own default (TF32 on), restored afterwards."""
    import tensorflow as tf

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(True)
    yield
    tf.config.experimental.enable_tensor_float_32_execution(before)


def _tf32_seen_by(runtime) -> list[bool]:
    """Call the runtime once and record TensorFlow's TF32 switch at the moment its graph runs."""
    import tensorflow as tf

    seen, call = [], runtime._fn

    def spy(*args, **kwargs):
        seen.append(tf.config.experimental.tensor_float_32_execution_enabled())
        return call(*args, **kwargs)

    runtime._fn = spy
    runtime.predict(np.zeros((1, 40, 40, 1), np.float32))
    return seen


def test_every_parity_row_is_strict_fp32_and_gpu_rows_say_why_they_cannot_run_here():
    rows = available_runtimes()
    assert {r.key for r in rows} >= {"keras-gpu", "savedmodel-gpu", "onnx-cuda"}
    assert all(r.math == STRICT_MATH and r.strict for r in rows)
    for r in rows:
        if r.device == "gpu" and not r.available:
            assert r.reason == (ort_cuda_missing() if r.format == "onnx" else tf_gpu_missing()) != ""
    fast = fast_runtimes("gpu")
    assert {r.math for r in fast} == {"tf32", "bf16", "fp16"} and not any(r.strict for r in fast)


@pytest.mark.parametrize("key", ["keras-gpu", "savedmodel-gpu", "keras-cpu", "savedmodel-cpu"])
def test_tensorflow_parity_rows_run_with_tf32_switched_off(key, exported_bundle, tf32_default_on):
    import tensorflow as tf

    info = read_bundle(exported_bundle)
    rt = make_runtime(key, keras_path=exported_bundle / "generator.keras", savedmodel=info.savedmodel_zip,
                      padding=info.padding)
    assert rt.math == "fp32" and _tf32_seen_by(rt) == [False]
    assert tf.config.experimental.tensor_float_32_execution_enabled()  # the process setting is restored


@pytest.mark.parametrize("key", ["keras-gpu-tf32", "savedmodel-gpu-tf32"])
def test_the_tf32_fast_rows_switch_it_on_for_their_own_calls_only(key, exported_bundle):
    import tensorflow as tf

    info = read_bundle(exported_bundle)
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        rt = make_runtime(key, keras_path=exported_bundle / "generator.keras", savedmodel=info.savedmodel_zip)
        assert _tf32_seen_by(rt) == [True]
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(True)


def test_onnx_runtime_cuda_gets_use_tf32_0_unless_tf32_is_asked_for():
    assert cuda_provider() == ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"})
    assert cuda_provider("tf32")[1]["use_tf32"] == "1"
    assert session_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"device_id": "0", "use_tf32": "0"}), "CPUExecutionProvider"]
    with pytest.raises(UserError, match="bf16.*not available in ONNX Runtime's CUDA provider"):
        cuda_provider("bf16")


def test_the_frozen_savedmodel_and_onnx_refuse_a_dtype_they_do_not_have(exported_bundle):
    info = read_bundle(exported_bundle)
    with pytest.raises(UserError, match="'bf16' is not available in the frozen SavedModel"):
        SavedModelRuntime(info.savedmodel_zip, math="bf16")
    with pytest.raises(UserError, match="'fp16' is not available in ONNX Runtime"):
        OnnxRuntime(info.onnx_path, math="fp16")
    assert set(MATH_MODES) == {"fp32", "tf32", "bf16", "fp16"}


@pytest.mark.skipif(not ort_cuda_missing(), reason="this onnxruntime has CUDA: the refusal cannot be shown")
def test_asking_onnx_runtime_for_cuda_without_it_is_one_clear_error(exported_bundle):
    with pytest.raises(UserError, match=r"providers \['CUDAExecutionProvider'\] not available"):
        make_runtime("onnx-cuda", onnx_path=read_bundle(exported_bundle).onnx_path)


def test_mixed_precision_keeps_the_weights_and_a_float32_output(exported_bundle):
    plain = KerasRuntime(exported_bundle / "generator.keras")
    for math, policy in (("bf16", "mixed_bfloat16"), ("fp16", "mixed_float16")):
        rt = KerasRuntime(exported_bundle / "generator.keras", math=math)
        assert rt.model.layers[1].dtype_policy.name == policy and rt.model.layers[-1].dtype_policy.name == "float32"
        for a, b in zip(rt.model.get_weights(), plain.model.get_weights()):
            np.testing.assert_array_equal(a, b)


def test_fast_modes_are_measured_with_their_deviation_and_never_judged(exported_bundle):
    """On the CPU the Keras bf16/fp16 rows run the same code a GPU runs: each gets a PSNR and the
    share of pixels outside the zoo tolerance; bf16 is visibly off (so the measurement can fail)."""
    info = read_bundle(exported_bundle)
    rows = {r.math: r for r in fast_mode_rows(info, exported_bundle / "generator.keras", "cpu")}
    assert set(rows) == {"bf16", "fp16"} and all(r.status == MEASURED for r in rows.values())
    bf16, fp16 = rows["bf16"].vs_test_output, rows["fp16"].vs_test_output
    assert 30 < bf16.psnr_db < 120 and bf16.outside > 0.01 and bf16.max_abs_diff > 1e-4
    assert fp16.psnr_db > bf16.psnr_db  # 10 mantissa bits against 7

    gpu_rows = fast_mode_rows(info, exported_bundle / "generator.keras", "gpu")
    report = ValidationReport(bundle=str(exported_bundle), fast_modes=list(rows.values()) + gpu_rows)
    assert report.ok  # a fast mode's deviation is never a failure
    text = format_report(report)
    assert "never counted as parity" in text and "Keras CPU, bf16" in text and "% px outside" in text
    for r in gpu_rows:
        if r.status == SKIPPED:
            assert r.reason and r.reason in text
