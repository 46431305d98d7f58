"""`w2sr predict --device auto|cpu|gpu` (issue 17): a GPU is used where a GPU runtime works
(onnxruntime-gpu, a CUDA build of TensorFlow), refused in one line where it was asked for and none
does, guarded like every fast CPU path, and given tiles sized to its free memory.

This machine has no GPU: which runtimes "work" is passed in, and the GPU paths' runtimes are stood in
for by CPU ones in the guard tests (strict fp32 on the H200 matched ONNX Runtime on the CPU within
9.5e-7 on the demo model, docs/gpu.md)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from w2sr.bundle.reader import read_bundle
from tests.fixtures.tiny_model import write_bundle
from w2sr.cli import main as cli
from w2sr.core import gpu as g
from w2sr.core.errors import UserError
from w2sr.predict import paths as ip
from w2sr.predict.model import load_path, tile_for

NO_GPU = {"onnx": "onnxruntime 1.32.0 here has no CUDAExecutionProvider", "tensorflow": "a CPU-only build"}
ORT_GPU = {"onnx": "", "tensorflow": "a CPU-only build"}
TF_GPU = {"onnx": "no CUDAExecutionProvider", "tensorflow": ""}
NO_BF16 = frozenset({"avx2", "fma"})


@pytest.fixture(autouse=True)
def own_guard_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("W2SR_CACHE", str(tmp_path / "cache"))


@pytest.mark.parametrize("device,runtime,precision,gpu,want", [
    ("auto", "auto", "auto", NO_GPU, "cpu"),
    ("auto", "auto", "auto", ORT_GPU, "gpu"),
    ("auto", "auto", "auto", TF_GPU, "gpu"),
    ("auto", "onnx", "auto", TF_GPU, "cpu"),         # the runtime asked for has no GPU here
    ("auto", "openvino", "auto", ORT_GPU, "cpu"),    # OpenVINO runs on the CPU here
    ("auto", "auto", "bf16", ORT_GPU, "cpu"),        # bf16 is a CPU path
    ("cpu", "auto", "auto", ORT_GPU, "cpu"),
    ("gpu", "tensorflow", "fp32", TF_GPU, "gpu"),
])
def test_device_choice(device, runtime, precision, gpu, want):
    assert ip.resolve_device(device, runtime, precision, gpu) == want


@pytest.mark.parametrize("device,runtime,precision,gpu,message", [
    ("gpu", "auto", "auto", NO_GPU, "--device gpu: no GPU runtime here: onnx: onnxruntime 1.32.0 here has no "
                                    "CUDAExecutionProvider; tensorflow: a CPU-only build"),
    ("gpu", "onnx", "auto", TF_GPU, "--device gpu: no GPU runtime here: onnx: no CUDAExecutionProvider"),
    ("gpu", "openvino", "auto", ORT_GPU, "--runtime openvino runs on the CPU here"),
    ("gpu", "auto", "bf16", ORT_GPU, "--precision bf16 is a CPU path"),
    ("cpu", "auto", "tf32", ORT_GPU, "--precision tf32 is a GPU mode"),
    ("auto", "auto", "tf32", NO_GPU, "--precision tf32 needs an NVIDIA GPU"),
    ("tpu", "auto", "auto", ORT_GPU, "--device tpu: choose from auto, cpu, gpu"),
])
def test_device_refusals_are_one_line(device, runtime, precision, gpu, message):
    with pytest.raises(UserError) as err:
        ip.resolve_device(device, runtime, precision, gpu)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_gpu_paths_tf32_first_then_strict_fp32_and_the_cpu_reference_only_under_auto():
    def names(*args, **kw):
        return [p for p, _ in ip.candidates(*args, **kw)]

    assert names("auto", "auto", NO_BF16, True, True, "gpu", ORT_GPU) == ["onnx-cuda-tf32", "onnx-cuda-fp32", "onnx-fp32"]
    assert names("auto", "auto", NO_BF16, True, True, "gpu", ORT_GPU, cpu_fallback=False) == [
        "onnx-cuda-tf32", "onnx-cuda-fp32"]
    assert names("auto", "fp32", NO_BF16, True, True, "gpu", TF_GPU, cpu_fallback=False) == ["tensorflow-gpu-fp32"]
    assert names("tensorflow", "tf32", NO_BF16, True, True, "gpu", TF_GPU) == ["tensorflow-gpu-tf32", "onnx-fp32"]
    with pytest.raises(UserError, match="no GPU runtime can run this bundle"):
        ip.candidates("auto", "auto", NO_BF16, True, False, "gpu", TF_GPU)  # no SavedModel in the bundle


@pytest.fixture()
def bundle(tmp_path) -> Path:
    root = write_bundle(tmp_path / "bundle")
    info = read_bundle(root)
    raw = np.random.default_rng(0).normal(100, 20, (1, 96, 96, 1)).astype(np.float32)
    ref = load_path(info, "onnx-fp32").predict(info.normalization.input(raw[0, :, :, 0])[None, :, :, None])
    np.save(root / "test_input.npy", raw)
    np.save(root / "test_output.npy", info.normalization.output(ref))
    return root


class Offset:
    """A runtime whose output is shifted: what a reduced-precision GPU mode that loses a bias does."""

    def __init__(self, runtime, offset: float):
        self.runtime, self.offset = runtime, offset

    def predict(self, x):
        return self.runtime.predict(x) + self.offset


def test_the_guard_checks_gpu_paths_and_falls_back_to_strict_fp32(bundle, caplog):
    info = read_bundle(bundle)
    cpu = load_path(info, "onnx-fp32")
    standins = {"onnx-cuda-tf32": Offset(cpu, 0.05), "onnx-cuda-fp32": cpu}
    loaded = []

    def load(path):
        loaded.append(path)
        return standins.get(path) or load_path(info, path)

    with caplog.at_level(logging.WARNING, logger="w2sr.predict.paths"):
        choice, rt = ip.choose(info, "auto", "auto", load, flags=NO_BF16, device="auto", gpu=ORT_GPU)
    assert loaded == ["onnx-cuda-tf32", "onnx-cuda-fp32"] and choice.path == "onnx-cuda-fp32"
    assert choice.rejected[0][0] == "onnx-cuda-tf32" and choice.guard_db > 100 and rt is cpu
    assert any("not using onnx-cuda-tf32" in r.getMessage() for r in caplog.records)


def test_a_gpu_path_failing_the_guard_falls_back_to_the_cpu_under_auto_only(bundle):
    info = read_bundle(bundle)
    cpu = load_path(info, "onnx-fp32")
    broken = {"onnx-cuda-tf32": Offset(cpu, 0.05), "onnx-cuda-fp32": Offset(cpu, 0.05)}

    def load(path):
        return broken.get(path) or load_path(info, path)

    choice, _ = ip.choose(info, "auto", "auto", load, flags=NO_BF16, device="auto", gpu=ORT_GPU)
    assert choice.path == "onnx-fp32" and [p for p, _ in choice.rejected] == ["onnx-cuda-tf32", "onnx-cuda-fp32"]
    # asked for the GPU: kept with a warning (as for an explicit CPU path), never silently moved to the CPU
    choice, _ = ip.choose(info, "auto", "fp32", load, flags=NO_BF16, device="gpu", gpu=ORT_GPU)
    assert choice.path == "onnx-cuda-fp32" and choice.guard_db < ip.GUARD_PSNR_DB


def test_predict_device_gpu_here_is_refused_in_one_line(bundle, tmp_path, capsys):
    import tifffile

    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.random.default_rng(0).normal(100, 20, (40, 40)).astype(np.float32))
    if not all(ip.gpu_runtimes().values()):
        pytest.skip("this machine has a GPU runtime: the refusal cannot be shown")
    assert cli(["predict", str(bundle), str(src), "--out", str(tmp_path / "out"), "--device", "gpu"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: --device gpu: no GPU runtime here: onnx: onnxruntime")
    assert "tensorflow: TensorFlow" in err[0] and not (tmp_path / "out").exists()


def test_nvidia_smi_rows_are_read_and_tiles_fit_half_the_free_memory():
    rows = g.parse_nvidia_smi("0, NVIDIA H200, 143771, 142800\n1, NVIDIA A100-SXM4-40GB, 40960, 8192\nbad line\n")
    assert [(r.index, r.name, r.free_mib) for r in rows] == [(0, "NVIDIA H200", 142800), (1, "NVIDIA A100-SXM4-40GB", 8192)]
    full = g.bytes_per_pixel(64)
    assert full == g.FULL_MODEL_BYTES_PER_PX and g.bytes_per_pixel(16) == full // 4
    # the H200's 2048^2 fp32 peak was 17 GiB: a 2048 tile fits half of 48 GiB free, not of 40 GiB
    assert g.tile_for_memory(40960 * 2**20, full, 64) < 2048 <= g.tile_for_memory(49152 * 2**20, full, 64)
    side = g.tile_for_memory(8192 * 2**20, full, 64)
    assert side * side * full <= g.MEMORY_SHARE * 8192 * 2**20 < (side + 1) ** 2 * full
    # a free H200 takes the full model in ~3600-px tiles (its 4096^2 TF32 run peaked at 45.5 GiB, this
    # estimate is the safe side); a narrower network on it reaches the cap
    h200 = g.tile_for_memory(142800 * 2**20, full, 64)
    assert 3000 < h200 < g.MAX_GPU_TILE
    assert g.tile_for_memory(142800 * 2**20, g.bytes_per_pixel(16), 64) == g.MAX_GPU_TILE
    assert g.tile_for_memory(10 * 2**20, full, 300) == 300  # never below the bundle's own minimum


def test_tiles_default_to_512_on_the_cpu_and_follow_the_gpu_memory(bundle, monkeypatch):
    info = read_bundle(bundle)
    assert tile_for(info, "onnx-fp32", None) == 512 and tile_for(info, "onnx-cuda-fp32", 96) == 96
    monkeypatch.setattr(g, "first_gpu", lambda: g.Gpu(0, "NVIDIA A100-SXM4-40GB", 40960, 8192))
    # this fixture's rdf names no generator width: the full model's rate, the safe side
    want = info.valid_size_at_least(g.tile_for_memory(8192 * 2**20, g.FULL_MODEL_BYTES_PER_PX, 512))
    assert tile_for(info, "onnx-cuda-tf32", None) == want > 512
    info.doc.setdefault("config", {}).setdefault("w2sr", {})["run"] = {"generator": {"nf": 16}}
    assert tile_for(info, "tensorflow-gpu-fp32", None) > want  # a narrower network: bigger tiles
