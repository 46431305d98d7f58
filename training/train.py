"""Two-phase ESRGAN training (report sections 2.6, 3.1, 3.3), resumable, on any tf.distribute strategy.

Phase 1 "pretrain": the generator alone on the pixel loss (weight ``loss.pretrain_pixel_weight``).
Phase 2 "gan": generator on pixel + perceptual (+ texture) + RaGAN adversarial loss, the VGG-style
discriminator trained alongside on the RaGAN discriminator loss.

Both use Adam with AMSGrad (beta_1 0.9, beta_2 0.99, epsilon ``train.adam_epsilon`` = 1e-8 as in
ESRGAN/BasicSR, not Keras' 1e-7) and a learning rate of
``phase.learning_rate * phase.lr_decay_per_epoch ** epoch`` (halved after every epoch by default);
generator and discriminator have their own optimizers.

A run lives in one folder (see docs/ARCHITECTURE.md). Checkpoints hold G, D, both optimizers and the
position (phase, epoch, step within epoch, global step); they are written every
``train.checkpoint_every_steps`` steps and at every epoch and phase end. ``resume=True`` restores the
newest readable checkpoint and continues: the data pipeline is deterministic for (seed, epoch), so
the batches already done in the interrupted epoch are skipped and the run ends with exactly the
steps of an uninterrupted one. A kill loses at most the steps since the last checkpoint.

The loss columns in the logs are the *weighted* terms of the generator loss, so
``loss_g = pixel + perceptual + texture + adversarial``; ``loss_d`` is the weighted discriminator loss.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from training.config import Config, PhaseConfig, dump_config, load_config
from w2sr.core.files import atomic_path, atomic_write_text
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

PHASES = ("pretrain", "gan")
CONFIG_NAME = "config.yaml"
DONE_NAME = "DONE"
CHECKPOINT_DIR = "checkpoints"


class TrainingDiverged(UserError):
    """A loss became NaN or infinite."""


# --------------------------------------------------------------------------- small pure helpers


def learning_rate(phase: PhaseConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based) in a phase: ``lr * decay ** epoch``."""
    return float(phase.learning_rate * phase.lr_decay_per_epoch ** epoch)


def phase_config(cfg: Config, phase: str) -> PhaseConfig:
    return getattr(cfg.train, phase)


def data_epoch(cfg: Config, phase_index: int, epoch: int) -> int:
    """The pipeline's epoch index: phase 2 continues counting after phase 1 (fresh augmentations)."""
    return epoch if phase_index == 0 else cfg.train.pretrain.epochs + epoch


def steps_per_epoch(phase: PhaseConfig, n_patches: int, global_batch: int, phase_name: str) -> int:
    """Configured steps, or one pass over all training patches (``drop_remainder``)."""
    if phase.steps_per_epoch:
        return int(phase.steps_per_epoch)
    steps = n_patches // global_batch
    if steps < 1:
        raise UserError(
            f"train.{phase_name}: the training images give only {n_patches} patches, fewer than "
            f"train.global_batch_size={global_batch}; lower the batch size or set steps_per_epoch"
        )
    return steps


@dataclass
class Position:
    """Where training stands: the next step to run is ``epoch_step`` of ``epoch`` in ``phase``."""

    phase: int = 0
    epoch: int = 0
    epoch_step: int = 0
    global_step: int = 0


def _needs_vgg(cfg: Config) -> bool:
    return cfg.loss.perceptual_weight > 0 or cfg.loss.texture_weight > 0


def total_steps(cfg: Config, steps: dict[str, int]) -> int:
    return sum(phase_config(cfg, p).epochs * steps[p] for p in PHASES)


# --------------------------------------------------------------------------- run folder


def _config_differences(a: Config, b: Config, prefix: str = "") -> list[str]:
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    out: list[str] = []

    def walk(x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif x != y:
            out.append(path)

    walk(da, db, prefix)
    return out


def _prepare_run_dir(cfg: Config, run_dir: Path, resume: bool, writer: bool = True) -> tuple[Config, bool]:
    """Refuse to overwrite a run; on resume, return the run's own config. -> (cfg, resuming).

    Reads only. ``writer=False`` (a non-chief worker of a cluster, which never writes the run
    folder) skips the refusal of a non-empty folder: the chief may already have started filling it.
    """
    non_empty = run_dir.exists() and any(run_dir.iterdir())
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"run folder {run_dir} is a file, not a folder")
    if not resume and not writer:
        return cfg, False
    if not resume:
        if non_empty:
            raise UserError(
                f"run folder {run_dir} is not empty (it holds an earlier run); pass --resume to "
                f"continue it, or choose another --run-dir"
            )
        return cfg, False
    if not non_empty:
        log.info("nothing to resume in %s: starting a new run there", run_dir)
        return cfg, False
    saved_path = run_dir / CONFIG_NAME
    if not saved_path.exists():
        raise UserError(
            f"cannot resume {run_dir}: it has no {CONFIG_NAME}, so it is not a training run folder"
        )
    try:
        saved = load_config(saved_path)
    except UserError as exc:
        raise UserError(f"cannot resume: {exc}") from None
    compare = cfg
    if not cfg.normalization.resolved:
        compare = cfg.model_copy(update={"normalization": saved.normalization})
    diffs = _config_differences(saved, compare)
    if diffs:
        log.warning(
            "resuming with the run's own %s; the config given differs in %s (ignored)",
            saved_path, ", ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else ""),
        )
    return saved, True


# --------------------------------------------------------------------------- data


def _load_data(cfg: Config):
    """Simulate if asked and absent, then read and check the train and val pairs (DataError early)."""
    from training.data import layouts

    d = cfg.data
    root = Path(d.root)
    if d.simulate is not None and (not root.exists() or (root.is_dir() and not any(root.iterdir()))):
        from training.data.simulator import simulate_dataset

        log.info("simulating %d W2S-like FOVs into %s (data.simulate)", d.simulate.n_fovs, root)
        simulate_dataset(d.simulate, root)
    if not root.exists():
        raise UserError(f"data folder {root} does not exist (set data.root in the config)")
    train_pairs = layouts.load_split(d, "train")
    val_pairs = layouts.load_split(d, "val")
    if not train_pairs:
        raise UserError(f"{root}: no training images for FOVs {d.train_fovs} minus val {d.val_fovs}")
    if not val_pairs:
        raise UserError(f"{root}: no validation images for FOVs {d.val_fovs}")
    log.info(
        "%d training and %d validation image pairs (LR %s -> HR %s)",
        len(train_pairs), len(val_pairs), train_pairs[0].lr.shape, train_pairs[0].hr.shape,
    )
    return train_pairs, val_pairs


def _resolve_normalization(cfg: Config, train_pairs) -> Config:
    norm = cfg.normalization
    if norm.resolved:
        return cfg
    from training.data.pipeline import compute_normalization

    measured = compute_normalization(train_pairs)  # (percentile mode is always resolved)
    filled = {k: (v if v is not None else getattr(measured, k)) for k, v in norm.model_dump().items()}
    filled["mode"] = "fixed"
    new = cfg.model_copy(update={"normalization": type(norm)(**filled)})
    n = new.normalization
    log.info(
        "normalisation measured on the training images: input mean %.4g std %.4g, target mean %.4g std %.4g",
        n.input_mean, n.input_std, n.target_mean, n.target_std,
    )
    return new


def _epoch_dataset(source, cfg: Config, phase_index: int, epoch: int, steps: int, skip: int):
    """The batches of one epoch, deterministic for (seed, epoch), without the first ``skip``.

    ``source`` is the run's one ``PatchSource`` (images normalised and stacked once per run); each
    call only builds the epoch's patch order and the tf.data graph around the shared tensors.
    """
    import tensorflow as tf

    gb = cfg.train.global_batch_size
    e = data_epoch(cfg, phase_index, epoch)
    card = source.batches_per_epoch(gb)
    if card == 0:
        raise UserError(
            f"the training data give no complete batch of {gb} patches; lower train.global_batch_size"
        )
    ds = source.dataset(gb, cfg.train.seed, e)
    if card < steps:
        # one pass is shorter than the epoch: chain further passes, each with its own seed
        for k in range(1, math.ceil(steps / card)):
            ds = ds.concatenate(source.dataset(gb, cfg.train.seed + 7919 * k, e))
    ds = ds.take(steps).skip(skip)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- models and steps


class Trainer:
    """Models, optimizers, the tf.function train steps and the checkpoint, built in a strategy.

    ``Trainer(cfg, strategy).step_fn("pretrain" | "gan")(lr_batch, hr_batch) -> {loss: value}``
    runs one optimisation step on a (distributed) batch; the benchmark uses it directly.
    """

    def __init__(self, cfg: Config, strategy, ckpt_dir: Optional[Path] = None):
        import keras
        import tensorflow as tf

        from training.models import build_discriminator, build_generator
        from training.losses.gan import ragan_discriminator_loss, ragan_generator_loss
        from training.losses.pixel import pixel_loss

        self.cfg, self.strategy, self.tf = cfg, strategy, tf
        self.global_batch = cfg.train.global_batch_size
        t = cfg.train
        need_gan = t.gan.epochs > 0
        with strategy.scope():
            self.generator = build_generator(cfg.generator)
            self.discriminator = build_discriminator(cfg.discriminator)
            self.g_opt = self._optimizer(t.pretrain.learning_rate)
            self.d_opt = self._optimizer(t.gan.learning_rate)
            self.g_opt.build(self.generator.trainable_variables)
            self.d_opt.build(self.discriminator.trainable_variables)
            self.perceptual = None
            if need_gan and _needs_vgg(cfg):
                from training.losses.perceptual import PerceptualLoss

                self.perceptual = PerceptualLoss.from_config(cfg.loss)
        self.pixel = pixel_loss(cfg.loss.pixel)
        self.ragan_g, self.ragan_d = ragan_generator_loss, ragan_discriminator_loss
        self.mixed = t.mixed_precision == "float16"  # loss scaling (bfloat16 needs none)

        self.counters = {
            name: tf.Variable(0, dtype=tf.int64, trainable=False, name=name)
            for name in ("phase", "epoch", "epoch_step", "global_step")
        }
        self.checkpoint = tf.train.Checkpoint(
            generator=self.generator, discriminator=self.discriminator,
            generator_optimizer=self.g_opt, discriminator_optimizer=self.d_opt, **self.counters,
        )
        self.manager = None if ckpt_dir is None else tf.train.CheckpointManager(
            self.checkpoint, str(ckpt_dir), max_to_keep=t.keep_checkpoints, checkpoint_name="ckpt",
        )
        self._pretrain_fn = None
        self._gan_fn = None

    def _optimizer(self, lr: float):
        import keras

        t = self.cfg.train
        opt = keras.optimizers.Adam(learning_rate=lr, beta_1=t.beta_1, beta_2=t.beta_2,
                                    epsilon=t.adam_epsilon, amsgrad=t.amsgrad)
        if t.mixed_precision == "float16":  # bfloat16 has float32's range: no loss scaling
            opt = keras.optimizers.LossScaleOptimizer(opt)
        return opt

    # -- learning rates ----------------------------------------------------------------------

    def set_learning_rate(self, phase: str, lr: float) -> None:
        self.g_opt.learning_rate = lr
        if phase == "gan":
            self.d_opt.learning_rate = lr

    def get_learning_rate(self) -> float:
        value = self.g_opt.learning_rate
        return float(value.numpy() if hasattr(value, "numpy") else value)

    # -- steps ---------------------------------------------------------------------------------

    def _scale(self, lr_batch):
        tf = self.tf
        return tf.cast(tf.shape(lr_batch)[0], tf.float32) / float(self.global_batch)

    @staticmethod
    def _mean(tf, x):
        return tf.reduce_mean(tf.cast(x, tf.float32))

    def _for_tape(self, opt, loss):
        """The loss to differentiate: scaled by the LossScaleOptimizer under mixed precision.

        Must be called inside the GradientTape context, so the scaling is recorded.
        """
        return opt.scale_loss(loss) if self.mixed else loss

    @staticmethod
    def _apply(opt, tape, tape_loss, variables):
        grads = tape.gradient(tape_loss, variables)  # unscaled by LossScaleOptimizer.apply
        opt.apply_gradients(zip(grads, variables))

    def _pretrain_replica(self, lr_b, hr_b):
        tf, w = self.tf, self.cfg.loss.pretrain_pixel_weight
        scale = self._scale(lr_b)
        with tf.GradientTape() as tape:
            sr = tf.cast(self.generator(lr_b, training=True), tf.float32)
            pixel = w * self._mean(tf, self.pixel(hr_b, sr)) * scale
            loss = pixel
            tape_loss = self._for_tape(self.g_opt, loss)
        self._apply(self.g_opt, tape, tape_loss, self.generator.trainable_variables)
        return {"loss_g": loss, "pixel": pixel}

    def _gan_replica(self, lr_b, hr_b):
        tf, L = self.tf, self.cfg.loss
        scale = self._scale(lr_b)
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            sr = tf.cast(self.generator(lr_b, training=True), tf.float32)
            real_logits = tf.cast(self.discriminator(hr_b, training=True), tf.float32)
            fake_logits = tf.cast(self.discriminator(sr, training=True), tf.float32)
            pixel = L.pixel_weight * self._mean(tf, self.pixel(hr_b, sr)) * scale
            zero = tf.zeros((), tf.float32)
            perceptual = texture = zero
            if self.perceptual is not None:
                terms = self.perceptual.terms(hr_b, sr)
                perceptual = L.perceptual_weight * self._mean(tf, terms["perceptual"]) * scale
                texture = L.texture_weight * self._mean(tf, terms["texture"]) * scale
            adversarial = L.adversarial_weight * self._mean(tf, self.ragan_g(real_logits, fake_logits)) * scale
            loss_g = pixel + perceptual + texture + adversarial
            # D sees the generator output as a constant (its gradient is taken w.r.t. D only)
            loss_d = L.discriminator_weight * self._mean(
                tf, self.ragan_d(real_logits, fake_logits)) * scale
            g_tape_loss = self._for_tape(self.g_opt, loss_g)
            d_tape_loss = self._for_tape(self.d_opt, loss_d)
        self._apply(self.g_opt, g_tape, g_tape_loss, self.generator.trainable_variables)
        self._apply(self.d_opt, d_tape, d_tape_loss, self.discriminator.trainable_variables)
        out = {"loss_g": loss_g, "pixel": pixel, "perceptual": perceptual,
               "adversarial": adversarial, "loss_d": loss_d}
        if L.texture_weight:
            out["texture"] = texture
        return out

    def _distributed(self, replica_fn) -> Callable:
        tf, strategy = self.tf, self.strategy

        @tf.function
        def step(lr_b, hr_b):
            per_replica = strategy.run(replica_fn, args=(lr_b, hr_b))
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                    for k, v in per_replica.items()}

        return step

    def step_fn(self, phase: str) -> Callable:
        if phase == "pretrain":
            if self._pretrain_fn is None:
                self._pretrain_fn = self._distributed(self._pretrain_replica)
            return self._pretrain_fn
        if self._gan_fn is None:
            self._gan_fn = self._distributed(self._gan_replica)
        return self._gan_fn

    # -- checkpoints ---------------------------------------------------------------------------

    def save(self, pos: Position) -> str:
        for name in ("phase", "epoch", "epoch_step", "global_step"):
            self.counters[name].assign(getattr(pos, name))
        # numbered by the checkpoint's own save counter: a name is never rewritten in place
        return self.manager.save()

    def restore(self, directory: Optional[Path] = None) -> Optional[Position]:
        """Restore the newest readable checkpoint; fall back to older ones if it is damaged.

        ``directory``: read the checkpoints there instead of this trainer's own folder (a non-chief
        worker resumes from the chief's checkpoints but saves into its own scratch folder).
        """
        if directory is None:
            candidates, where = list(reversed(self.manager.checkpoints)), self.manager.directory
        else:
            state = self.tf.train.get_checkpoint_state(str(directory))
            candidates = list(reversed(state.all_model_checkpoint_paths)) if state else []
            where = directory
        for path in candidates:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except Exception as exc:  # a damaged or partial checkpoint: try the previous one
                log.warning("checkpoint %s is unreadable (%s); trying an older one",
                            path, str(exc).splitlines()[0][:200])
                continue
            pos = Position(**{k: int(v.numpy()) for k, v in self.counters.items()})
            log.info("restored %s: phase %s, epoch %d, step %d of the epoch, global step %d",
                     Path(path).name, PHASES[min(pos.phase, 1)], pos.epoch + 1, pos.epoch_step,
                     pos.global_step)
            return pos
        if candidates:
            raise UserError(f"no readable checkpoint in {where}")
        return None

    # -- inference and export ------------------------------------------------------------------

    def predict(self, x: np.ndarray) -> np.ndarray:
        y = self.generator(x, training=False)
        return np.asarray(self.tf.cast(y, self.tf.float32))

    def save_generator(self, path: Path) -> None:
        """Write the generator atomically as a float32, single-device .keras model."""
        import keras

        from training.models import build_generator

        policy = keras.mixed_precision.global_policy()
        try:
            keras.mixed_precision.set_global_policy("float32")
            clone = build_generator(self.cfg.generator)  # outside any strategy scope
            clone.set_weights([np.asarray(w) for w in self.generator.get_weights()])
        finally:
            keras.mixed_precision.set_global_policy(policy)
        with atomic_path(Path(path), suffix=".keras") as tmp:
            clone.save(tmp)
        log.info("wrote %s", path)


# --------------------------------------------------------------------------- validation


def validate(trainer: Trainer, val_pairs, cfg: Config, n_panel: int):
    """PSNR/SSIM of model and bicubic against the SIM target on the val pairs (in output units:
    ``Normalization.reference``), as ``w2sr evaluate`` measures them."""
    from training import metrics
    from training.evaluate import compare_with_target

    maths = cfg.normalization.maths
    rows, panel = [], []
    for i, pair in enumerate(val_pairs):
        out, bic, target = compare_with_target(lambda x: trainer.predict(x), pair, maths)
        r = {
            "name": pair.name,
            "psnr": float(metrics.psnr(out, target)), "ssim": float(metrics.ssim(out, target)),
            "bicubic_psnr": float(metrics.psnr(bic, target)),
            "bicubic_ssim": float(metrics.ssim(bic, target)),
        }
        rows.append(r)
        if i < n_panel:
            panel.append({**r, "output": out, "bicubic": bic, "target": target})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    return mean, panel


# --------------------------------------------------------------------------- the loop


def _fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _remove_unfinished_checkpoints(ckpt_dir: Path) -> None:
    """TensorFlow writes a checkpoint into ``ckpt-N_temp/`` and renames its files when done; a kill or
    a full disk in between leaves that folder. It never holds a usable checkpoint: remove it."""
    import shutil

    for leftover in sorted(ckpt_dir.glob("*_temp")) if ckpt_dir.is_dir() else []:
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
            log.info("removed %s, an unfinished checkpoint of an interrupted run", leftover)


def train(cfg: Config, run_dir: Path, resume: bool = False) -> Path:
    """Train both phases into ``run_dir`` (see the module docstring); returns ``run_dir``."""
    from training.strategy import will_be_chief

    run_dir = Path(run_dir)
    # only the chief writes the run folder; its role is known from TF_CONFIG before TF starts
    cfg, resuming = _prepare_run_dir(cfg, run_dir, resume, writer=will_be_chief(cfg.train.strategy))
    if resuming and (run_dir / DONE_NAME).exists():
        log.info("%s already holds a finished run (DONE); nothing to do", run_dir)
        return run_dir

    # --- checks that need no data or TensorFlow state: fail at start-up, not hours later
    if cfg.train.gan.epochs > 0 and _needs_vgg(cfg):
        from training.losses.perceptual import check_vgg_weights_available

        check_vgg_weights_available(cfg.loss)

    train_pairs, val_pairs = _load_data(cfg)
    cfg = _resolve_normalization(cfg, train_pairs)
    writer = will_be_chief(cfg.train.strategy)  # (on resume: the run's own strategy setting)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / CONFIG_NAME)

    import shutil
    import tempfile

    import keras
    import tensorflow as tf

    from training import reporting
    from training.strategy import is_chief, make_strategy, worker_id

    logging.getLogger("absl").setLevel(logging.WARNING)  # one INFO line per checkpoint otherwise
    # first TF work: MultiWorkerMirroredStrategy must be created before the runtime starts
    strategy = make_strategy(cfg.train.strategy)
    keras.utils.set_random_seed(cfg.train.seed)
    policy = keras.mixed_precision.global_policy()
    mixed = cfg.train.mixed_precision
    if mixed:
        gpu = bool(tf.config.list_logical_devices("GPU"))
        from w2sr.core.cpu import cpu_flags, native_bf16

        if mixed == "float16" and not gpu:
            log.warning("train.mixed_precision float16 on a CPU: slow here; use bfloat16 on CPUs that have it")
        if mixed == "bfloat16" and not gpu and not native_bf16(cpu_flags()):
            log.warning("train.mixed_precision bfloat16: this CPU has no native bf16 (AVX512-BF16 / AMX); "
                        "it will be emulated and slower than float32")
        keras.mixed_precision.set_global_policy(f"mixed_{mixed}")
        log.info("mixed precision: %s compute, float32 weights", mixed)
    scratch = None  # a non-chief's own checkpoint folder, outside the run folder
    try:
        chief = is_chief(strategy)
        if chief != writer:
            raise RuntimeError(f"TF_CONFIG says chief={writer} but the strategy says chief={chief}")
        if chief:
            ckpt_dir = run_dir / CHECKPOINT_DIR
            _remove_unfinished_checkpoints(ckpt_dir)
        else:
            # every worker must save (the save is a collective step), but only the chief's
            # checkpoints are kept: the others write into a temporary folder, removed at the end
            scratch = ckpt_dir = Path(tempfile.mkdtemp(prefix=f"w2sr-{worker_id(strategy)}-ckpt-"))
        gb = cfg.train.global_batch_size
        if gb % strategy.num_replicas_in_sync:
            raise UserError(
                f"train.global_batch_size={gb} is not divisible by the {strategy.num_replicas_in_sync} replicas"
            )
        trainer = Trainer(cfg, strategy, ckpt_dir)
        n_params = trainer.generator.count_params()
        log.info("generator %s: %s parameters; discriminator %s: %s parameters",
                 cfg.generator.name, f"{n_params:,}", cfg.discriminator.name,
                 f"{trainer.discriminator.count_params():,}")

        # on resume every worker restores the chief's checkpoint (run_dir on a shared file system)
        restore_dir = run_dir / CHECKPOINT_DIR
        pos = trainer.restore(None if chief else restore_dir) if resuming else None
        if resuming and pos is None:
            log.info("no checkpoint in %s yet: training from the start", restore_dir)
        pos = pos or Position()

        from training.data.pipeline import PatchSource

        # normalise and stack the training images once for the whole run (not once per epoch)
        source = PatchSource(train_pairs, cfg.data, cfg.normalization)
        del train_pairs  # the raw training images are no longer needed (source holds them normalised)
        n_patches = source.n_patches
        steps = {p: steps_per_epoch(phase_config(cfg, p), n_patches, gb, p) for p in PHASES}
        total = total_steps(cfg, steps)
        log.info("%d training patches per pass; %s", n_patches, ", ".join(
            f"{p}: {phase_config(cfg, p).epochs} epochs x {steps[p]} steps" for p in PHASES))

        metrics_log = reporting.MetricsLog(run_dir / "metrics.csv")
        tb = reporting.TensorBoard(run_dir / "tensorboard", enabled=chief)
        if chief:
            if resuming:
                removed = metrics_log.truncate_after(
                    pos.global_step,
                    # a validation of (phase, 1-based epoch e) is done once the position is past it
                    keep_val=lambda r: (PHASES.index(r["phase"]), int(r["epoch"])) <= (pos.phase, pos.epoch),
                )
                if removed:
                    log.info("metrics.csv: dropped %d rows logged after the checkpoint (re-run now)", removed)
            metrics_log.ensure_header()

        _run_loop(cfg, trainer, source, val_pairs, pos, steps, total, run_dir,
                  metrics_log, tb, chief, resuming)
        tb.close()
        if chief:
            trainer.save_generator(run_dir / "generator.keras")
            rows = metrics_log.read()
            reporting.plot_loss_curves(rows, run_dir / "loss_curves.png")
            atomic_write_text(run_dir / DONE_NAME, time.strftime("%Y-%m-%d %H:%M:%S\n"))
            log.info("training finished: %s (generator.keras, metrics.csv, panels/, loss_curves.png)", run_dir)
        else:
            log.info("worker %s finished (the chief writes the run folder)", worker_id(strategy))
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return run_dir


def _run_loop(cfg, trainer: Trainer, source, val_pairs, pos: Position, steps, total, run_dir,
              metrics_log, tb, chief: bool, resuming: bool) -> None:
    from training import reporting

    tf = trainer.tf
    every = cfg.train.checkpoint_every_steps
    start_global = pos.global_step
    t_start = time.perf_counter()
    if resuming and pos.global_step:
        log.info("continuing from global step %d of %d", pos.global_step, total)

    for phase_index, phase in enumerate(PHASES):
        if phase_index < pos.phase:
            continue
        pcfg = phase_config(cfg, phase)
        n_steps = steps[phase]
        if pos.epoch < pcfg.epochs:
            log.info("phase %d/2 '%s': %s", phase_index + 1, phase,
                     "generator on the pixel loss" if phase == "pretrain"
                     else "generator on pixel + perceptual + adversarial loss, discriminator alongside")
        step_fn = trainer.step_fn(phase) if pcfg.epochs else None
        for epoch in range(pos.epoch, pcfg.epochs):
            lr = learning_rate(pcfg, epoch)
            trainer.set_learning_rate(phase, lr)
            skip = pos.epoch_step
            if skip:
                log.info("skipping the %d batches of epoch %d already trained", skip, epoch + 1)
            ds = _epoch_dataset(source, cfg, phase_index, epoch, n_steps, skip)
            dist = trainer.strategy.experimental_distribute_dataset(ds)
            bar = reporting.ProgressBar(n_steps, skip, f"{phase} {epoch + 1}/{pcfg.epochs}", enabled=chief)
            t_epoch = time.perf_counter()
            rows = []
            try:
                for lr_b, hr_b in dist:
                    out = step_fn(lr_b, hr_b)
                    losses = {k: float(v) for k, v in out.items()}
                    pos.epoch_step += 1
                    pos.global_step += 1
                    bad = [k for k, v in losses.items() if not math.isfinite(v)]
                    if bad:
                        raise TrainingDiverged(
                            f"training diverged at global step {pos.global_step} ({phase} epoch {epoch + 1}): "
                            f"{', '.join(bad)} = {', '.join(str(losses[k]) for k in bad)}; resume from the "
                            f"last checkpoint with a lower learning rate"
                        )
                    bar.update(losses)
                    if chief:
                        rate = bar.rate
                        rows.append({"kind": "train", "phase": phase, "epoch": epoch + 1,
                                     "step": pos.global_step, "epoch_step": pos.epoch_step, "lr": lr,
                                     "steps_per_s": rate, "wall_time": round(time.time(), 3), **losses})
                        tb.scalars(pos.global_step, {f"{phase}/{k}": v for k, v in losses.items()}
                                   | {"lr": lr})
                    # (the epoch's last step is saved after validation, just below)
                    if pos.global_step % every == 0 and pos.epoch_step < n_steps:
                        if chief:
                            metrics_log.append(rows)
                        rows = []
                        t_save = time.perf_counter()
                        path = trainer.save(pos)
                        log.debug("checkpoint %s written in %.2f s", path, time.perf_counter() - t_save)
            except KeyboardInterrupt:
                bar.close()
                if chief:
                    metrics_log.append(rows)
                trainer.save(pos)
                log.warning("interrupted: checkpoint saved at global step %d; continue with --resume",
                            pos.global_step)
                raise
            bar.close()
            if chief:
                metrics_log.append(rows)
            if pos.epoch_step != n_steps:
                raise RuntimeError(
                    f"epoch {epoch + 1} of {phase} ended after {pos.epoch_step} of {n_steps} steps "
                    "(the data pipeline ran short)"
                )
            elapsed = time.perf_counter() - t_epoch
            done_now = pos.global_step - start_global
            rate = done_now / max(time.perf_counter() - t_start, 1e-9)
            log.info(
                "%s epoch %d/%d done in %s (lr %.3g): %s | global step %d/%d, about %s left",
                phase, epoch + 1, pcfg.epochs, _fmt_duration(elapsed), lr,
                ", ".join(f"{k} {v:.4g}" for k, v in bar.means().items()),
                pos.global_step, total, _fmt_duration((total - pos.global_step) / max(rate, 1e-9)),
            )
            last = epoch + 1 == pcfg.epochs
            if chief and ((epoch + 1) % cfg.train.validate_every_epochs == 0 or last):
                _validate_and_report(cfg, trainer, val_pairs, phase, epoch, pos, run_dir, metrics_log, tb)
            if last:
                _end_phase(phase, pos, trainer, run_dir, chief)
            else:
                pos.epoch += 1
                pos.epoch_step = 0
            trainer.save(pos)  # one checkpoint marks the epoch (and its validation) done
        if pos.phase == phase_index:  # a phase with 0 epochs
            _end_phase(phase, pos, trainer, run_dir, chief)
            trainer.save(pos)


def _end_phase(phase: str, pos: Position, trainer: Trainer, run_dir: Path, chief: bool) -> None:
    if phase == "pretrain" and chief and pos.global_step:
        trainer.save_generator(run_dir / "generator_pretrain.keras")
    pos.phase += 1
    pos.epoch = 0
    pos.epoch_step = 0


def _validate_and_report(cfg, trainer, val_pairs, phase, epoch, pos, run_dir, metrics_log, tb) -> None:
    from training import reporting

    t0 = time.perf_counter()
    mean, panel = validate(trainer, val_pairs, cfg, cfg.train.val_images)
    log.info(
        "validation after %s epoch %d (%d images, %.1f s): model %.2f dB / SSIM %.4f, "
        "bicubic %.2f dB / SSIM %.4f",
        phase, epoch + 1, len(val_pairs), time.perf_counter() - t0,
        mean["psnr"], mean["ssim"], mean["bicubic_psnr"], mean["bicubic_ssim"],
    )
    metrics_log.append([{
        "kind": "val", "phase": phase, "epoch": epoch + 1, "step": pos.global_step,
        "epoch_step": pos.epoch_step, "lr": trainer.get_learning_rate(),
        "val_psnr": mean["psnr"], "val_ssim": mean["ssim"],
        "bicubic_psnr": mean["bicubic_psnr"], "bicubic_ssim": mean["bicubic_ssim"],
        "wall_time": round(time.time(), 3),
    }])
    tb.scalars(pos.global_step, {"val/psnr": mean["psnr"], "val/ssim": mean["ssim"],
                                 "val/bicubic_psnr": mean["bicubic_psnr"],
                                 "val/bicubic_ssim": mean["bicubic_ssim"]})
    name = f"{phase}_epoch{epoch + 1:02d}"
    rgb = reporting.save_panel(
        run_dir / "panels" / f"{name}.png", panel,
        title=f"{cfg.name}: {phase} epoch {epoch + 1} (step {pos.global_step}) — bicubic | output | SIM target",
    )
    tb.image(pos.global_step, f"panels/{phase}", rgb)
    tb.flush()
    reporting.plot_loss_curves(metrics_log.read(), run_dir / "loss_curves.png")
