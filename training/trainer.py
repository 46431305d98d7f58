"""The training step machinery: where a run stands (:class:`Position`), the learning-rate schedule and
step counts, and :class:`Trainer` (models, optimizers, the tf.function steps, checkpoints), built in a
tf.distribute strategy. ``training.train`` runs the loop around it; the benchmark uses it directly."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from training.config import Config, PhaseConfig
from w2sr.core.errors import UserError
from w2sr.core.files import atomic_path

log = logging.getLogger(__name__)

PHASES = ("pretrain", "gan")


class TrainingDiverged(UserError):
    """A loss became NaN or infinite."""


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


def needs_vgg(cfg: Config) -> bool:
    """Does phase 2 use the VGG19 features (perceptual or texture loss)?"""
    return cfg.loss.perceptual_weight > 0 or cfg.loss.texture_weight > 0


def total_steps(cfg: Config, steps: dict[str, int]) -> int:
    return sum(phase_config(cfg, p).epochs * steps[p] for p in PHASES)


class Trainer:
    """Models, optimizers, the tf.function train steps and the checkpoint, built in a strategy.

    ``Trainer(cfg, strategy).step_fn("pretrain" | "gan")(lr_batch, hr_batch) -> {loss: value}``
    runs one optimisation step on a (distributed) batch; the benchmark uses it directly.
    """

    def __init__(self, cfg: Config, strategy, ckpt_dir: Optional[Path] = None):
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
            if need_gan and needs_vgg(cfg):
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
