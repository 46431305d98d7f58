"""The benchmarks' own parts: a limit measured in its own process, FLOPs counted on the graph that
runs, a machine record that names the machine, and the GPU benchmark's refusal and CPU dry run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import limits  # noqa: E402
import machine  # noqa: E402
import workloads  # noqa: E402


def test_a_limit_is_measured_in_a_fresh_process_and_reports_min_and_median():
    spec = {"runtime": "onnxruntime", "device": "cpu", "dtype": "fp32", "op": "gemm", "shape": [256, 256, 256],
            "threads": 1, "runs": 3}
    row = limits._in_fresh_process(spec, timeout=300)
    assert "error" not in row, row
    assert row["ops"] == 2 * 256**3 and 0 < row["min_s"] <= row["median_s"]
    assert row["gops_best"] >= row["gops_median"] > 0


def test_a_runtime_that_cannot_measure_a_dtype_is_a_named_row_not_a_crash():
    row = limits.measure_one({"runtime": "torch", "device": "gpu", "dtype": "fp32", "op": "gemm",
                              "shape": [64, 64, 64], "threads": 1, "runs": 1})
    assert "error" in row and "min_s" not in row
    lim = {"gops": 100.0, "by": "numpy gemm"}
    assert limits.ratio_to_limit(2e9, 0.04, lim) == pytest.approx(0.5)


def test_the_machine_record_names_cpu_family_model_flags_and_versions():
    rec = machine.describe_machine("numpy", "onnxruntime", "no_such_module")
    assert rec["cpu_family"] and rec["cpu_model"] and isinstance(rec["cpu_flags"], list)
    assert rec["no_such_module"] == "not installed" and rec["numpy"][0].isdigit()
    line = machine.one_line(rec)
    assert line.startswith("Machine: ") and f"family {rec['cpu_family']}" in line


def test_flops_are_counted_on_the_exported_graph_with_its_padding(exported_bundle):
    from w2sr.bundle.reader import read_bundle

    info = read_bundle(exported_bundle)
    side = info.valid_size_at_least(64)
    graph = workloads.graph_flops(info.onnx_path, side, side)
    keras = workloads.keras_flops(exported_bundle / "generator.keras", side)
    padded = workloads.keras_flops(exported_bundle / "generator.keras", side + 2 * info.padding)
    assert info.padding > 0 and graph > keras
    assert graph == pytest.approx(padded, rel=1e-6)


def test_bench_gpu_refuses_in_one_line_without_a_gpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "gpu",
                          "--model", "nowhere"], capture_output=True, text=True, timeout=300)
    if "no GPU" not in out.stderr and out.returncode == 0:
        pytest.skip("a GPU is visible here: the refusal cannot be shown")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: --device gpu: nvidia-smi lists no GPU")


def test_bench_gpu_dry_run_on_the_cpu_prints_every_mode_and_the_bench_line(exported_bundle, tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--device", "cpu",
                          "--model", str(exported_bundle), "--sizes", "64", "--repeats", "1", "--quick-limits",
                          "--out", str(tmp_path / "gpu")], capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[-1].startswith("BENCH gpu-") and "device=cpu" in lines[-1] and "fp32_s=" in lines[-1]
    assert "fp32_s=nan" not in lines[-1] and "bf16_s=nan" not in lines[-1]
    result = json.loads((tmp_path / "gpu.json").read_text())
    keys = {m["key"]: m for m in result["modes"]}
    assert {"keras-cpu", "savedmodel-cpu", "onnx-cpu", "keras-cpu-bf16", "keras-cpu-fp16"} <= set(keys)
    # the reference against itself deviates by nothing; bf16 does, and says by how much
    assert keys["onnx-cpu"]["deviation"]["64"]["outside"] == 0
    assert keys["keras-cpu-bf16"]["deviation"]["64"]["psnr_db"] < keys["keras-cpu"]["deviation"]["64"]["psnr_db"]
    assert result["machine"]["cpu_family"] and (tmp_path / "gpu.md").read_text().startswith("Machine: ")
