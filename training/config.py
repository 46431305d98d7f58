"""One validated configuration object for data, model, losses and training.

Everything a run needs is here, and the *resolved* copy (normalisation statistics filled in) is
written to the run folder as ``config.yaml``: export and prediction read that file, so the
normalisation used at inference is exactly the one used in training.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from w2sr.core.errors import UserError, validation_message, yaml_message
from w2sr.core.normalization import DEFAULT_PERCENTILES, Normalization

log = logging.getLogger(__name__)

NOISE_LEVELS = (1, 2, 4, 8, 16, 400)

#: Global z-score the W2S authors used over all raw widefield captures.
W2S_RAW_MEAN = 154.535390853
W2S_RAW_STD = 66.02846351802853


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_noise_level(v: int) -> int:
    if v not in NOISE_LEVELS:
        raise ValueError(f"noise_level must be one of {NOISE_LEVELS}, got {v}")
    return v


class SimulatorConfig(_Strict):
    """W2S-like synthetic pairs (see training/data/simulator.py)."""

    n_fovs: int = Field(24, ge=2, description="fields of view to simulate (numbered 1..n)")
    channels: int = Field(1, ge=1, le=3)
    lr_size: int = Field(128, ge=32, description="widefield image side (W2S: 512)")
    noise_level: int = Field(1, description="avgN level the noisiest frame mimics")
    seed: int = 0
    layout: Literal["raw", "npy", "png"] = "npy"
    n_frames: int = Field(400, ge=1, description="raw layout only: frames per FOV (W2S: 400; avg1 is frame 249)")

    _known_level = field_validator("noise_level")(_check_noise_level)


class DataConfig(_Strict):
    root: Path = Field(Path("data/simulated"), description="data folder in one of the W2S layouts")
    layout: Literal["auto", "raw", "npy", "png"] = "auto"
    noise_level: int = Field(1, description="which avgN input to train on (1, 2, 4, 8, 16, 400)")
    channels: list[int] = Field(default_factory=lambda: [0, 1, 2])
    train_fovs: list[int] = Field(default_factory=lambda: list(range(1, 81)))
    test_fovs: list[int] = Field(default_factory=lambda: list(range(81, 121)))
    #: validation subset, taken out of train_fovs
    val_fovs: list[int] = Field(default_factory=lambda: list(range(73, 81)))
    lr_patch: int = Field(64, ge=8)
    scale: Literal[2] = 2
    overlap: float = Field(0.5, ge=0.0, lt=1.0)
    #: rule for images whose size is not patch-aligned: "crop" drops the incomplete last
    #: row/column of patches, "shift" adds one extra patch flush with the far edge.
    unaligned: Literal["crop", "shift"] = "shift"
    augment: bool = True
    #: the normalized-npy layout is z-scored with the W2S constants: read it back as camera counts,
    #: so the model (and the bundle) takes raw widefield images. False keeps the z-scored values.
    npy_as_counts: bool = True
    # (no shuffle buffer: every epoch is an exact permutation of all patches)
    simulate: Optional[SimulatorConfig] = None

    _known_level = field_validator("noise_level")(_check_noise_level)

    @model_validator(mode="after")
    def _splits(self) -> "DataConfig":
        if set(self.val_fovs) - set(self.train_fovs):
            raise ValueError("val_fovs must be a subset of train_fovs")
        if set(self.train_fovs) & set(self.test_fovs):
            raise ValueError("train_fovs and test_fovs overlap")
        if not set(self.train_fovs) - set(self.val_fovs):
            raise ValueError("no training FOVs left after removing val_fovs")
        return self


class NormalizationConfig(_Strict):
    """How images are scaled for the network (the maths: ``w2sr.core.normalization.Normalization``).

    ``percentile`` (default): every input by its own low/high percentiles, so camera offset and gain
    do not matter; outputs in normalised units. In the bundle: ``scale_range`` (per sample).
    ``fixed``: W2S's global z-score of the input and an affine map back to target units; in the
    bundle ``zero_mean_unit_variance`` (mode fixed) before the network and ``scale_linear`` after it.
    In fixed mode ``None`` statistics mean "measure on the training images" when the run starts.
    A config that gives statistics but no mode is in fixed mode (run folders written before the
    percentile mode existed).
    """

    mode: Literal["percentile", "fixed"] = "percentile"  # "none" is for w2sr bundle only
    low_percentile: float = Field(DEFAULT_PERCENTILES[0], ge=0, lt=100)
    high_percentile: float = Field(DEFAULT_PERCENTILES[1], gt=0, le=100)
    input_mean: Optional[float] = None
    input_std: Optional[float] = Field(None, gt=0)
    target_mean: Optional[float] = None
    target_std: Optional[float] = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _statistics_mean_fixed(cls, data):
        stats = ("input_mean", "input_std", "target_mean", "target_std")
        if isinstance(data, dict) and "mode" not in data and any(data.get(k) is not None for k in stats):
            data = {**data, "mode": "fixed"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "NormalizationConfig":
        self.maths  # the one check of the fields (w2sr.core.normalization.Normalization)
        return self

    @property
    def resolved(self) -> bool:
        """Can training start? Fixed mode needs all four statistics; None ones are measured on the
        training images first (a bundle of a user's model may have no target statistics: not here)."""
        return self.mode == "percentile" or None not in (self.input_mean, self.input_std, self.target_mean,
                                                        self.target_std)

    @property
    def maths(self) -> Normalization:
        """The normalisation to apply (``w2sr.core.normalization.Normalization``)."""
        return Normalization.of(self)


class GeneratorConfig(_Strict):
    name: str = "rrdbnet"
    nb: int = Field(23, ge=1, description="number of RRDB blocks")
    nf: int = Field(64, ge=1, description="trunk feature channels")
    gc: int = Field(32, ge=1, description="growth channels inside a dense block")
    in_channels: Literal[1] = 1
    out_channels: Literal[1] = 1
    scale: Literal[2] = 2
    residual_scale: float = 0.2
    init_scale: float = 0.1


class DiscriminatorConfig(_Strict):
    name: str = "vgg128"
    base: int = Field(64, ge=1)
    patch: int = 128


class LossConfig(_Strict):
    pixel: Literal["l1", "l2"] = "l1"
    pretrain_pixel_weight: float = 1e-2
    pixel_weight: float = 1e-2
    perceptual_weight: float = 1e-2
    perceptual_criterion: Literal["l1", "l2"] = "l1"
    #: VGG19 layer whose *pre-activation* output is compared (report: conv3_4)
    perceptual_layer: str = "block3_conv4"
    texture_weight: float = 0.0
    adversarial_weight: float = 1.0
    discriminator_weight: float = 1.0
    #: "imagenet" (Keras cache), a path to a local .h5/.weights.h5 file, or "random" (tests only)
    vgg_weights: str = "imagenet"


class PhaseConfig(_Strict):
    epochs: int = Field(50, ge=0)
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="None = one pass over all patches")
    learning_rate: float = Field(1e-4, gt=0)
    lr_decay_per_epoch: float = Field(0.5, gt=0, le=1)


class TrainConfig(_Strict):
    global_batch_size: int = Field(16, ge=1)
    pretrain: PhaseConfig = Field(default_factory=PhaseConfig)
    gan: PhaseConfig = Field(default_factory=PhaseConfig)
    beta_1: float = 0.9
    beta_2: float = 0.99
    #: Adam's epsilon, for the generator and discriminator optimizers. ESRGAN/BasicSR train with
    #: PyTorch's 1e-8; Keras' own default 1e-7 is not negligible next to the second-moment root of
    #: gradients scaled by the 1e-2 pixel-loss weight, and would damp the early updates.
    adam_epsilon: float = Field(1e-8, gt=0)
    amsgrad: bool = True
    #: false, "float16" (GPUs; loss scaling) or "bfloat16" (CPUs with AVX512-BF16 / AMX, and recent
    #: GPUs; no loss scaling needed: bfloat16 has float32's exponent range). true means "float16".
    mixed_precision: Literal[False, "float16", "bfloat16"] = False

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _true_is_float16(cls, v):
        if v is True or (isinstance(v, str) and v.lower() in ("true", "mixed_float16")):
            return "float16"
        if v is None or (isinstance(v, str) and v.lower() in ("false", "no", "none", "off")):
            return False
        if isinstance(v, str) and v.lower() == "mixed_bfloat16":
            return "bfloat16"
        return v
    strategy: Literal["auto", "default", "mirrored", "multiworker"] = "auto"
    checkpoint_every_steps: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    validate_every_epochs: int = Field(1, ge=1)
    val_images: int = Field(4, ge=1, description="validation images shown in the PNG panels")
    seed: int = 0


class Config(_Strict):
    name: str = "w2s-esrgan"
    data: DataConfig = Field(default_factory=DataConfig)
    normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config; errors are one line naming the file and the offending key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (FileNotFoundError, IsADirectoryError):
        raise UserError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML{yaml_message(exc)}") from None
    try:
        return Config.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError, re-raised with the file name
        raise UserError(f"{path}: invalid configuration: {validation_message(exc)}") from None


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the config as YAML atomically (temp file + rename)."""
    from w2sr.core.files import atomic_write_text

    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    atomic_write_text(Path(path), text)


def packaged_config(name: str) -> Path:
    """Path of a config shipped with the package (``demo``, ``w2s-full``, ``tiny``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no packaged config '{name}'; available: {available}")
    return path


def resolve_config_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a packaged config (demo, tiny, w2s)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        return path
    try:
        return packaged_config(name_or_path)
    except FileNotFoundError as exc:
        raise UserError(f"{exc} (or give a path to a .yaml file)") from None


def apply_overrides(cfg, overrides: list[str]):
    """Return a new validated Config with ``a.b.c=VALUE`` overrides (VALUE parsed as YAML)."""
    if not overrides:
        return cfg
    data = cfg.model_dump(mode="json")
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            raise UserError(f"--set {key}: '{raw}' is not a valid YAML value") from None
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"--set {key}: unknown config key '{'.'.join(parts[: i + 1])}'")
            if node[part] is None:  # e.g. data.simulate: null -> fill in a section
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict) or (parts[-1] not in node and node):
            raise UserError(f"--set {key}: unknown config key '{key}'")
        node[parts[-1]] = value
    try:
        return Config.model_validate(data)
    except Exception as exc:  # pydantic.ValidationError
        raise UserError(f"--set: invalid value ({validation_message(exc)})") from None


def load_train_config(config: str | None, run_dir: Path, resume: bool, overrides: list[str]) -> Config:
    """The config of ``w2sr train``: ``--config`` (a name or a path; default: the run's own config on
    resume, else the demo), then the ``--set`` overrides."""
    if config is None:
        saved = run_dir / "config.yaml"
        path = saved if resume and saved.exists() else resolve_config_path("demo")
        if resume and saved.exists():
            log.info("using the run's own config %s", saved)
        else:
            log.info("no --config given: using the packaged demo config")
    else:
        path = resolve_config_path(config)
    return apply_overrides(load_config(path), overrides)
