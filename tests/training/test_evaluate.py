"""evaluate_run on a tiny run folder built here (tiny generator + npy-layout arrays)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="Keras 3 is a project dependency")

from w2sr.core.normalization import Normalization, postprocess, preprocess  # noqa: E402
from training import metrics  # noqa: E402
from training.config import Config, GeneratorConfig, dump_config  # noqa: E402
from training.evaluate import evaluate_run, format_table  # noqa: E402
from training.models import build_generator  # noqa: E402
from w2sr.core.errors import UserError  # noqa: E402

NORM = dict(input_mean=100.0, input_std=20.0, target_mean=0.5, target_std=2.0)


def _make_run(tmp_path, resolved=True, save_model=True):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for fov in (1, 2, 3, 5, 6):
        for sub, size, scale, offset in (("avg1", 12, 20.0, 100.0), ("sim", 24, 2.0, 0.5)):
            (data / sub).mkdir(parents=True, exist_ok=True)
            arr = (rng.standard_normal((size, size)) * scale + offset).astype(np.float32)
            np.save(data / sub / f"{fov:03d}_0.npy", arr)
    cfg = Config.model_validate({
        "data": {"root": str(data), "layout": "npy", "channels": [0], "train_fovs": [1, 2, 3],
                 "val_fovs": [3], "test_fovs": [5, 6], "noise_level": 1,
                 "npy_as_counts": False},  # these arrays are written in their own units
        "normalization": NORM if resolved else {"mode": "fixed"},
        "generator": GeneratorConfig(nb=1, nf=8, gc=4).model_dump(),
    })
    run = tmp_path / "run"
    run.mkdir()
    dump_config(cfg, run / "config.yaml")
    model = build_generator(cfg.generator)
    if save_model:
        model.save(run / "generator.keras")
    return run, data, model


def test_evaluate_run_values_and_csv(tmp_path):
    run, data, model = _make_run(tmp_path)
    rows = evaluate_run(run)
    assert [r["name"] for r in rows] == ["005_0", "006_0", "mean"]
    for row in rows[:2]:
        lr = np.load(data / "avg1" / f"{row['name']}.npy")
        hr = np.load(data / "sim" / f"{row['name']}.npy")
        pred = postprocess(np.asarray(model(preprocess(lr, NORM["input_mean"], NORM["input_std"])[None, ..., None]))[0, ..., 0],
                           NORM["target_mean"], NORM["target_std"])
        dr = float(hr.max() - hr.min())
        mse = np.mean((pred.astype(np.float64) - hr) ** 2)
        assert row["psnr_model"] == pytest.approx(10 * np.log10(dr**2 / mse), rel=1e-4)
        bic = metrics.bicubic_baseline(lr, Normalization(mode="fixed", **NORM))
        assert row["psnr_bicubic"] == pytest.approx(metrics.psnr(bic, hr), rel=1e-9)
        assert row["ssim_model"] == pytest.approx(metrics.ssim(pred, hr), abs=1e-4)
        assert row["data_range"] == pytest.approx(dr)
    assert rows[2]["psnr_model"] == pytest.approx((rows[0]["psnr_model"] + rows[1]["psnr_model"]) / 2)
    with open(run / "evaluation_avg1.csv") as fh:
        written = list(csv.DictReader(fh))
    assert [w["name"] for w in written] == ["005_0", "006_0", "mean"]
    assert float(written[0]["psnr_model"]) == pytest.approx(rows[0]["psnr_model"])
    table = format_table(rows)
    assert "mean" in table and "PSNR model" in table


def test_evaluate_run_overrides(tmp_path):
    run, data, _ = _make_run(tmp_path)
    out = tmp_path / "elsewhere" / "eval.csv"
    rows = evaluate_run(run, data_root=data, layout="auto", fovs=[6], channels=[0], out_csv=out)
    assert [r["name"] for r in rows] == ["006_0", "mean"]
    assert out.is_file()


def test_evaluate_run_errors_name_the_file(tmp_path):
    run, _, _ = _make_run(tmp_path, save_model=False)
    with pytest.raises(UserError, match="generator.keras"):
        evaluate_run(run)
    (run / "config.yaml").unlink()
    with pytest.raises(UserError, match="config.yaml"):
        evaluate_run(run)


def test_evaluate_run_needs_resolved_normalization(tmp_path):
    run, _, _ = _make_run(tmp_path, resolved=False)
    with pytest.raises(UserError, match="normalization"):
        evaluate_run(run)
