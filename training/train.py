"""Two-phase ESRGAN training (report sections 2.6, 3.1, 3.3), resumable, on any tf.distribute strategy.

Phase 1 "pretrain": the generator alone on the pixel loss (weight ``loss.pretrain_pixel_weight``).
Phase 2 "gan": generator on pixel + perceptual (+ texture) + RaGAN adversarial loss, the VGG-style
discriminator trained alongside on the RaGAN discriminator loss.

Both use Adam with AMSGrad (beta_1 0.9, beta_2 0.99, epsilon ``train.adam_epsilon`` = 1e-8 as in
ESRGAN/BasicSR, not Keras' 1e-7) and a learning rate of
``phase.learning_rate * phase.lr_decay_per_epoch ** epoch`` (halved after every epoch by default);
generator and discriminator have their own optimizers.

A run lives in one folder (``training.run_folder``). Checkpoints hold G, D, both optimizers and the
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
from pathlib import Path

import numpy as np

from training.config import Config, dump_config
from training.run_folder import RunFolder
from training.trainer import (PHASES, Position, Trainer, TrainingDiverged, data_epoch, learning_rate, needs_vgg,
                              phase_config, steps_per_epoch, total_steps)
from w2sr.core.errors import UserError
from w2sr.core.files import atomic_write_text

log = logging.getLogger(__name__)

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


def train(cfg: Config, run_dir: Path, resume: bool = False) -> Path:
    """Train both phases into ``run_dir`` (see the module docstring); returns ``run_dir``."""
    from training.strategy import will_be_chief

    run = RunFolder(run_dir)
    run_dir = run.root
    # only the chief writes the run folder; its role is known from TF_CONFIG before TF starts
    cfg, resuming = run.prepare(cfg, resume, writer=will_be_chief(cfg.train.strategy))
    if resuming and run.finished:
        log.info("%s already holds a finished run (DONE); nothing to do", run_dir)
        return run_dir

    # --- checks that need no data or TensorFlow state: fail at start-up, not hours later
    if cfg.train.gan.epochs > 0 and needs_vgg(cfg):
        from training.losses.perceptual import check_vgg_weights_available

        check_vgg_weights_available(cfg.loss)

    train_pairs, val_pairs = _load_data(cfg)
    cfg = _resolve_normalization(cfg, train_pairs)
    writer = will_be_chief(cfg.train.strategy)  # (on resume: the run's own strategy setting)
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run.config)

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
            ckpt_dir = run.checkpoints
            run.remove_unfinished_checkpoints()
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
        restore_dir = run.checkpoints
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

        metrics_log = reporting.MetricsLog(run.metrics)
        tb = reporting.TensorBoard(run.tensorboard, enabled=chief)
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

        _run_loop(cfg, trainer, source, val_pairs, pos, steps, total, run,
                  metrics_log, tb, chief, resuming)
        tb.close()
        if chief:
            trainer.save_generator(run.generator)
            rows = metrics_log.read()
            reporting.plot_loss_curves(rows, run.loss_curves)
            atomic_write_text(run.done, time.strftime("%Y-%m-%d %H:%M:%S\n"))
            log.info("training finished: %s (generator.keras, metrics.csv, panels/, loss_curves.png)", run_dir)
        else:
            log.info("worker %s finished (the chief writes the run folder)", worker_id(strategy))
    finally:
        keras.mixed_precision.set_global_policy(policy)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return run_dir


def _run_loop(cfg, trainer: Trainer, source, val_pairs, pos: Position, steps, total, run: RunFolder,
              metrics_log, tb, chief: bool, resuming: bool) -> None:
    from training import reporting

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
                _validate_and_report(cfg, trainer, val_pairs, phase, epoch, pos, run, metrics_log, tb)
            if last:
                _end_phase(phase, pos, trainer, run, chief)
            else:
                pos.epoch += 1
                pos.epoch_step = 0
            trainer.save(pos)  # one checkpoint marks the epoch (and its validation) done
        if pos.phase == phase_index:  # a phase with 0 epochs
            _end_phase(phase, pos, trainer, run, chief)
            trainer.save(pos)


def _end_phase(phase: str, pos: Position, trainer: Trainer, run: RunFolder, chief: bool) -> None:
    if phase == "pretrain" and chief and pos.global_step:
        trainer.save_generator(run.generator_pretrain)
    pos.phase += 1
    pos.epoch = 0
    pos.epoch_step = 0


def _validate_and_report(cfg, trainer, val_pairs, phase, epoch, pos, run, metrics_log, tb) -> None:
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
        run.panels / f"{name}.png", panel,
        title=f"{cfg.name}: {phase} epoch {epoch + 1} (step {pos.global_step}) — bicubic | output | SIM target",
    )
    tb.image(pos.global_step, f"panels/{phase}", rgb)
    tb.flush()
    reporting.plot_loss_curves(metrics_log.read(), run.loss_curves)
