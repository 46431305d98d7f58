"""validate_bundle on the exported tiny bundle: parity matrix, odd sizes / bit depths, hashes, and
that each check fails when the bundle is broken (real runtimes, real bioimageio test)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest



@pytest.fixture(scope="module")
def report(exported_bundle):
    from export.validate import validate_bundle

    # bioimageio test was run (and had to pass) during the export; here the rest of the checks
    return validate_bundle(exported_bundle, bioimageio=False, sizes=((333, 517), (61, 40)))


def test_parity_matrix_is_green(report):
    from export.runtimes import available_runtimes

    rows = {r.key: r for r in report.parity}
    for key in ("keras-cpu", "savedmodel-cpu", "onnx-cpu", "savedmodel-tf1-session"):
        assert rows[key].status == "passed", (key, rows[key])
        assert rows[key].vs_test_output.ok is True
    for key in ("savedmodel-cpu", "onnx-cpu", "savedmodel-tf1-session"):
        assert rows[key].vs_keras.ok is True and rows[key].vs_keras.max_abs_diff < 1e-2
    for key in ("keras-cpu", "savedmodel-cpu", "onnx-cpu"):
        assert rows[key].tiled_vs_whole.ok is True
        assert "tiles" in rows[key].reason and not rows[key].reason.startswith("1 tiles")
    # GPU rows: present, and skipped with a reason exactly when this machine cannot run them
    for r in available_runtimes():
        if r.device == "gpu":
            assert rows[r.key].status == ("skipped" if not r.available else "passed")
            if not r.available:
                assert rows[r.key].reason
    assert report.ok, report.failures


def test_odd_sizes_and_bit_depths_match_keras(report):
    seen = {(s.shape, s.dtype, s.runtime) for s in report.sizes}
    for dtype in ("uint8", "uint16", "float32"):
        assert ((333, 517), dtype, "onnx") in seen
    assert ((333, 517), "float32", "savedmodel") in seen
    assert ((61, 40), "uint16", "onnx") in seen
    assert ((333, 517), "float32", "deepimagej-3.1 (onnx, Fiji macro)") in seen
    for s in report.sizes:
        assert s.status == "passed", s
        assert s.reference == "keras"
        if s.runtime.startswith("deepimagej"):
            # DeepImageJ's tiles are the rdf's fixed size; the Fiji macro pads small sides by whole
            # mirrored copies (up to at least tile - 2 * halo)
            assert all(c == n or (c % n == 0 and c > n) for c, n in zip(s.canvas, s.shape)), s
        else:
            assert s.tiles > 1 or s.shape == (61, 40)
            assert s.canvas == s.shape  # the weights take any size: no padding


def test_files_and_packages_checked(report):
    assert report.files and all(f["status"] == "passed" for f in report.files)
    names = {p["package"]: p["status"] for p in report.packages}
    assert names == {"w2sr-tiny-test_deepimagej.zip": "passed", "w2sr-tiny-test_zoo-0.5.zip": "passed"}


def test_report_written_as_markdown_and_json(report, tmp_path):
    from export.validate import write_report

    md, js = write_report(report, tmp_path)
    text = md.read_text()
    assert "Parity matrix" in text and "ONNX Runtime CUDA" in text and "PASSED" in text
    data = json.loads(js.read_text())
    assert data["ok"] is True and data["tolerance"]["atol"] == 1.5e-4


def test_validation_fails_for_a_tampered_bundle(exported_bundle, tmp_path):
    """Changed test output: parity against it fails and its listed sha256 no longer matches."""
    from export.validate import validate_bundle

    bad = shutil.copytree(exported_bundle, tmp_path / "bad")
    y = np.load(bad / "test_output.npy")
    y[0, 5, 7, 0] += 1.0
    np.save(bad / "test_output.npy", y)
    rep = validate_bundle(bad, bioimageio=False, sizes=(), packages=False)
    assert not rep.ok
    rows = {r.key: r for r in rep.parity}
    assert rows["onnx-cpu"].status == "failed" and rows["onnx-cpu"].vs_test_output.n_bad == 1
    assert {f["file"]: f["status"] for f in rep.files}["test_output.npy"] == "sha256 mismatch"
    assert any("test_output.npy" in f for f in rep.failures)


def test_bioimageio_test_detects_a_wrong_test_output(exported_bundle, tmp_path):
    """The bioimageio check can fail: same bundle, test output off by 1 % -> failed for both formats."""
    from w2sr.bundle.reader import sha256_file
    from export.validate import RDF04_TEST_FORMAT, run_bioimageio_test
    from tests.fixtures.rdf_edit import edit_rdf

    bad = shutil.copytree(exported_bundle, tmp_path / "bad", ignore=shutil.ignore_patterns("packages", "generator.keras"))
    y = np.load(bad / "test_output.npy")
    np.save(bad / "test_output.npy", (y * 1.01).astype(np.float32))
    edit_rdf(bad, lambda doc: doc["config"]["w2sr"]["files"].update(
        {"test_output.npy": sha256_file(bad / "test_output.npy")}))
    rows = run_bioimageio_test(bad / "rdf.yaml", format_version=RDF04_TEST_FORMAT)
    status = {r["weight_format"]: r["status"] for r in rows}
    assert status.get("onnx") == "failed" and status.get("tensorflow_saved_model_bundle") == "failed", rows


def test_available_runtimes_reports_gpu_rows_with_reasons():
    import onnxruntime as ort

    from export.runtimes import available_runtimes

    rows = {r.key: r for r in available_runtimes()}
    assert {"keras-cpu", "savedmodel-cpu", "onnx-cpu", "keras-gpu", "savedmodel-gpu", "onnx-cuda"} <= set(rows)
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert rows["onnx-cuda"].available is cuda
    if not cuda:
        assert "CUDAExecutionProvider" in rows["onnx-cuda"].reason


def test_runtimes_agree_on_a_batch_of_odd_tiles(exported_bundle):
    from w2sr.bundle.reader import read_bundle
    from w2sr.bundle.runtimes import OnnxRuntime, SavedModelRuntime
    from export.runtimes import KerasRuntime

    info = read_bundle(exported_bundle)
    x = np.random.default_rng(3).standard_normal((2, 27, 35, 1)).astype(np.float32)
    k = KerasRuntime(exported_bundle / "generator.keras", padding=info.padding).predict(x)
    s = SavedModelRuntime(info.savedmodel_zip).predict(x)
    o = OnnxRuntime(info.onnx_path, threads=1).predict(x)
    assert k.shape == s.shape == o.shape == (2, 54, 70, 1)
    np.testing.assert_allclose(s, k, atol=1e-5)
    np.testing.assert_allclose(o, k, atol=1e-4)
    with pytest.raises(ValueError, match=r"\(B, H, W, 1\)"):
        OnnxRuntime(info.onnx_path).predict(x[..., 0])


@pytest.mark.engines
@pytest.mark.parametrize("engine", ["tf1.15", "ort1.13"])
def test_old_runtime_rows_are_included(exported_bundle, engine):
    """The hook into export.engines: DeepImageJ's TF 1.15 / ONNX Runtime 1.13.1 load the bundle."""
    from export import engine_envs as engines
    from export.validate import validate_bundle

    env = engines.default_cache_dir() / engine
    if not (env / engines.MARKER).is_file():
        pytest.skip(f"engine environment {engine} not built in {env.parent} (run `w2sr check-engines` once)")
    rep = validate_bundle(exported_bundle, bioimageio=False, sizes=(), packages=False, engines=[engine])
    assert rep.engines and all(e["engine"] == engine for e in rep.engines)
    assert all(e["status"] == "passed" for e in rep.engines if e.get("required", True)), rep.engines
    assert rep.ok, rep.failures
