"""Where an export's model comes from: a w2sr training run, or any user's Keras file.

``export.bundle.export_bundle`` builds, validates and packages a :class:`ModelSource`; it does not
care which of the two made it. ``w2sr export RUN`` is :func:`training_source`, ``w2sr bundle
MODEL.keras`` is :func:`keras_source`: one exporter, two ways in.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from export.keras_model import ModelSpec, inspect_model, open_model
from w2sr.core.contract import SCALE
from w2sr.core.errors import UserError
from w2sr.core.normalization import DEFAULT_PERCENTILES, Normalization

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """What the exporter takes from a model, wherever it comes from."""

    keras_path: Path
    model: Any                    # keras.Model with free spatial sizes
    spec: ModelSpec
    maths: Normalization          # the bundle's pre/post-processing
    name: str
    #: (given sample or None, smallest side) -> (raw 2D image, where it came from)
    sample: Callable[[Optional[Path], int], tuple[np.ndarray, str]]
    files: dict = field(default_factory=dict)      # name in the bundle -> file copied there
    record: dict = field(default_factory=dict)     # config.w2sr.run in the rdf
    normalization_record: dict = field(default_factory=dict)  # config.w2sr.normalization
    description: Optional[str] = None              # None: the W2S text (export.rdf)
    tags: Optional[list] = None
    cite: Optional[list] = None
    authors: Optional[list] = None
    license: Optional[str] = None
    input_description: Optional[str] = None
    output_description: Optional[str] = None
    cover_caption: str = "2x SR + denoised"
    resave: bool = False                           # the bundle's generator.keras is model.save(), not a copy


def training_source(source: str | Path, config: Optional[str | Path] = None) -> ModelSource:
    """A w2sr run folder (generator.keras + config.yaml), or its .keras file plus the config."""
    from export.assets import sample_image
    from export.savedmodel import check_generator
    from training.models import load_generator
    from training.run_folder import open_trained

    src = open_trained(source, config)
    model = load_generator(src.keras_path)
    check_generator(model, src.keras_path, scale=SCALE)
    spec = inspect_model(model, src.keras_path)
    cfg = src.cfg
    return ModelSource(
        keras_path=src.keras_path, model=model, spec=spec, maths=cfg.normalization.maths, name=cfg.name,
        sample=lambda given, size: sample_image(src, given, size),
        files={"training_config.yaml": src.config_path},
        record={"name": cfg.name, "folder": src.run_dir.name, "generator": cfg.generator.model_dump(mode="json")},
        normalization_record={k: v for k, v in cfg.normalization.model_dump().items() if v is not None},
    )


# --------------------------------------------------------------------------------------------
# any Keras model

#: what ``w2sr bundle`` exports today; other models are refused before any work, naming the feature
SUPPORTED = "1 -> 1 channel, output scale 1, 2, 3, 4 or 8, pooling networks up to a size multiple of 64"


def _refuse_unsupported(spec: ModelSpec, path: Path) -> None:
    problems = []
    if spec.in_channels != 1 or spec.out_channels != 1:
        problems.append(f"{spec.in_channels} input / {spec.out_channels} output channels")
    if spec.multiple > 64:
        problems.append(f"input sides must be divisible by {spec.multiple} (more than 6 poolings)")
    if problems:
        raise UserError(f"{path}: {'; '.join(problems)}: not supported yet by w2sr bundle "
                        f"(supported: {SUPPORTED})")


def bundle_normalization(mode: str, spec: ModelSpec, percentiles=DEFAULT_PERCENTILES,
                         mean: Optional[float] = None, std: Optional[float] = None) -> Normalization:
    """The bundle's normalisation for a user's model: ``percentile`` (default: each image scaled by its
    own percentiles, what CSBDeep and StarDist do), ``fixed`` (the training set's mean and std, given),
    ``none`` (the model takes raw values). Outputs are never mapped (a probability stays one)."""
    if mode == "fixed":
        if mean is None or std is None or not std > 0:
            raise UserError("--normalization fixed needs --mean and --std (std > 0): the statistics the model "
                            "was trained with")
        return Normalization(mode="fixed", input_mean=float(mean), input_std=float(std))
    if mode == "percentile":
        return Normalization(mode="percentile", low_percentile=float(percentiles[0]),
                             high_percentile=float(percentiles[1]))
    if mode == "none":
        return Normalization(mode="none")
    raise UserError(f"--normalization {mode}: expected percentile, fixed or none")


def synthetic_sample(size: int, seed: int = 0) -> np.ndarray:
    """Blobs and filaments on a background with noise, 0..1000 counts: something every image model
    can be run on when the user gives no image."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = np.zeros((size, size), np.float64)
    ys, xs = rng.integers(0, size, (2, max(8, size * size // 600)))
    img[ys, xs] = rng.uniform(0.5, 1.0, ys.size)
    img = gaussian_filter(img, 2.0) * 30 + gaussian_filter(rng.standard_normal((size, size)), 6) * 0.2
    img = (img - img.min()) / (np.ptp(img) + 1e-12) * 800 + 100
    return (img + rng.normal(0, 20, img.shape)).astype(np.float32)


def _user_sample(given: Optional[Path], size: int) -> tuple[np.ndarray, str]:
    if given is not None:
        from w2sr.core.images import read_image_2d

        return read_image_2d(given), str(given)
    return synthetic_sample(max(size, 256)), "synthetic (w2sr bundle: blobs on noise)"


def read_metadata(path: Optional[Path]) -> dict:
    """The small YAML of ``--meta``: name, description, authors, cite, license, tags,
    input_description, output_description. Unknown keys are refused (a typo would be lost)."""
    if path is None:
        return {}
    import yaml

    from w2sr.core.errors import yaml_message

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as exc:
        raise UserError(f"{path}: cannot read the metadata file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({yaml_message(exc)})") from None
    known = {"name", "description", "authors", "cite", "license", "tags", "input_description",
             "output_description"}
    if not isinstance(doc, dict) or set(doc) - known:
        raise UserError(f"{path}: unknown metadata key(s) {sorted(set(doc) - known) if isinstance(doc, dict) else doc!r}; "
                        f"known: {', '.join(sorted(known))}")
    for key in ("authors", "cite"):
        for item in doc.get(key) or []:
            if not isinstance(item, dict) or ("name" if key == "authors" else "text") not in item:
                raise UserError(f"{path}: each of '{key}' needs a '{'name' if key == 'authors' else 'text'}' field")
    return doc


def keras_source(path: str | Path, *, normalization: str = "percentile", percentiles=DEFAULT_PERCENTILES,
                 mean: Optional[float] = None, std: Optional[float] = None, name: Optional[str] = None,
                 meta: Optional[Path] = None) -> ModelSource:
    """Any 2D image-to-image Keras model (``.keras`` or tf.keras ``.h5``); refused in one line before
    any work when the bundle cannot describe it."""
    path = Path(path)
    info = read_metadata(Path(meta) if meta else None)
    model, spec, rebuilt = open_model(path)
    _refuse_unsupported(spec, path)
    from export.savedmodel import check_old_engine_ops

    check_old_engine_ops(model, path, spec.scale, spec.multiple)
    maths = bundle_normalization(normalization, spec, percentiles, mean, std)
    what = f"x{spec.scale} " if spec.scale > 1 else ""
    kind = "probability map (0..1)" if spec.output_kind == "probability" else "image"
    description = info.get("description") or (
        f"{path.stem}: a 2D image-to-image Keras network ({spec.describe()}), exported for DeepImageJ and the "
        f"BioImage.IO model zoo by w2sr bundle.")
    out_text = info.get("output_description") or (
        f"{what}{kind}, {spec.scale}x the input sampling, in {maths.output_units}"
        if spec.output_kind == "image" else f"{kind} ({spec.output_activation}) at {spec.scale}x the input sampling")
    return ModelSource(
        keras_path=path, model=model, spec=spec, maths=maths, name=name or info.get("name") or path.stem,
        sample=_user_sample, resave=rebuilt,
        record={"name": name or info.get("name") or path.stem, "keras_file": path.name, "model": asdict(spec)},
        normalization_record={k: v for k, v in asdict(maths).items() if v is not None},
        description=description,
        tags=info.get("tags") or ["deepimagej", "2d", "tensorflow", "onnx", "keras", "image-restoration"
                                  if spec.output_kind == "image" else "segmentation"],
        cite=info.get("cite") or [{"text": "Exported with w2sr bundle (Keras -> DeepImageJ / BioImage.IO); "
                                           "cite the model's own publication here (--meta).",
                                   "url": "https://bioimage.io"}],
        authors=info.get("authors"), license=info.get("license"),
        input_description=info.get("input_description") or (
            "raw image, converted to float32 before the normalisation" if maths.mode != "none"
            else "image in the units the model was trained on (float32; no normalisation)"),
        output_description=out_text,
        cover_caption=f"{path.stem}, {spec.describe().split(',')[1].strip()}",
    )
