"""The bundle in the runtimes DeepImageJ embeds: TF 1.15 (Python 3.7), TF 2.7 (3.9), TF 2.10.1 (3.10)
and ONNX Runtime 1.13.1 (3.10), each a real pip-installed environment from a pyenv interpreter.

The environments are cached outside the repository ($W2SR_ENGINE_CACHE or ~/.cache/w2sr/engines):
the first run builds them (about 90 s), later runs reuse them. An engine whose interpreter is
missing on a machine is skipped with that reason.
"""
from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from export.engine_envs import ENGINES, Engine, EngineUnavailable, default_cache_dir, ensure_engine_env, find_interpreter
from export.engines import check_engines, format_table
from w2sr.core.contract import ATOL, RTOL, RULE, zoo_close
from tests.fixtures import REPO

pytestmark = pytest.mark.engines

ENGINE_KEYS = list(ENGINES)
TF_KEYS = [k for k in ENGINE_KEYS if ENGINES[k].runtime == "tensorflow"]


# --------------------------------------------------------------------------------------------
# fixtures: real environments, a real tiny bundle
# --------------------------------------------------------------------------------------------

def _env_or_skip(key: str) -> Path:
    try:
        return ensure_engine_env(key)
    except EngineUnavailable as exc:
        pytest.skip(f"engine {key} unavailable here: {exc.reason}")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A real bundle of a tiny generator (nb=1, nf=8, gc=4) written by the project's exporter."""
    from tests.fixtures.engines import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("engines"))


@pytest.fixture(scope="module")
def results(bundle) -> dict[tuple[str, str], object]:
    """All four engines run once on the bundle; rows keyed by (engine, loader)."""
    for key in ENGINE_KEYS:  # build first, so the timing below is the check alone
        try:
            ensure_engine_env(key)
        except EngineUnavailable:
            pass  # shows up as a skipped row
    t0 = time.time()
    rows = check_engines(bundle)
    print(f"\ncheck_engines on the tiny bundle: {time.time() - t0:.1f} s\n{format_table(rows)}")
    return {(r.engine, r.loader): r for r in rows}


def _rows_for(results, key):
    rows = [r for (e, _), r in results.items() if e == key]
    if len(rows) == 1 and rows[0].status == "skipped":
        pytest.skip(f"engine {key}: {rows[0].reason}")
    return rows


# --------------------------------------------------------------------------------------------
# environments
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ENGINE_KEYS)
def test_environment_is_built_once_and_runs_the_pinned_runtime(key):
    env = _env_or_skip(key)
    marker = json.loads((env / ".w2sr-engine.json").read_text())
    engine = ENGINES[key]
    assert marker["runtime_version"] == engine.version
    assert marker["packages"] == list(engine.packages)
    assert env.parent == default_cache_dir()
    assert not str(env).startswith(str(REPO)), "cache must be outside the repo"
    # cached: the second call neither rebuilds nor touches the marker
    t0 = time.time()
    again = ensure_engine_env(key)
    assert again == env
    assert time.time() - t0 < 30
    assert json.loads((env / ".w2sr-engine.json").read_text())["built"] == marker["built"]
    # it is the interpreter DeepImageJ's wheels need
    assert marker["python"].startswith(engine.python + ".")


def test_missing_interpreter_is_a_skip_with_its_reason(tmp_path, bundle):
    ghost = Engine("tf9.9", "tensorflow", "9.9.0", "3.99", ("tensorflow-cpu==9.9.0",), "tensorflow")
    with pytest.raises(EngineUnavailable, match=r"no python3\.99 interpreter \(pyenv\) on this machine"):
        find_interpreter("3.99")
    with pytest.raises(EngineUnavailable, match=r"no python3\.99 interpreter"):
        ensure_engine_env(ghost, cache_dir=tmp_path)
    rows = check_engines(bundle, engines=[ghost], cache_dir=tmp_path)
    assert [(r.engine, r.status) for r in rows] == [("tf9.9", "skipped")]
    assert "no python3.99 interpreter (pyenv)" in rows[0].reason
    assert rows[0].ok  # a skip does not fail the check
    assert "SKIPPED" in format_table(rows) and "python3.99" in format_table(rows)
    assert not any(tmp_path.glob("tf9.9*")), "nothing is built for an absent interpreter"


def _small_engine(packages, version="1.17.0") -> Engine:
    # a pure-Python package keeps the build a few seconds; same code path as the real engines
    return Engine("probe", "onnxruntime", version, "3.10", tuple(packages), "six")


def test_environment_rebuilds_when_the_package_list_changes(tmp_path):
    try:
        find_interpreter("3.10")
    except EngineUnavailable as exc:
        pytest.skip(exc.reason)
    first = _small_engine(["six==1.17.0"])
    leftover = tmp_path / ".probe.building-999999"  # as a killed build leaves it
    (leftover / "bin").mkdir(parents=True)
    env = ensure_engine_env(first, cache_dir=tmp_path)
    assert not leftover.exists()
    built = json.loads((env / ".w2sr-engine.json").read_text())
    assert ensure_engine_env(first, cache_dir=tmp_path) == env
    assert json.loads((env / ".w2sr-engine.json").read_text())["built_ns"] == built["built_ns"]
    changed = _small_engine(["six==1.17.0", "wheel"])
    env2 = ensure_engine_env(changed, cache_dir=tmp_path)
    rebuilt = json.loads((env2 / ".w2sr-engine.json").read_text())
    assert env2 == env and rebuilt["built_ns"] != built["built_ns"]
    assert rebuilt["packages"] == ["six==1.17.0", "wheel"]
    assert any(line.startswith("wheel==") for line in rebuilt["freeze"])
    # forced rebuild, and no half-built folder left behind
    ensure_engine_env(changed, cache_dir=tmp_path, rebuild=True)
    assert json.loads((env / ".w2sr-engine.json").read_text())["built_ns"] != rebuilt["built_ns"]
    assert not list(tmp_path.glob(".probe.building-*"))


def test_failed_pip_install_is_a_skip_and_keeps_the_old_environment(tmp_path):
    try:
        find_interpreter("3.10")
    except EngineUnavailable as exc:
        pytest.skip(exc.reason)
    good = _small_engine(["six==1.17.0"])
    env = ensure_engine_env(good, cache_dir=tmp_path)
    before = (env / ".w2sr-engine.json").read_text()
    # a local wheel path that does not exist: pip fails without asking any index
    broken = _small_engine(["six==1.17.0", str(tmp_path / "missing-0.0-py3-none-any.whl")])
    with pytest.raises(EngineUnavailable, match=r"probe: pip install .* failed .*log: "):
        ensure_engine_env(broken, cache_dir=tmp_path)
    assert (env / ".w2sr-engine.json").read_text() == before, "the working environment was kept"
    assert not list(tmp_path.glob(".probe.building-*"))
    # the runtime must report the version the engine stands for
    wrong = _small_engine(["six==1.17.0"], version="0.0.1")
    with pytest.raises(EngineUnavailable, match=r"pip installed six 1\.17\.0, expected 0\.0\.1"):
        ensure_engine_env(wrong, cache_dir=tmp_path, rebuild=True)


# --------------------------------------------------------------------------------------------
# the bundle in each engine
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ENGINE_KEYS)
def test_bundle_loads_and_reproduces_test_output(results, key):
    rows = _rows_for(results, key)
    required = [r for r in rows if r.required]
    assert required, rows
    for r in required:
        assert r.runtime_version == ENGINES[key].version
        assert r.loaded, r.reason
        assert r.status == "passed", r.reason
        assert r.within_tolerance and r.max_abs_diff is not None
    expected_loaders = {"tf1.15": {"v1_session"}, "tf2.7": {"v1_session", "tf2_load"},
                        "tf2.10": {"v1_session", "tf2_load"}, "ort1.13": {"ort_session"}}[key]
    deepimagej = {"tf1.15": "v1_session", "tf2.7": "v1_session", "tf2.10": "v1_session",
                  "ort1.13": "ort_session"}[key] + "+deepimagej"
    assert {r.loader for r in rows} == expected_loaders | {deepimagej}


@pytest.mark.parametrize("key", ENGINE_KEYS)
def test_deepimagej_tiles_reproduce_test_output_in_each_engine(results, key):
    """DeepImageJ 3.1's path (JDLL 0.6.1's tiles, mirror-padded by the halo, one per call, its
    stitching) in the engine's own runtime equals test_output.npy on every pixel."""
    rows = {r.loader: r for r in _rows_for(results, key)}
    r = rows[("ort_session" if key == "ort1.13" else "v1_session") + "+deepimagej"]
    assert r.required and r.status == "passed" and r.within_tolerance, r.reason
    assert "4 tiles of 128 x 128" in r.reason
    assert r.peak_rss_mb and r.peak_rss_mb > 50


@pytest.mark.parametrize("key", ["tf2.7", "tf2.10"])
def test_frozen_bundle_also_loads_with_the_tf2_loader(results, key):
    rows = {r.loader: r for r in _rows_for(results, key)}
    r = rows["tf2_load"]
    assert not r.required
    assert r.status == "passed", r.reason


def _copy_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _rdf_weights(bundle: Path) -> dict:
    import yaml

    return yaml.safe_load((bundle / "rdf.yaml").read_text())["weights"]


def _record_new_weights(bundle: Path) -> None:
    """Write the weight files' current sha256 into rdf.yaml, as an export of those weights would
    (otherwise the hash check refuses them before any engine loads them)."""
    from w2sr.bundle.reader import sha256_file
    from tests.fixtures.rdf_edit import edit_rdf

    def record(doc):
        for entry in doc["weights"].values():
            entry["sha256"] = sha256_file(bundle / entry["source"])

    edit_rdf(bundle, record)


def test_unfrozen_keras_export_fails_in_the_old_tensorflows(bundle, tmp_path):
    """The same generator exported by Keras (variables, not a frozen graph) does not load in TF 1.15
    or 2.7 - the default DeepImageJ engines - though it loads in 2.10: the check can fail."""
    from tests.fixtures.engines import write_unfrozen_savedmodel_zip

    for key in ("tf1.15", "tf2.7", "tf2.10"):
        _env_or_skip(key)
    bad = _copy_bundle(bundle, tmp_path / "unfrozen")
    zip_path = bad / _rdf_weights(bad)["tensorflow_saved_model_bundle"]["source"]
    write_unfrozen_savedmodel_zip(bundle, zip_path)
    _record_new_weights(bad)
    rows = {(r.engine, r.loader): r for r in check_engines(bad, engines=["tf1.15", "tf2.7", "tf2.10"])}
    print(format_table(list(rows.values())))
    for key in ("tf1.15", "tf2.7"):
        r = rows[(key, "v1_session")]
        assert r.status == "failed" and r.loaded is False and not r.ok, r
        assert "load failed" in r.reason
    assert "DisableCopyOnRead" in rows[("tf2.7", "v1_session")].reason
    assert "debug_name" in rows[("tf1.15", "v1_session")].reason
    # TF 2.10.1 reads it (and reproduces the output): the failure above is the old runtimes', not the file's
    assert rows[("tf2.10", "v1_session")].status == "passed", rows[("tf2.10", "v1_session")].reason


def test_changed_test_output_is_caught(bundle, tmp_path):
    _env_or_skip("ort1.13")
    bad = _copy_bundle(bundle, tmp_path / "tampered")
    out = np.load(bad / "test_output.npy")
    delta = 2 * (ATOL + RTOL * abs(float(out[0, 3, 5, 0])))  # twice the zoo tolerance at that pixel
    out[0, 3, 5, 0] += delta
    np.save(bad / "test_output.npy", out)
    (row,) = check_engines(bad, engines=["ort1.13"], deepimagej=False)
    assert row.loaded and row.status == "failed" and row.within_tolerance is False
    assert "1 of" in row.reason and "pixels outside" in row.reason
    assert abs(row.max_abs_diff - delta) < 5e-5  # the engine itself matches to ~1e-6


def test_weights_changed_since_export_fail_before_loading(bundle, tmp_path):
    bad = _copy_bundle(bundle, tmp_path / "damaged")
    with open(bad / "weights.onnx", "ab") as fh:
        fh.write(b"\0")
    rows = check_engines(bad, engines=["ort1.13"])
    assert [(r.engine, r.loader, r.status) for r in rows] == [("ort1.13", "-", "failed")]
    assert "sha256" in rows[0].reason and "differs from" in rows[0].reason


def test_savedmodel_inside_a_subfolder_of_the_zip_fails(bundle, tmp_path):
    """DeepImageJ loads the zip's root as the SavedModel: a zip holding model/saved_model.pb fails."""
    _env_or_skip("tf2.10")
    bad = _copy_bundle(bundle, tmp_path / "nested")
    zip_path = bad / _rdf_weights(bad)["tensorflow_saved_model_bundle"]["source"]
    with zipfile.ZipFile(bundle / zip_path.name) as src, zipfile.ZipFile(zip_path, "w") as dst:
        for item in src.infolist():
            dst.writestr("model/" + item.filename, src.read(item.filename))
    _record_new_weights(bad)
    rows = check_engines(bad, engines=["tf2.10"])
    v1 = next(r for r in rows if r.loader == "v1_session")
    assert v1.status == "failed" and v1.loaded is False
    assert "zip root holds ['model'], no saved_model.pb" in v1.reason


def test_zipped_deepimagej_package_is_checked_as_shipped(bundle):
    """The zip a Fiji user installs: unpacked, its rdf read, the SavedModel run in TF 1.15 (declared)."""
    _env_or_skip("tf1.15")
    (package,) = sorted((bundle / "packages").glob("*_deepimagej.zip"))
    rows = check_engines(package, engines=["tf1.15", "ort1.13"])
    assert [(r.engine, r.loader, r.status) for r in rows] == [
        ("tf1.15", "v1_session", "passed"), ("tf1.15", "v1_session+deepimagej", "passed"),
        ("ort1.13", "ort_session", "passed"), ("ort1.13", "ort_session+deepimagej", "passed")], format_table(rows)


def test_zoo_close_is_the_zoo_rule():
    b = np.array([0.0, 10.0, -100.0], np.float32)
    ok = b + np.array([1.5e-4, 1.5e-4 + 1e-3, -(1.5e-4 + 1e-2)], np.float64) * 0.999
    assert zoo_close(ok, b)[1]
    assert not zoo_close(b + np.array([0, 0, 0.0102]), b)[1]
    assert zoo_close(np.array([np.nan, 0, 0]), np.zeros(3)) == (float("inf"), False, 1)
    assert RULE == f"|a-b| <= {ATOL:.1e} + {RTOL:.0e}|b|".replace("e-04", "e-4")


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def test_cli_check_engines(bundle, tmp_path, capsys):
    from w2sr.cli import main

    _env_or_skip("ort1.13")
    report = tmp_path / "engines.json"
    assert main(["check-engines", str(bundle), "--engines", "ort1.13", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "ort1.13" in out and "PASSED" in out and "reproduce the test output" in out
    rows = json.loads(report.read_text())
    assert [(r["engine"], r["loader"], r["status"]) for r in rows] == [
        ("ort1.13", "ort_session", "passed"), ("ort1.13", "ort_session+deepimagej", "passed")]
    assert rows[1]["peak_rss_mb"] > 0

    bad = _copy_bundle(bundle, tmp_path / "tampered")
    np.save(bad / "test_output.npy", np.load(bad / "test_output.npy") + 1.0)
    assert main(["check-engines", str(bad), "--engines", "ort1.13"]) == 1
    assert "FAILED in ort1.13/ort_session" in capsys.readouterr().out

    assert main(["check-engines", str(bundle), "--engines", "tf3.0"]) == 2
    assert "unknown ['tf3.0']" in capsys.readouterr().err


def test_cli_help_names_the_engines(capsys):
    from w2sr.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["check-engines", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("tf1.15,tf2.7,tf2.10,ort1.13", "--cache", "--rebuild", "1.5e-4", "SKIPPED", "serving_default"):
        assert word in text, word


@pytest.mark.parametrize("key", ["tf1.15", "ort1.13"])
def test_an_engine_job_times_each_call_and_profiles_by_operator(bundle, tmp_path, key):
    """What bench_deepimagej reads: every call's seconds, and seconds by operator type that add up
    to about one call (ORT's own profiler; TF's traced run)."""
    from export.engines import read_engine_bundle, run_engine_job

    env = _env_or_skip(key)
    engine, b = ENGINES[key], read_engine_bundle(bundle)
    x = b.info.normalization.input(np.load(b.info.test_input)[0, :, :, 0])[None, :, :, None]
    np.save(tmp_path / "x.npy", x)
    job = {"input_npy": str(tmp_path / "x.npy"), "out_dir": str(tmp_path), "per_sample": True, "repeats": 3,
           "profile": True, "input_key": b.input_key, "output_key": b.output_key, "tf2_loader": False,
           "threads": None}
    job["savedmodel_zip" if engine.runtime == "tensorflow" else "onnx"] = str(
        (b.info.savedmodel_zip if engine.runtime == "tensorflow" else b.info.onnx_path).resolve())
    res, _ = run_engine_job(engine, env, job, tmp_path)
    entry = next(iter(res["loaders"].values()))
    assert entry["ran"] and len(entry["run_times_s"]) == 3 and entry["run_s"] == entry["run_times_s"][0]
    prof = entry["profile_s"]
    conv = "Conv" if engine.runtime == "onnxruntime" else next(op for op in prof if "Conv2D" in op)
    assert prof[conv] > 0 and sum(prof.values()) < 20 * max(entry["run_times_s"])
