"""Two-phase training end to end on the tiny config: artefacts, resume after SIGKILL, refusal to
overwrite, MirroredStrategy on two logical CPUs, MultiWorkerMirroredStrategy with two local worker
processes, the learning-rate schedule, Adam's epsilon, the per-run patch source, the VGG start-up check.

Everything here trains for real (tiny RRDBNet, simulated W2S-like data, a few steps).
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from w2sr.cli.train import parse_fovs
from training.config import Config, PhaseConfig, apply_overrides, load_config, packaged_config, resolve_config_path
from w2sr.core.errors import UserError
from tests.fixtures import REPO

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
    from training.trainer import learning_rate

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


def test_chief_role_from_tf_config(monkeypatch):
    from training.strategy import will_be_chief

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert will_be_chief("auto") and will_be_chief("multiworker") and will_be_chief("default")

    def tf_config(cluster, task_type, index):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))

    workers = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    tf_config(workers, "worker", 0)
    assert will_be_chief("auto") and will_be_chief("multiworker")
    tf_config(workers, "worker", 1)
    assert not will_be_chief("auto") and not will_be_chief("multiworker")
    assert will_be_chief("default") and will_be_chief("mirrored")  # these ignore TF_CONFIG
    with_chief = {"chief": ["127.0.0.1:3"], **workers}
    tf_config(with_chief, "worker", 0)
    assert not will_be_chief("auto")
    tf_config(with_chief, "chief", 0)
    assert will_be_chief("auto")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(UserError, match="TF_CONFIG is not valid JSON"):
        will_be_chief("auto")


def test_non_chief_does_not_refuse_the_chiefs_run_folder(tmp_path):
    from training.run_folder import RunFolder

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("name: written by the chief a moment ago\n")
    cfg = load_config(packaged_config("tiny"))
    with pytest.raises(UserError, match="not empty"):
        RunFolder(run).prepare(cfg, resume=False)
    assert RunFolder(run).prepare(cfg, resume=False, writer=False) == (cfg, False)
    assert [p.name for p in run.iterdir()] == ["config.yaml"]


def test_adam_epsilon_reaches_both_optimizers():
    from training.config import TrainConfig
    from training.strategy import make_strategy
    from training.trainer import Trainer

    assert TrainConfig().adam_epsilon == 1e-8  # PyTorch's (ESRGAN/BasicSR), not Keras' 1e-7
    assert load_config(packaged_config("w2s")).train.adam_epsilon == 1e-8
    with pytest.raises(UserError, match="invalid value"):
        apply_overrides(load_config(packaged_config("tiny")), ["train.adam_epsilon=0"])
    cfg = tiny_cfg(Path("unused"), "train.adam_epsilon=3e-8", "train.gan.epochs=0")
    trainer = Trainer(cfg, make_strategy("default"))
    assert trainer.g_opt.epsilon == pytest.approx(3e-8) and trainer.d_opt.epsilon == pytest.approx(3e-8)
    mixed = Trainer(apply_overrides(cfg, ["train.mixed_precision=true"]), make_strategy("default"))
    assert mixed.g_opt.inner_optimizer.epsilon == pytest.approx(3e-8)  # true = float16, loss-scaled
    bf16 = Trainer(apply_overrides(cfg, ["train.mixed_precision=bfloat16"]), make_strategy("default"))
    assert bf16.g_opt.epsilon == pytest.approx(3e-8) and not bf16.mixed  # bfloat16: no loss scaling


def test_epoch_dataset_cut_from_one_patch_source(tiny_data):
    """train.py's epochs from one PatchSource: the same batches as a fresh pipeline, resumable, longer."""
    from training.data.layouts import load_split
    from training.data.pipeline import PatchSource, compute_normalization, make_train_dataset
    from training.train import _epoch_dataset
    from training.trainer import data_epoch

    cfg = tiny_cfg(tiny_data)
    pairs = load_split(cfg.data, "train", progress=False)
    cfg = cfg.model_copy(update={"normalization": compute_normalization(pairs)})
    gb, seed = cfg.train.global_batch_size, cfg.train.seed
    source = PatchSource(pairs, cfg.data, cfg.normalization)
    assert source.batches_per_epoch(gb) == 6  # 27 patches, batches of 4

    def lrs(ds):
        return np.concatenate([lr.numpy() for lr, _ in ds])

    e = data_epoch(cfg, 1, 0)  # gan epoch 1 continues the data epochs after pretrain
    assert e == cfg.train.pretrain.epochs
    one_pass = lrs(_epoch_dataset(source, cfg, 1, 0, steps=6, skip=0))
    fresh = lrs(make_train_dataset(pairs, cfg.data, cfg.normalization, gb, seed, e))
    np.testing.assert_array_equal(one_pass, fresh)
    np.testing.assert_array_equal(lrs(_epoch_dataset(source, cfg, 1, 0, steps=6, skip=2)), one_pass[8:])
    assert not np.array_equal(lrs(_epoch_dataset(source, cfg, 0, 0, steps=6, skip=0)), one_pass)

    # 14 steps > 6 per pass: passes 2 and 3 are reshuffled with their own seeds
    long = lrs(_epoch_dataset(source, cfg, 1, 0, steps=14, skip=0))
    assert long.shape[0] == 14 * gb
    second = lrs(source.dataset(gb, seed + 7919, e))
    np.testing.assert_array_equal(long[:24], one_pass)
    np.testing.assert_array_equal(long[24:48], second)
    assert not np.array_equal(second, one_pass)
    np.testing.assert_array_equal(lrs(_epoch_dataset(source, cfg, 1, 0, steps=14, skip=9)), long[36:])


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


def test_tiny_run_end_to_end(tmp_path, tiny_data, monkeypatch):
    import keras

    import training.models  # noqa: F401  (custom layers for load_model)
    from training.data import pipeline
    from training.data.layouts import load_split
    from training.data.pipeline import compute_normalization
    from training.train import train

    calls = {"built": 0, "epochs": []}

    class CountingPatchSource(pipeline.PatchSource):  # the real source, counting its uses
        def __init__(self, *args, **kwargs):
            calls["built"] += 1
            super().__init__(*args, **kwargs)

        def dataset(self, batch_size, seed, epoch):
            calls["epochs"].append(epoch)
            return super().dataset(batch_size, seed, epoch)

    monkeypatch.setattr(pipeline, "PatchSource", CountingPatchSource)
    cfg = tiny_cfg(tiny_data, "train.pretrain.epochs=2", "train.pretrain.steps_per_epoch=2",
                   "train.gan.steps_per_epoch=2", "normalization.mode=fixed")
    assert not cfg.normalization.resolved
    run = tmp_path / "run"
    assert train(cfg, run) == run
    # the images are normalised and stacked once per run; each epoch only cuts its dataset
    assert calls == {"built": 1, "epochs": [0, 1, 2]}

    # resolved config (fixed mode): the statistics measured on the training pairs
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
    from training.trainer import Trainer

    trainer = Trainer(saved, make_strategy("default"), run / "checkpoints")
    assert trainer.g_opt.epsilon == pytest.approx(1e-8) and saved.train.adam_epsilon == 1e-8
    newest, previous = trainer.manager.checkpoints[-1], trainer.manager.checkpoints[-2]
    Path(newest + ".data-00000-of-00001").write_bytes(b"\0" * 64)
    pos = trainer.restore()
    # saves: end of pretrain epoch 1 (step 2), end of phase 1 (step 4), end of phase 2 (step 6)
    assert (pos.phase, pos.epoch, pos.epoch_step, pos.global_step) == (1, 0, 0, 4)
    assert Path(previous).name != Path(newest).name


@pytest.mark.parametrize("mixed", ["float16", "bfloat16"])
def test_mixed_precision_switch_trains_and_exports_float32(tmp_path, tiny_data, mixed):
    import keras

    import training.models  # noqa: F401
    from training.train import train

    cfg = tiny_cfg(tiny_data, f"train.mixed_precision={mixed}", "train.pretrain.steps_per_epoch=2",
                   "train.gan.epochs=0")
    assert cfg.train.mixed_precision == mixed
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
    # float16 trains through a LossScaleOptimizer; bfloat16 has float32's range and needs none
    assert any("dynamic_scale" in n for n in names) == (mixed == "float16")


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
    from training.config import apply_overrides, load_config, packaged_config
    from training.strategy import make_strategy
    from training.train import train
    from training.trainer import Trainer

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


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


#: failures of the cluster itself (not of this code): the gRPC servers cannot start or reach each other
_CLUSTER_UNAVAILABLE = re.compile(
    r".*(Could not start gRPC server|Failed to bind|failed to connect to all addresses).*")

_EPOCH_DONE = re.compile(r"(pretrain|gan) epoch 1/1 done in \S+ \(lr [^)]*\): ([^|]*)\|")
HANG_S = 150


def test_multiworker_strategy_from_tf_config(tmp_path, tiny_data):
    """Two `w2sr train` worker processes on 127.0.0.1, TF_CONFIG only (train.strategy: auto).

    Phase 1 only, 3 steps with a checkpoint mid-epoch (every worker saves); the GAN step under a
    distribution strategy is covered by the MirroredStrategy test.

    Worker 0 (the chief) writes the run folder. Worker 1 is pointed at a folder holding an earlier
    file: it neither refuses it (the chief owns the run folder) nor writes into it, and its own
    checkpoints go to a temporary folder that is removed.
    """
    run = tmp_path / "run"
    other = tmp_path / "worker1-run-dir"
    other.mkdir()
    (other / "earlier.txt").write_text("not the worker's to touch\n")
    before = (sorted(os.listdir(other)), other.stat().st_mtime_ns)
    tmpdirs = [tmp_path / f"tmp{i}" for i in range(2)]
    for d in tmpdirs:
        d.mkdir()
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    procs = []
    try:
        for i, run_dir in enumerate((run, other)):
            env = dict(_env(), TMPDIR=str(tmpdirs[i]),
                       TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
            with open(logs[i], "w") as fh:
                procs.append(subprocess.Popen(
                    [PY, "-m", "w2sr.cli", "train", "--config", "tiny", "--run-dir", str(run_dir),
                     "--set", f"data.root={tiny_data}", "--set", "train.pretrain.steps_per_epoch=3",
                     "--set", "train.checkpoint_every_steps=2", "--set", "train.gan.epochs=0"],
                    stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        # ~25 s on 2 idle cores; the bound only stops a worker left waiting for its peer
        deadline = time.time() + HANG_S
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        pass  # reported below with the logs
    finally:
        for proc in procs:  # a worker blocked on its missing peer ignores SIGTERM
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    out = [log.read_text() for log in logs]
    codes = [proc.returncode for proc in procs]
    if codes != [0, 0]:
        for text in out:
            m = _CLUSTER_UNAVAILABLE.search(text)
            if m:
                pytest.skip(f"TF's multi-worker collectives cannot run on 127.0.0.1 here: {m.group(0).strip()}")
        raise AssertionError(f"exit codes {codes} (-9: killed after {HANG_S} s)\n"
                             + "\n".join(f"--- worker {i}:\n{text[-2500:]}" for i, text in enumerate(out)))
    for text in out:
        assert "CollectiveAllReduceStrategy with 2 replica(s)" in text, text[-2000:]

    # the chief's run folder is complete
    assert (run / "DONE").is_file() and (run / "generator.keras").is_file()
    assert load_config(run / "config.yaml").normalization.resolved
    assert list((run / "panels").glob("*.png")) and list((run / "checkpoints").glob("ckpt-*.index"))
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
    rows = read_metrics(run)
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [(r["phase"], int(r["step"])) for r in train_rows] == [("pretrain", 1), ("pretrain", 2), ("pretrain", 3)]
    for r in train_rows:
        assert np.isfinite(float(r["loss_g"])) and float(r["loss_g"]) > 0
    assert [r["phase"] for r in rows if r["kind"] == "val"] == ["pretrain"]

    # both workers trained in step: the same all-reduced epoch losses
    epochs = [_EPOCH_DONE.findall(text) for text in out]
    assert [p for p, _ in epochs[0]] == ["pretrain"], out[0][-2000:]
    assert epochs[0] == epochs[1]
    # the non-chief wrote nothing into its run folder, and removed its scratch checkpoints
    assert (sorted(os.listdir(other)), other.stat().st_mtime_ns) == before
    assert "finished (the chief writes the run folder)" in out[1]
    # (Python itself may leave a __pycache__ there for modules TensorFlow generates in the temp
    # folder, unless PYTHONDONTWRITEBYTECODE is set: not the worker's scratch)
    assert [p for p in tmpdirs[1].iterdir() if p.name != "__pycache__"] == []
