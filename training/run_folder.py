"""The run folder: what training writes there, and how training (start, resume), evaluation, the demo
and the export find and open it. The one owner of its file names::

    RUN/
      config.yaml                the resolved config (normalisation measured on the training images)
      checkpoints/               TensorFlow checkpoints (resume)
      metrics.csv                one row per step and per validation
      panels/*.png               input | bicubic | model | target, per validation
      loss_curves.png            the losses and validation PSNR so far
      tensorboard/               the same, for TensorBoard
      generator_pretrain.keras   the generator after phase 1
      generator.keras            the final generator (what the export takes)
      evaluation.csv             per-image results of ``w2sr evaluate`` / the demo
      DONE                       written last: the run finished
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from training.config import Config, load_config
from w2sr.core.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # the files -------------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.csv"

    @property
    def panels(self) -> Path:
        return self.root / "panels"

    @property
    def loss_curves(self) -> Path:
        return self.root / "loss_curves.png"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def generator_pretrain(self) -> Path:
        return self.root / "generator_pretrain.keras"

    @property
    def generator(self) -> Path:
        return self.root / "generator.keras"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation.csv"

    @property
    def done(self) -> Path:
        return self.root / "DONE"

    @property
    def finished(self) -> bool:
        return self.done.exists()

    def is_empty(self) -> bool:
        return not (self.root.is_dir() and any(self.root.iterdir()))

    # start / resume --------------------------------------------------------------------------
    def prepare(self, cfg: Config, resume: bool, writer: bool = True) -> tuple[Config, bool]:
        """Refuse to overwrite a run; on resume, return the run's own config. -> (cfg, resuming).

        Reads only. ``writer=False`` (a non-chief worker of a cluster, which never writes the run
        folder) skips the refusal of a non-empty folder: the chief may already have started filling it.
        """
        run_dir = self.root
        non_empty = not self.is_empty()
        if run_dir.exists() and not run_dir.is_dir():
            raise UserError(f"run folder {run_dir} is a file, not a folder")
        if not resume and not writer:
            return cfg, False
        if not resume:
            if non_empty:
                raise UserError(f"run folder {run_dir} is not empty (it holds an earlier run); pass --resume to "
                                f"continue it, or choose another --run-dir")
            return cfg, False
        if not non_empty:
            log.info("nothing to resume in %s: starting a new run there", run_dir)
            return cfg, False
        if not self.config.exists():
            raise UserError(f"cannot resume {run_dir}: it has no {self.config.name}, so it is not a training "
                            f"run folder")
        try:
            saved = load_config(self.config)
        except UserError as exc:
            raise UserError(f"cannot resume: {exc}") from None
        compare = cfg
        if not cfg.normalization.resolved:
            compare = cfg.model_copy(update={"normalization": saved.normalization})
        diffs = config_differences(saved, compare)
        if diffs:
            log.warning("resuming with the run's own %s; the config given differs in %s (ignored)",
                        self.config, ", ".join(diffs[:8]) + (" ..." if len(diffs) > 8 else ""))
        return saved, True

    def remove_unfinished_checkpoints(self) -> None:
        """TensorFlow writes a checkpoint into ``ckpt-N_temp/`` and renames its files when done; a kill
        or a full disk in between leaves that folder. It never holds a usable checkpoint: remove it."""
        ckpt_dir = self.checkpoints
        for leftover in sorted(ckpt_dir.glob("*_temp")) if ckpt_dir.is_dir() else []:
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
                log.info("removed %s, an unfinished checkpoint of an interrupted run", leftover)

    # a finished run --------------------------------------------------------------------------
    def resolved_config(self, path: Optional[Path] = None) -> Config:
        """The run's config (or ``path``), with its normalisation resolved; UserError naming the file."""
        path = Path(path) if path is not None else self.config
        if not path.is_file():
            raise UserError(f"{path}: config not found (the resolved training config.yaml holds the "
                            f"normalisation; pass --config)")
        cfg = load_config(path)
        if not cfg.normalization.resolved:
            raise UserError(f"{path}: normalization is not resolved (fixed mode: input_mean/input_std/"
                            f"target_mean/target_std must be numbers; use the run's config.yaml written by "
                            f"training)")
        return cfg

    def load_generator(self):
        """The final generator (keras.Model); UserError naming the file."""
        from training.models import load_generator

        return load_generator(self.generator)


def config_differences(a: Config, b: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    out: list[str] = []

    def walk(x, y, path):
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{path}.{k}" if path else k)
        elif x != y:
            out.append(path)

    walk(a.model_dump(mode="json"), b.model_dump(mode="json"), "")
    return out


@dataclass
class TrainedModel:
    """What an export takes from a run: the generator file, its resolved config and where they are."""
    keras_path: Path
    config_path: Path
    run_dir: Path
    cfg: Config


def open_trained(source: str | Path, config: Optional[str | Path] = None) -> TrainedModel:
    """A run folder (generator.keras + config.yaml), or a .keras file plus its config."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source}: run folder (or .keras file) not found")
    if source.is_dir():
        run = RunFolder(source)
        if not run.generator.is_file():
            hint = "" if run.finished else " (training not finished: no DONE marker either)"
            raise UserError(f"{source}: not a finished run folder, no {run.generator.name}{hint}")
        if not run.finished:
            log.warning("%s: no DONE marker; exporting %s as it is", source, run.generator.name)
        keras_path = run.generator
    elif source.suffix == ".keras":
        run, keras_path = RunFolder(source.parent), source
    else:
        raise UserError(f"{source}: expected a run folder or a .keras file")
    config_path = Path(config) if config is not None else run.config
    return TrainedModel(keras_path=keras_path, config_path=config_path, run_dir=run.root,
                        cfg=run.resolved_config(config_path))
