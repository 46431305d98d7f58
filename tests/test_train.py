"""Two-phase training end to end on the tiny config: artefacts, resume after SIGKILL, refusal to
overwrite, MirroredStrategy on two logical CPUs, the learning-rate schedule, the VGG start-up check.

Everything here trains for real (tiny RRDBNet, simulated W2S-like data, a few steps).
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from training.cli_train import apply_overrides, parse_fovs, resolve_config_path
from training.config import Config, PhaseConfig, load_config, packaged_config
from w2sr.errors import UserError

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """The tiny config's simulated data, written once for the module."""
    from training.data.simulator import simulate_dataset

    cfg = load_config(packaged_config("tiny"))
    root = tmp_path_factory.mktemp("data") / "tiny"
    simulate_dataset(cfg.data.simulate, root)
    return root


def tiny_cfg(data_root: Path, *overrides: str) -> Config:
    cfg = load_config(packaged_config("tiny"))
    return apply_overrides(cfg, [f"data.root={data_root}", *overrides])


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")


# --------------------------------------------------------------------------- pure parts


def test_learning_rate_halves_each_epoch():
    from training.train import learning_rate

    phase = PhaseConfig(learning_rate=1e-4)  # default decay 0.5 (report: halved every epoch)
    lrs = [learning_rate(phase, e) for e in range(5)]
    assert lrs == pytest.approx([1e-4, 5e-5, 2.5e-5, 1.25e-5, 6.25e-6])
    assert learning_rate(PhaseConfig(learning_rate=1e-3, lr_decay_per_epoch=1.0), 7) == pytest.approx(1e-3)


def test_set_overrides_are_validated():
    cfg = load_config(packaged_config("tiny"))
    new = apply_overrides(cfg, ["train.global_batch_size=32", "data.channels=[0, 2]", "loss.pixel=l2"])
    assert new.train.global_batch_size == 32 and new.data.channels == [0, 2] and new.loss.pixel == "l2"
    assert cfg.train.global_batch_size == 4  # the original is untouched
    with pytest.raises(UserError, match="unknown config key 'train.batch'"):
        apply_overrides(cfg, ["train.batch=3"])
    with pytest.raises(UserError, match="invalid value"):
        apply_overrides(cfg, ["train.global_batch_size=0"])
    with pytest.raises(UserError, match="KEY=VALUE"):
        apply_overrides(cfg, ["train.global_batch_size"])
    assert resolve_config_path("tiny") == packaged_config("tiny")
    with pytest.raises(UserError, match="no packaged config 'nope'"):
        resolve_config_path("nope")
    assert parse_fovs("81-83,90") == [81, 82, 83, 90]


def test_refuses_non_empty_run_folder_without_resume(tmp_path, tiny_data):
    from training.train import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("an earlier run")
    with pytest.raises(UserError, match=r"not empty.*--resume"):
        train(tiny_cfg(tiny_data), run)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "an earlier run"
    # the CLI says the same in one line, exit 2
    proc = subprocess.run([PY, "-m", "w2sr.cli", "train", "--config", "tiny", "--run-dir", str(run),
                           "--set", f"data.root={tiny_data}"], capture_output=True, text=True, env=_env(),
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: run folder {run} is not empty")


def test_missing_vgg_weights_stop_at_startup(tmp_path):
    from training.train import train

    missing = tmp_path / "vgg19_notop.h5"
    data = tmp_path / "data"  # would be simulated if start-up got that far
    cfg = tiny_cfg(data, f"loss.vgg_weights={missing}")
    run = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=re.escape(str(missing))):
        train(cfg, run)
    assert time.perf_counter() - t0 < 10
    assert not run.exists() and not data.exists()  # nothing written, no data simulated


# --------------------------------------------------------------------------- a whole run


def test_tiny_run_end_to_end(tmp_path, tiny_data):
    import keras

    import training.models  # noqa: F401  (custom layers for load_model)
    from training.data.layouts import load_split
    from training.data.pipeline import compute_normalization
    from training.train import train

    cfg = tiny_cfg(tiny_data, "train.pretrain.epochs=2", "train.pretrain.steps_per_epoch=2",
                   "train.gan.steps_per_epoch=2")
    assert not cfg.normalization.resolved
    run = tmp_path / "run"
    assert train(cfg, run) == run

    # resolved config: the statistics measured on the training pairs
    saved = load_config(run / "config.yaml")
    assert saved.normalization.resolved
    expected = compute_normalization(load_split(cfg.data, "train", progress=False))
    assert saved.normalization.input_mean == pytest.approx(expected.input_mean)
    assert saved.normalization.target_std == pytest.approx(expected.target_std)

    # models load and upsample 2x
    for name in ("generator.keras", "generator_pretrain.keras"):
        model = keras.models.load_model(run / name, compile=False)
        y = np.asarray(model(np.zeros((1, 24, 20, 1), np.float32)))
        assert y.shape == (1, 48, 40, 1) and np.isfinite(y).all()

    rows = read_metrics(run)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [int(r["step"]) for r in train_rows] == [1, 2, 3, 4, 5, 6]
    assert [r["phase"] for r in train_rows] == ["pretrain"] * 4 + ["gan"] * 2
    # the learning rate actually used halves from epoch 1 to epoch 2, and restarts in phase 2
    assert [float(r["lr"]) for r in train_rows] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4, 1e-4, 1e-4])
    for r in train_rows:
        assert np.isfinite(float(r["loss_g"]))
    gan = train_rows[-1]
    total = float(gan["pixel"]) + float(gan["perceptual"]) + float(gan["adversarial"])
    assert float(gan["loss_g"]) == pytest.approx(total, rel=1e-4)
    assert float(gan["loss_d"]) > 0
    val = [r for r in rows if r["kind"] == "val"]
    assert [(r["phase"], r["epoch"]) for r in val] == [("pretrain", "1"), ("pretrain", "2"), ("gan", "1")]
    for r in val:
        assert 5 < float(r["val_psnr"]) < 80 and 5 < float(r["bicubic_psnr"]) < 80
        assert -1 <= float(r["val_ssim"]) <= 1

    import matplotlib.image as mpimg

    for png in ("panels/pretrain_epoch01.png", "panels/pretrain_epoch02.png", "panels/gan_epoch01.png",
                "loss_curves.png"):
        img = mpimg.imread(run / png)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400 and img.std() > 0.05, png
    assert (run / "DONE").is_file()
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".*.keras"))

    # resuming a finished run does nothing; the checkpoints are the newest two
    assert train(cfg, run, resume=True) == run
    assert len(read_metrics(run)) == len(rows)

    # a damaged newest checkpoint: restore falls back to the previous one
    from training.strategy import make_strategy
    from training.train import Trainer

    trainer = Trainer(saved, make_strategy("default"), run / "checkpoints")
    newest, previous = trainer.manager.checkpoints[-1], trainer.manager.checkpoints[-2]
    Path(newest + ".data-00000-of-00001").write_bytes(b"\0" * 64)
    pos = trainer.restore()
    # saves: end of pretrain epoch 1 (step 2), end of phase 1 (step 4), end of phase 2 (step 6)
    assert (pos.phase, pos.epoch, pos.epoch_step, pos.global_step) == (1, 0, 0, 4)
    assert Path(previous).name != Path(newest).name


def test_mixed_precision_switch_trains_and_exports_float32(tmp_path, tiny_data):
    import keras

    import training.models  # noqa: F401
    from training.train import train

    cfg = tiny_cfg(tiny_data, "train.mixed_precision=true", "train.pretrain.steps_per_epoch=2",
                   "train.gan.epochs=0")
    run = train(cfg, tmp_path / "run")
    assert keras.mixed_precision.global_policy().name == "float32"  # restored afterwards
    rows = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert [r["phase"] for r in rows] == ["pretrain", "pretrain"]
    assert all(np.isfinite(float(r["loss_g"])) for r in rows)
    model = keras.models.load_model(run / "generator.keras", compile=False)
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert (run / "DONE").exists() and not (run / "panels" / "gan_epoch01.png").exists()
    import tensorflow as tf

    names = [name for name, _ in tf.train.list_variables(str(run / "checkpoints"))]
    assert any("dynamic_scale" in n for n in names)  # trained through a LossScaleOptimizer


def test_killed_run_resumes_to_the_same_step_count(tmp_path, tiny_data):
    """SIGKILL after the first checkpoint, then --resume: continues from it and ends as a full run."""
    run = tmp_path / "run"
    pre_steps, gan_steps = 12, 2
    args = [PY, "-m", "w2sr.cli", "train", "--config", "tiny", "--run-dir", str(run),
            "--set", f"data.root={tiny_data}",
            "--set", f"train.pretrain.steps_per_epoch={pre_steps}",
            "--set", f"train.gan.steps_per_epoch={gan_steps}",
            "--set", "train.checkpoint_every_steps=3"]
    log1 = tmp_path / "first.log"
    with open(log1, "w") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=_env(), cwd=tmp_path)
        state = run / "checkpoints" / "checkpoint"
        deadline = time.time() + 150
        while not state.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert state.exists(), log1.read_text()[-2000:]
    assert not (run / "DONE").exists()

    t_resume = time.time()
    proc2 = subprocess.run([PY, "-m", "w2sr.cli", "train", "--run-dir", str(run), "--resume"],
                           capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=300)
    out = proc2.stdout + proc2.stderr
    assert proc2.returncode == 0, out[-3000:]
    assert (run / "DONE").exists()
    m = re.search(r"restored ckpt-\d+: .* global step (\d+)", out)
    assert m, out[-3000:]
    restored = int(m.group(1))
    assert restored >= 3  # continued from the checkpoint, not from zero
    assert f"continuing from global step {restored}" in out

    rows = read_metrics(run)
    steps = [int(r["step"]) for r in rows if r["kind"] == "train"]
    total = pre_steps + gan_steps
    assert steps == list(range(1, total + 1))  # every step exactly once, as an uninterrupted run
    redone = [r for r in rows if r["kind"] == "train" and float(r["wall_time"]) >= t_resume]
    assert len(redone) == total - restored  # the resumed process ran only the remaining steps
    assert [(r["phase"], r["epoch"]) for r in rows if r["kind"] == "val"] == [("pretrain", "1"), ("gan", "1")]

    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(run / "checkpoints"))
    assert int(reader.get_tensor("global_step/.ATTRIBUTES/VARIABLE_VALUE")) == total
    assert (run / "generator.keras").is_file() and (run / "generator_pretrain.keras").is_file()


_MIRRORED_SCRIPT = textwrap.dedent("""
    import json, logging, sys
    logging.basicConfig(level=logging.INFO)
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from pathlib import Path
    from training.cli_train import apply_overrides
    from training.config import load_config, packaged_config
    from training.strategy import make_strategy
    from training.train import Trainer, train

    data, run = sys.argv[1], Path(sys.argv[2])
    cfg = apply_overrides(load_config(packaged_config("tiny")), [
        f"data.root={data}", "train.strategy=mirrored", "train.pretrain.steps_per_epoch=2",
        "train.gan.steps_per_epoch=1"])
    train(cfg, run)

    # one step on the same batch: 2 replicas x 2 samples == 1 device x 4 samples
    norm = apply_overrides(load_config(run / "config.yaml"), ["train.gan.epochs=0"])  # no VGG needed
    rng = np.random.default_rng(1)
    lr = rng.standard_normal((4, 64, 64, 1)).astype("float32")
    hr = rng.standard_normal((4, 128, 128, 1)).astype("float32")
    results = {}
    weights = None
    flat = {}
    for kind in ("mirrored", "default"):
        strategy = make_strategy(kind)
        trainer = Trainer(norm, strategy)
        if weights is None:
            weights = trainer.generator.get_weights()
        trainer.generator.set_weights(weights)
        ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors((lr, hr)))
        lr_b, hr_b = next(iter(ds))
        out = trainer.step_fn("pretrain")(lr_b, hr_b)
        flat[kind] = np.concatenate([np.ravel(w) for w in trainer.generator.get_weights()])
        results[kind] = {"loss": float(out["loss_g"]), "replicas": strategy.num_replicas_in_sync}
    w0 = np.concatenate([np.ravel(w) for w in weights])
    diff = np.abs(flat["mirrored"] - flat["default"])
    results["same_update_fraction"] = float(np.mean(diff < 1e-6))
    results["max_update"] = float(np.max(np.abs(flat["default"] - w0)))
    print("RESULT " + json.dumps(results))
""")


def test_mirrored_strategy_on_two_logical_cpus(tmp_path, tiny_data):
    run = tmp_path / "run"
    proc = subprocess.run([PY, "-c", _MIRRORED_SCRIPT, str(tiny_data), str(run)], capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in out
    assert (run / "DONE").exists()
    rows = [r for r in read_metrics(run) if r["kind"] == "train"]
    assert len(rows) == 3
    assert all(np.isfinite(float(r["loss_g"])) for r in rows)
    assert np.isfinite(float(rows[-1]["loss_d"]))
    res = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert res["mirrored"]["replicas"] == 2 and res["default"]["replicas"] == 1
    # losses are scaled by the global batch: same loss and same update as on one device
    assert res["mirrored"]["loss"] == pytest.approx(res["default"]["loss"], rel=1e-5)
    # (Adam's first step is +-lr for all but near-zero gradients, whose sign rounding may flip)
    assert res["max_update"] > 5e-4  # the step did move the weights (lr 1e-3)
    assert res["same_update_fraction"] > 0.999
