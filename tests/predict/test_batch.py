"""``w2sr predict``: real files in, real TIFFs out, real onnxruntime / TensorFlow / dask cluster.

The bundle is the tiny 2x model of tests/fixtures/tiny_model.py with the rdf the exporter writes
(halo 4, DeepImageJ tile 16, weights that take any size, normalisation mean 100 / std 20 in, 50 / 10
out), so every output can be checked against ``processing + predict_whole`` computed here with
onnxruntime directly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tifffile

from w2sr.bundle.reader import read_bundle
from w2sr.core.contract import outside_tolerance
from w2sr.core.normalization import postprocess, preprocess
from w2sr.core.tiling import predict_whole
from tests.fixtures.tiny_model import RF_RADIUS, write_bundle
from w2sr.cli import main as cli
from tests.fixtures import REPO



@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return write_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def reference(bundle):
    """raw 2D image -> expected float32 output, computed without w2sr.predict."""
    import onnxruntime as ort

    info = read_bundle(bundle)
    session = ort.InferenceSession(str(info.onnx_path), providers=["CPUExecutionProvider"])

    n = info.normalization  # the fixture's fixed z-score, applied with the plain formulas

    def ref(raw: np.ndarray) -> np.ndarray:
        x = preprocess(raw, n.input_mean, n.input_std)
        y = predict_whole(lambda b: session.run(None, {"input": b})[0], x, info.valid_size_at_least)
        return postprocess(y, n.target_mean, n.target_std)
    return ref


def zoo_close(a, b) -> bool:
    return not outside_tolerance(a, b).any()


def image(shape, seed=0, integer=False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = 100 + 20 * rng.normal(size=shape)
    a[..., 10:20, 10:30] += 80  # some structure
    return np.clip(np.rint(a), 0, 255).astype(np.float32) if integer else a.astype(np.float32)


def run_cli(bundle, *args) -> int:
    return cli(["predict", str(bundle), *map(str, args), "--no-progress"])


#: the path the onnxruntime reference takes, for outputs compared with it pixel by pixel: the bundle's
#: real test tensors let the accuracy guard keep bf16 (a CPU with native bf16) or tf32 (a GPU) under
#: --precision auto, within the guard's 50 dB but not the zoo tolerance the comparisons use
FP32 = ("--runtime", "onnx", "--precision", "fp32")


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------------
def test_tif_png_npy_inputs_give_the_whole_image_result(bundle, reference, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    a = image((70, 91), 1)                    # odd sizes
    tifffile.imwrite(src / "a.tif", a)
    b = image((40, 33), 2, integer=True).astype(np.uint8)
    import imageio.v3 as iio
    iio.imwrite(src / "b.png", b)
    c = image((130, 60), 3)
    np.save(src / "c.npy", c)
    rc = run_cli(bundle, src, "--out", tmp_path / "out", "--tile", 40, *FP32)  # several tiles per image
    assert rc == 0
    for name, raw in [("a", a), ("b", b), ("c", c)]:
        out = tifffile.imread(tmp_path / "out" / f"{name}_sr.tif")
        assert out.dtype == np.float32 and out.shape == (2 * raw.shape[0], 2 * raw.shape[1])
        assert zoo_close(out, reference(raw)), name


def test_8_16_32_bit_inputs_give_the_float_result(bundle, tmp_path):
    base = image((50, 64), 4, integer=True)  # integer values 0..255, exactly representable everywhere
    src = tmp_path / "in"
    src.mkdir()
    for dtype in (np.uint8, np.uint16, np.float32):
        tifffile.imwrite(src / f"img_{np.dtype(dtype).name}.tif", base.astype(dtype))
    assert run_cli(bundle, src, "--out", tmp_path / "out") == 0
    outs = {d: tifffile.imread(tmp_path / "out" / f"img_{d}_sr.tif") for d in ("uint8", "uint16", "float32")}
    np.testing.assert_array_equal(outs["uint8"], outs["float32"])
    np.testing.assert_array_equal(outs["uint16"], outs["float32"])
    # and not the near-zero output of normalising in 8-bit arithmetic
    assert outs["uint8"].std() > 1


def test_stacks_are_predicted_slice_by_slice(bundle, reference, tmp_path):
    z = np.stack([image((40, 52), s) for s in range(3)])
    tifffile.imwrite(tmp_path / "z.tif", z, imagej=True, metadata={"axes": "ZYX", "spacing": 0.3, "unit": "um"},
                     resolution=(1 / 0.1, 1 / 0.1))
    t = z[:2].astype(np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", t, imagej=True, metadata={"axes": "TYX", "finterval": 2.5})
    np.save(tmp_path / "n.npy", z)
    assert run_cli(bundle, tmp_path / "z.tif", tmp_path / "t.tif", tmp_path / "n.npy", "--out", tmp_path / "out",
                   "--tile", 32, *FP32) == 0
    with tifffile.TiffFile(tmp_path / "out" / "z_sr.tif") as tf:
        assert tf.series[0].axes == "ZYX" and tf.series[0].shape == (3, 80, 104)
        assert tf.imagej_metadata["spacing"] == pytest.approx(0.3)  # Z step unchanged
        zout = tf.asarray()
    with tifffile.TiffFile(tmp_path / "out" / "t_sr.tif") as tf:
        assert tf.series[0].axes == "TYX" and tf.series[0].shape == (2, 80, 104)
        assert tf.imagej_metadata["finterval"] == pytest.approx(2.5)
        tout = tf.asarray()
    nout = tifffile.imread(tmp_path / "out" / "n_sr.tif")
    for i in range(3):
        assert zoo_close(zout[i], reference(z[i]))
        assert zoo_close(nout[i], reference(z[i]))
    for i in range(2):
        assert zoo_close(tout[i], reference(t[i]))
    assert not np.allclose(zout[0], zout[1])  # the slices are not one slice repeated


def _resolution(path):
    with tifffile.TiffFile(path) as tf:
        x = tf.pages[0].tags["XResolution"].value
        y = tf.pages[0].tags["YResolution"].value
        return x[0] / x[1], y[0] / y[1], (tf.imagej_metadata or {}).get("unit")


def test_pixel_size_is_halved_in_imagej_metadata(bundle, tmp_path):
    a = image((32, 40))
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "ij.tif", a, imagej=True, resolution=(1 / 0.108, 1 / 0.12), metadata={"unit": "um"})
    tifffile.imwrite(src / "cm.tif", a, resolution=(1e4 / 0.2, 1e4 / 0.2), resolutionunit="CENTIMETER")
    tifffile.imwrite(src / "ome.ome.tif", a, ome=True, metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
                                                                 "axes": "YX"})
    np.save(src / "plain.npy", a)
    assert run_cli(bundle, src, "--out", tmp_path / "out") == 0
    out = tmp_path / "out"
    rx, ry, unit = _resolution(out / "ij_sr.tif")
    assert (1 / rx, 1 / ry, unit) == (pytest.approx(0.054), pytest.approx(0.06), "um")
    rx, _, unit = _resolution(out / "cm_sr.tif")
    assert (1 / rx, unit) == (pytest.approx(0.1), "micron")
    rx, _, unit = _resolution(out / "ome.ome_sr.tif")
    assert (1 / rx, unit) == (pytest.approx(0.125), "micron")
    rx, _, unit = _resolution(out / "plain_sr.tif")
    assert (1 / rx, unit) == (pytest.approx(0.5), "pixel")  # uncalibrated: half an input pixel


def test_uint16_output_states_its_scaling(bundle, reference, tmp_path, caplog):
    a = image((48, 56), 5)
    tifffile.imwrite(tmp_path / "a.tif", a)
    with caplog.at_level(logging.INFO, logger="w2sr.predict"):
        assert run_cli(bundle, tmp_path / "a.tif", "--out", tmp_path / "out", "--format", "uint16", *FP32) == 0
    with tifffile.TiffFile(tmp_path / "out" / "a_sr.tif") as tf:
        u16 = tf.asarray()
        meta = tf.imagej_metadata
    assert u16.dtype == np.uint16 and u16.min() == 0 and u16.max() == 65535
    assert meta["cf"] == 0  # ImageJ's straight-line calibration: value = c0 + c1 * pixel
    value = meta["c0"] + meta["c1"] * u16.astype(np.float64)
    expect = reference(a)
    assert np.abs(value - expect).max() <= meta["c1"] * 0.51 + 1e-4 * np.abs(expect).max()
    assert any("uint16 scaling: value =" in r.getMessage() for r in caplog.records)


def test_resume_skips_existing_outputs_and_overwrite_replaces(bundle, tmp_path, caplog):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        tifffile.imwrite(src / f"im{i}.tif", image((32, 32), i))
    out = tmp_path / "out"
    assert run_cli(bundle, src, "--out", out) == 0
    first = sha(out / "im1_sr.tif")
    tifffile.imwrite(out / "im0_sr.tif", np.zeros((64, 64), np.float32))  # a finished output: kept
    kept = sha(out / "im0_sr.tif")
    (out / "im1_sr.tif").unlink()
    with caplog.at_level(logging.INFO, logger="w2sr.predict"):
        assert run_cli(bundle, src, "--out", out) == 0
    assert sha(out / "im0_sr.tif") == kept
    assert sha(out / "im1_sr.tif") == first
    assert "summary: 1 written, 1 skipped" in caplog.text
    # an output that is not a finished one (empty, cut short, wrong size) is predicted again
    for bad in (b"", b"II*\0 cut short", None):
        if bad is None:
            tifffile.imwrite(out / "im1_sr.tif", np.zeros((10, 10), np.float32))
        else:
            (out / "im1_sr.tif").write_bytes(bad)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="w2sr.predict"):
            assert run_cli(bundle, src, "--out", out) == 0
        assert sha(out / "im1_sr.tif") == first and "is not a complete output of" in caplog.text
    assert run_cli(bundle, src, "--out", out, "--overwrite") == 0
    assert tifffile.imread(out / "im0_sr.tif").shape == (64, 64)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_inputs_are_never_overwritten(bundle, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", image((32, 32)))
    before = sha(src / "a.tif")
    # the output folder may not be an input folder
    assert run_cli(bundle, src, "--out", src) == 2
    assert "output folder is an input folder" in capsys.readouterr().err
    # nor may it hold an input given as a file or through a glob, even with --overwrite: the next
    # run would predict its outputs again (a_sr_sr.tif) and one of them would replace an input
    out = tmp_path / "out"
    out.mkdir()
    tifffile.imwrite(out / "a_sr.tif", image((32, 32), 9))
    victim = sha(out / "a_sr.tif")
    for given in ([src / "a.tif", out / "a_sr.tif"], [str(out / "*.tif")]):
        assert run_cli(bundle, *given, "--out", out, "--overwrite") == 2
        assert "the output folder holds inputs (a_sr.tif)" in capsys.readouterr().err
    assert sha(out / "a_sr.tif") == victim and sha(src / "a.tif") == before
    assert sorted(p.name for p in out.iterdir()) == ["a_sr.tif"]


def _bad_files(d: Path) -> dict[str, str]:
    """file name -> fragment its one-line error must contain."""
    d.mkdir()
    (d / "empty.tif").write_bytes(b"")
    (d / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(64))
    (d / "notes.txt").write_text("not an image")
    (d / "fake.png").write_bytes(b"this is no png")
    tifffile.imwrite(d / "rgb.tif", np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    import imageio.v3 as iio
    iio.imwrite(d / "rgb_png.png", np.zeros((32, 32, 3), np.uint8))
    tifffile.imwrite(d / "fourd.tif", np.zeros((2, 3, 32, 32), np.float32), imagej=True,
                     metadata={"axes": "TZYX"})
    tifffile.imwrite(d / "channels.tif", np.zeros((2, 32, 32), np.float32), imagej=True,
                     metadata={"axes": "CYX"})
    nan = image((32, 32))
    nan[5, 5] = np.nan
    np.save(d / "nan.npy", nan)
    inf = image((32, 32))
    inf[1, 2] = np.inf
    tifffile.imwrite(d / "inf.tif", inf)
    np.save(d / "zero.npy", np.zeros((0, 32), np.float32))
    np.save(d / "tiny.npy", np.zeros((5, 40), np.float32))
    np.save(d / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(d / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return {
        "empty.tif": "empty file", "corrupt.tif": "not a readable TIFF", "notes.txt": "unsupported file type",
        "fake.png": "not a readable PNG", "rgb.tif": "RGB", "rgb_png.png": "RGB", "fourd.tif": "4D image",
        "channels.tif": "multi-channel", "nan.npy": "NaN or Inf", "inf.tif": "NaN or Inf",
        "zero.npy": "empty image", "tiny.npy": "too small", "strings.npy": "unsupported pixel type",
        "pickled.npy": "not a readable .npy",
    }


def test_bad_inputs_fail_one_line_each_and_the_batch_goes_on(bundle, tmp_path, caplog):
    bad = _bad_files(tmp_path / "bad")
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, image((32, 40)))
    inputs = [tmp_path / "bad" / n for n in bad] + [good, tmp_path / "missing.tif", tmp_path / "nothing*.tif"]
    with caplog.at_level(logging.INFO, logger="w2sr.predict"):
        rc = run_cli(bundle, *inputs, "--out", tmp_path / "out")
    assert rc == 1
    assert (tmp_path / "out" / "good_sr.tif").exists()  # the good file was predicted anyway
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    summary_at = errors.index(f"{len(bad) + 2} file(s) failed:")
    summary = errors[summary_at + 1:]
    for name, fragment in bad.items():
        path = str(tmp_path / "bad" / name)
        lines = [m for m in summary if path + ":" in m]
        assert len(lines) == 1, (name, summary)
        assert fragment in lines[0] and "\n" not in lines[0], lines[0]
        assert any(path in m for m in errors[:summary_at])  # also reported when it happened
    assert any("missing.tif: no such file" in m for m in summary)
    assert any("nothing*.tif: pattern matches no file" in m for m in summary)
    assert "summary: 1 written, 0 skipped (output exists), 16 failed" in caplog.text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good_sr.tif"]  # no partial outputs


def test_a_bad_bundle_is_one_error_before_any_input_is_read(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    assert run_cli(tmp_path / "b", tmp_path, "--out", tmp_path / "out") == 2
    assert "not a model bundle" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_weights_that_changed_since_export_are_refused_in_one_line(tmp_path, capsys):
    """The rdf's sha256 is checked before the weights are loaded: a damaged copy is one clear line."""
    from w2sr.bundle.reader import read_rdf

    b = write_bundle(tmp_path / "bundle")  # the exporter's rdf records every weights file's sha256
    assert read_rdf(b)["weights"]["onnx"]["sha256"] == hashlib.sha256((b / "weights.onnx").read_bytes()).hexdigest()
    tifffile.imwrite(tmp_path / "a.tif", image((40, 40), 1))
    assert run_cli(b, tmp_path / "a.tif", "--out", tmp_path / "ok") == 0  # the recorded hash matches
    with open(b / "weights.onnx", "ab") as fh:
        fh.write(b"\0")
    capsys.readouterr()
    assert run_cli(b, tmp_path / "a.tif", "--out", tmp_path / "bad") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights.onnx: sha256" in err[0] and "differs from" in err[0], err
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "bad" / "a_sr.tif").exists()


def test_tensorflow_runtime_matches_onnx(tmp_path):
    pytest.importorskip("tensorflow")
    b = write_bundle(tmp_path / "bundle")
    a = image((45, 70), 6)
    tifffile.imwrite(tmp_path / "a.tif", a)
    assert run_cli(b, tmp_path / "a.tif", "--out", tmp_path / "onnx", "--tile", 32, *FP32) == 0
    assert run_cli(b, tmp_path / "a.tif", "--out", tmp_path / "tf", "--tile", 32, "--runtime", "tensorflow",
                   "--precision", "fp32", "--threads", "1") == 0
    tf_out = tifffile.imread(tmp_path / "tf" / "a_sr.tif")
    onnx_out = tifffile.imread(tmp_path / "onnx" / "a_sr.tif")
    assert zoo_close(tf_out, onnx_out)


def test_dask_two_worker_cluster_gives_the_local_outputs(bundle, tmp_path):
    from distributed import Client, LocalCluster

    from w2sr.predict.batch import predict_files

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        tifffile.imwrite(src / f"im{i}.tif", image((40 + 8 * i, 48), i), imagej=True,
                         resolution=(10, 10), metadata={"unit": "um"})
    (src / "broken.tif").write_bytes(b"")  # a zero-length file: fails on a worker
    local = predict_files(bundle, [src], tmp_path / "local", progress=False, tile=32)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0", silence_logs=logging.ERROR) as cluster:
        results = predict_files(bundle, [src], tmp_path / "dask", scheduler=cluster.scheduler_address,
                                progress=False, tile=32)
        with Client(cluster) as client:
            loaded = client.run(lambda: len(__import__("w2sr.predict.model", fromlist=["x"])._MODEL_CACHE))
    assert [r.status for r in results] == [r.status for r in local]
    assert {r.status for r in results} == {"written", "failed"}
    assert all(r.worker for r in results if r.status != "skipped")  # ran on the cluster
    assert all(n <= 1 for n in loaded.values())  # each worker loaded the bundle at most once
    for i in range(4):
        a = tifffile.TiffFile(tmp_path / "local" / f"im{i}_sr.tif")
        b = tifffile.TiffFile(tmp_path / "dask" / f"im{i}_sr.tif")
        with a, b:
            np.testing.assert_array_equal(a.asarray(), b.asarray())
            assert a.imagej_metadata == b.imagej_metadata
            assert a.pages[0].tags["XResolution"].value == b.pages[0].tags["XResolution"].value
    failed = [r for r in results if r.status == "failed"]
    assert len(failed) == 1 and "broken.tif: empty file" in failed[0].message


MEMORY_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    from w2sr.predict.batch import predict_files
    bundle, small, big, out, mode = sys.argv[1:]
    def peak():  # MiB; VmHWM because ru_maxrss starts at the parent's (pytest's) RSS after exec
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    predict_files(bundle, [small], out, progress=False, tile=128)   # loads the runtime, warms up
    base = peak()
    x = np.load(big)
    if mode == "tiled":
        r = predict_files(bundle, [big], out, progress=False, tile=128)
        assert r[0].status == "written", r
    else:  # the model on the whole image at once, for comparison
        from w2sr.predict.model import cached_model, Settings
        from w2sr.core.normalization import preprocess
        m = cached_model(Settings(bundle))
        m.runtime.predict(preprocess(x, 100, 20)[None, :, :, None])
    print(json.dumps({"base": base, "peak": peak()}))
""")


def _peak_growth(bundle, tmp_path, mode) -> float:
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(bundle), str(tmp_path / "small.npy"),
                          str(tmp_path / "big.npy"), str(tmp_path / f"out_{mode}"), mode],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    return m["peak"] - m["base"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the peak RSS (VmHWM)")
def test_memory_is_bounded_by_the_tile_not_the_image(bundle, tmp_path):
    side = 1536
    np.save(tmp_path / "small.npy", image((64, 64)))
    np.save(tmp_path / "big.npy", image((side, side)))
    mib = side * side * 4 / 2**20          # one input-sized float32 plane: 9 MiB
    tiled = _peak_growth(bundle, tmp_path, "tiled")
    whole = _peak_growth(bundle, tmp_path, "whole")
    # tiled: input + normalised input + 4x output + tiles; whole: the network's activations on it all
    assert tiled < 12 * mib, (tiled, whole)
    assert whole > tiled + 10 * mib, (tiled, whole)  # the probe can tell the difference


def test_a_blank_plane_is_predicted_as_deepimagej_does_and_does_not_fail_the_stack(tmp_path, caplog):
    """Issue 16, item 5: a constant plane in a Z stack (its 1st and 99.8th percentiles coincide) gets
    the bundle's numbers as DeepImageJ / bioimageio.core compute them, ``(x - lo) / (hi - lo + eps)``
    = all zeros, then the network: a flat plane, with a warning naming the file and the plane. The
    other planes are exactly what they are on their own."""
    import onnxruntime as ort

    pct = write_bundle(tmp_path / "pct", percentiles=(1.0, 99.8))
    planes = [image((40, 52), 0, integer=True), np.full((40, 52), 7, np.float32),
              image((40, 52), 2, integer=True)]
    z = np.stack(planes).astype(np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", z, imagej=True, metadata={"axes": "ZYX"})
    for i in (0, 2):
        tifffile.imwrite(tmp_path / f"single{i}.tif", z[i])
    with caplog.at_level(logging.INFO, logger="w2sr.predict"):
        assert run_cli(pct, tmp_path / "stack.tif", "--out", tmp_path / "out", "--tile", 32, *FP32) == 0
    assert "summary: 1 written, 0 skipped (output exists), 0 failed" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{tmp_path / 'stack.tif'}[1]: its 1st and 99.8th percentiles are equal (7): the plane is " \
           f"(nearly) constant; its output is what DeepImageJ gives" in "\n".join(warnings)
    assert not any("[0]" in w or "[2]" in w for w in warnings)  # only the blank plane is named

    out = tifffile.imread(tmp_path / "out" / "stack_sr.tif")
    assert out.shape == (3, 80, 104) and out.dtype == np.float32
    assert run_cli(pct, tmp_path / "single0.tif", tmp_path / "single2.tif", "--out", tmp_path / "single",
                   "--tile", 32, *FP32) == 0
    for i in (0, 2):
        np.testing.assert_array_equal(out[i], tifffile.imread(tmp_path / "single" / f"single{i}_sr.tif"))
        assert np.ptp(out[i]) > 0.1  # real planes are restored, not flat

    blank = out[1]
    # flat: the tiny network zero-pads its convs (with biases), so only its receptive field's reach
    # from the border (RF_RADIUS input px = 2 * RF_RADIUS output px) differs from the flat interior
    m = 2 * RF_RADIUS
    assert np.ptp(blank[m:-m, m:-m]) < 1e-5
    info = read_bundle(pct)
    session = ort.InferenceSession(str(info.onnx_path), providers=["CPUExecutionProvider"])
    zeros = predict_whole(lambda b: session.run(None, {"input": b})[0], np.zeros((40, 52), np.float32),
                          info.valid_size_at_least)
    np.testing.assert_allclose(blank, zeros, rtol=0, atol=1e-6)  # the network on DeepImageJ's all-zero input
    assert np.abs(zeros).max() > 1e-3  # not trivially zero: the network's own response to a blank input
