"""Perceptual (VGG19 feature) loss, taken BEFORE the activation, and an optional Gram/texture loss.

Why pre-activation: ESRGAN (and the report, 2.4.2) compare conv features before their ReLU,
which keeps the information the ReLU would zero and avoids brightness drift. Keras'
``block3_conv4`` output includes its ReLU (the original code's defect), so the feature model
here ends in a *linear copy* of the chosen conv layer, sharing its weights.

Input mapping (documented choice). Training images are z-scored (``(hr - target_mean) /
target_std``), while the Keras VGG19 weights expect 0-255 RGB in "caffe" preprocessing. A
z-scored grayscale image is mapped affinely to ImageNet's pixel statistics,
``gray = 114.799 + 57.63 * z`` (mean and std of ImageNet's RGB pixel means/stds in 0-255 units),
replicated to 3 channels, reordered RGB->BGR and mean-subtracted with
[103.939, 116.779, 123.68] (exactly ``keras.applications.vgg19.preprocess_input``). The map is
fixed (no per-image stretch, no clipping), so prediction and target go through the same map and
gradients never vanish.

Weights: ``"imagenet"`` (Keras' cache file, no download here), a local file path, or
``"random"`` (tests/demo only; the loss is then not meaningful and a WARNING says so).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import keras
from keras import layers, ops

from w2sr.core.errors import UserError

logger = logging.getLogger(__name__)

VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
#: md5 Keras checks for the file above
VGG19_NOTOP_MD5 = "253f8cb515780f3b799900260a226db6"
VGG19_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                   + VGG19_NOTOP_FILE)

#: caffe-mode ImageNet channel means, BGR order, 0-255 (keras.applications.imagenet_utils)
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
#: ImageNet RGB pixel std in 0-255 units (0.229, 0.224, 0.225 x 255)
IMAGENET_RGB_STD = (58.395, 57.12, 57.375)
GRAY_MEAN = sum(IMAGENET_BGR_MEAN) / 3.0   # 114.799
GRAY_STD = sum(IMAGENET_RGB_STD) / 3.0     # 57.63

_WEIGHT_SUFFIXES = (".h5", ".hdf5", ".keras")


def keras_cache_dir() -> Path:
    """Where ``keras.utils.get_file`` keeps downloaded models (same rules as Keras 3)."""
    if "KERAS_HOME" in os.environ:
        base = Path(os.environ["KERAS_HOME"]).expanduser()
    else:
        home = Path("~").expanduser()
        base = (home if os.access(home, os.W_OK) else Path("/tmp")) / ".keras"
    if base.exists() and not os.access(base, os.W_OK):
        base = Path("/tmp/.keras")
    return base / "models"


def imagenet_weights_path() -> Path:
    """The file Keras loads for ``VGG19(weights="imagenet", include_top=False)``."""
    return keras_cache_dir() / VGG19_NOTOP_FILE


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_imagenet_message(path: Path) -> str:
    return (f"VGG19 ImageNet weights not found: {path} (no download possible here). "
            f"Put {VGG19_NOTOP_FILE} (from {VGG19_NOTOP_URL}) at that path, or set "
            f"loss.vgg_weights to a local .h5 file")


def _check_weights_file(path: Path) -> None:
    """A cheap check that ``path`` is a readable weights file; UserError naming it otherwise."""
    if not path.is_file():
        raise UserError(f"VGG19 weights file not found: {path} (loss.vgg_weights)")
    if not path.name.endswith(_WEIGHT_SUFFIXES):
        raise UserError(f"{path}: VGG19 weights must be a Keras .h5/.weights.h5/.keras file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    expected = b"PK" if path.suffix == ".keras" else b"\x89HDF\r\n\x1a\n"
    if not head.startswith(expected):
        raise UserError(f"{path}: not a valid {'Keras archive' if expected == b'PK' else 'HDF5'} "
                        f"file (corrupt or incomplete VGG19 weights)")


def _verified_imagenet_file() -> Path:
    """The Keras-cache ImageNet file, present and with the md5 Keras expects; UserError otherwise."""
    path = imagenet_weights_path()
    if not path.is_file():
        raise UserError(_missing_imagenet_message(path))
    _check_weights_file(path)
    if _md5(path) != VGG19_NOTOP_MD5:
        raise UserError(f"{path}: corrupt or incomplete VGG19 ImageNet weights (md5 differs "
                        f"from {VGG19_NOTOP_MD5}); replace the file")
    return path


def check_vgg_weights_available(loss_cfg) -> Optional[Path]:
    """Fail fast at start-up if the perceptual loss will need VGG19 weights that are not here.

    Returns the weights file that will be used, or None (loss unused, or random weights).
    """
    if not (loss_cfg.perceptual_weight or loss_cfg.texture_weight):
        logger.info("perceptual and texture weights are 0: VGG19 not needed")
        return None
    weights = loss_cfg.vgg_weights
    if weights == "random":
        logger.warning("loss.vgg_weights is 'random': the perceptual loss is NOT meaningful "
                       "(use only for tests and the demo)")
        return None
    if weights == "imagenet":
        return _verified_imagenet_file()
    path = Path(weights).expanduser()
    _check_weights_file(path)
    return path


def load_vgg19(weights: str = "imagenet") -> keras.Model:
    """VGG19 without its classifier, input (None, None, None, 3), with the requested weights."""
    if weights == "random":
        logger.warning("VGG19 with RANDOM weights: the perceptual loss is not meaningful "
                       "(tests and demo only)")
        return keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    if weights == "imagenet":
        # Verified here and loaded as a local file: Keras' own loader would try to download on
        # a missing or mismatching file, which cannot work (or hangs) without internet.
        path = _verified_imagenet_file()
    else:
        path = Path(weights).expanduser()
        _check_weights_file(path)
    model = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise UserError(f"{path}: could not load VGG19 weights from this file: {exc}") from None
    logger.info("VGG19 weights loaded from %s", path)
    return model


def vgg_feature_model(layer: str = "block3_conv4", weights: str = "imagenet",
                      vgg: Optional[keras.Model] = None) -> keras.Model:
    """VGG19 truncated at ``layer``, whose output is that conv's output BEFORE its ReLU."""
    vgg = vgg if vgg is not None else load_vgg19(weights)
    convs = [lyr.name for lyr in vgg.layers if isinstance(lyr, layers.Conv2D)]
    if layer not in convs:
        raise UserError(f"loss.perceptual_layer '{layer}' is not a VGG19 conv layer; "
                        f"choose one of: {', '.join(convs)}")
    inp = keras.Input(shape=(None, None, 3), name="vgg_input")
    x = inp
    for lyr in vgg.layers:
        if isinstance(lyr, layers.InputLayer):
            continue
        if lyr.name == layer:
            config = lyr.get_config()
            config.update(activation="linear", name=f"{layer}_preact")
            linear = layers.Conv2D.from_config(config)
            x = linear(x)
            linear.set_weights(lyr.get_weights())
            break
        x = lyr(x)
    model = keras.Model(inp, x, name=f"vgg19_{layer}_preact")
    model.trainable = False
    return model


def to_vgg_input(z):
    """z-scored grayscale (B, H, W, 1) -> caffe-preprocessed BGR (B, H, W, 3) for VGG19."""
    gray = ops.cast(z, "float32") * GRAY_STD + GRAY_MEAN
    rgb = ops.concatenate([gray, gray, gray], axis=-1)
    bgr = ops.flip(rgb, axis=-1)
    return bgr - ops.convert_to_tensor(IMAGENET_BGR_MEAN, dtype="float32")


def gram_matrix(features):
    """Per-image Gram matrix of (B, H, W, C) features, normalised by H*W*C (as BasicSR)."""
    f = ops.cast(features, "float32")
    shape = ops.shape(f)
    h, w, c = shape[1], shape[2], shape[3]
    flat = ops.reshape(f, (shape[0], h * w, c))
    gram = ops.einsum("bnc,bnd->bcd", flat, flat)
    return gram / ops.cast(h * w * c, "float32")


def _criterion(kind: str):
    if kind == "l1":
        return lambda a, b: ops.mean(ops.abs(a - b))
    if kind == "l2":
        return lambda a, b: ops.mean(ops.square(a - b))
    raise ValueError(f"unknown perceptual criterion '{kind}', expected 'l1' or 'l2'")


class PerceptualLoss:
    """``loss(y_true, y_pred) = perceptual_weight * C(F(y_true), F(y_pred))
    + texture_weight * C(Gram F(y_true), Gram F(y_pred))`` with F the pre-activation VGG19
    feature at ``layer`` and C the L1 or L2 criterion. Inputs: z-scored (B, H, W, 1).

    ``terms()`` returns both parts unweighted (for logging).
    """

    def __init__(self, layer: str = "block3_conv4", criterion: str = "l1",
                 weights: str = "imagenet", texture_weight: float = 0.0,
                 perceptual_weight: float = 1.0, feature_model: Optional[keras.Model] = None):
        self.layer = layer
        self.criterion_name = criterion
        self.criterion = _criterion(criterion)
        self.weights = weights
        self.texture_weight = float(texture_weight)
        self.perceptual_weight = float(perceptual_weight)
        self.feature_model = feature_model if feature_model is not None else vgg_feature_model(layer, weights)

    @classmethod
    def from_config(cls, loss_cfg) -> "PerceptualLoss":
        """From a ``LossConfig``: layer, criterion, weights, perceptual and texture weights."""
        return cls(layer=loss_cfg.perceptual_layer, criterion=loss_cfg.perceptual_criterion,
                   weights=loss_cfg.vgg_weights, texture_weight=loss_cfg.texture_weight,
                   perceptual_weight=loss_cfg.perceptual_weight)

    def features(self, images):
        """Pre-activation VGG19 features of z-scored grayscale images, float32."""
        return ops.cast(self.feature_model(to_vgg_input(images), training=False), "float32")

    def terms(self, y_true, y_pred) -> dict:
        """{"perceptual": ..., "texture": ...}, unweighted; texture is 0 when its weight is 0."""
        n = ops.shape(y_true)[0]
        both = self.features(ops.concatenate([ops.cast(y_true, "float32"),
                                              ops.cast(y_pred, "float32")], axis=0))
        f_true = ops.stop_gradient(both[:n])
        f_pred = both[n:]
        result = {"perceptual": self.criterion(f_true, f_pred)}
        if self.texture_weight:
            result["texture"] = self.criterion(gram_matrix(f_true), gram_matrix(f_pred))
        else:
            result["texture"] = ops.zeros((), dtype="float32")
        return result

    def __call__(self, y_true, y_pred):
        t = self.terms(y_true, y_pred)
        return self.perceptual_weight * t["perceptual"] + self.texture_weight * t["texture"]
