"""What a user's Keras model is, read from the model itself before any export work starts.

``w2sr bundle MODEL.keras`` takes any 2D image-to-image Keras model. Everything the bundle has to
state is detected here, by running the model on probe inputs rather than by trusting layer names:

* channels in and out (the input's and output's last axis);
* the output scale (output side / input side: 1, 2, 4 ...), whatever makes it (UpSampling2D,
  Conv2DTranspose, depth_to_space, a W2S generator's nearest upsampling);
* the size multiple the model needs (a U-Net with k poolings needs sides divisible by 2^k): the
  smallest m for which sides m*3 and m*5 both run with the right output size;
* the output's kind: ``probability`` when the last op is a sigmoid or softmax (no output
  normalisation may be applied), else ``image``.

What the bundle cannot carry is refused here in one line naming the model and what is wrong
(several inputs or outputs, not a 2D image model, a size rule that is not ``scale x input``).
Ops the old engines or tf2onnx cannot take are refused by the SavedModel and ONNX steps themselves
(``export.savedmodel.check_graph_ops``, ``export.onnx_export``), before any validation work.

A model saved with a fixed input size (``Input((256, 256, 1))``, common for patch training) is
rebuilt with free spatial sizes from its own config and weights: DeepImageJ's tiles, the test
tensors and whole images then all fit it.
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from w2sr.core.errors import UserError

log = logging.getLogger(__name__)

#: size multiples tried (a side must be divisible by this); a U-Net deeper than 6 poolings is refused
MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
#: output scales the bundle describes
SCALES = (1, 2, 3, 4, 8)
PROBABILITY_ACTIVATIONS = ("sigmoid", "softmax", "hard_sigmoid")


@dataclass(frozen=True)
class ModelSpec:
    """A 2D image-to-image Keras model as the bundle describes it."""

    in_channels: int
    out_channels: int
    scale: int              # output side / input side
    multiple: int           # every input side must be divisible by this (1: any side)
    output_kind: str        # "image" or "probability" (sigmoid / softmax output)
    output_activation: str  # the last layer's activation ("linear" when none)
    n_params: int

    def describe(self) -> str:
        size = "any size" if self.multiple == 1 else f"sides divisible by {self.multiple}"
        return (f"{self.in_channels} -> {self.out_channels} channel(s), x{self.scale}, {size}, "
                f"{self.output_kind} output ({self.output_activation}), {self.n_params:,} parameters")


def load_keras_model(path: str | Path) -> Any:
    """A ``.keras`` (Keras 3) or ``.h5`` (tf.keras / Keras 2) file -> keras.Model, not compiled."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: not a Keras .keras file (not a zip archive: truncated or damaged?)")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise UserError(f"{path}: expected a Keras model file (.keras, or .h5 from tf.keras)")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = (" (a Lambda layer or custom layer: Keras cannot load it without its Python code; "
                "replace it with a built-in layer or register it)") if "lambda" in first.lower() or \
            "unknown" in first.lower() or "custom" in first.lower() else ""
        raise UserError(f"{path}: cannot load the Keras model: {first[:300]}{hint}") from None


def free_spatial_size(model: Any, source: str | Path = "model") -> Any:
    """``model`` itself when its input takes any height and width, else the same network rebuilt
    from its config with ``(None, None, C)`` inputs and its weights copied."""
    import keras

    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or (shape[1] is None and shape[2] is None):
        return model
    try:
        config = model.get_config()
        for layer in config.get("layers", []):
            if layer.get("class_name") == "InputLayer":
                cfg = layer["config"]
                key = "batch_shape" if "batch_shape" in cfg else "batch_input_shape"
                cfg[key] = [None, None, None, cfg[key][-1]]
        rebuilt = model.__class__.from_config(config)
        rebuilt.set_weights(model.get_weights())
    except Exception as exc:
        raise UserError(f"{source}: input size fixed at {shape[1]}x{shape[2]} and the model cannot be rebuilt "
                        f"with free sizes ({str(exc).splitlines()[0][:200]}); rebuild it with "
                        f"Input((None, None, {shape[-1]})) and the same weights") from None
    log.info("%s: input size fixed at %sx%s; rebuilt with free spatial sizes (same weights)", source, shape[1], shape[2])
    return rebuilt


def _run(model: Any, h: int, w: int, c: int) -> Optional[tuple]:
    """Output shape for a zero (1, h, w, c) input, None when the model cannot take it."""
    try:
        out = model(np.zeros((1, h, w, c), np.float32), training=False)
    except Exception:
        return None
    return tuple(np.asarray(out).shape)


def _last_activation(model: Any) -> str:
    """The activation of the layer that makes the output ("linear" when it has none)."""
    layer = model.layers[-1] if model.layers else None
    act = getattr(layer, "activation", None)
    if act is None:
        return "linear"
    name = getattr(act, "__name__", None) or type(act).__name__
    return str(name).lower()


def inspect_model(model: Any, source: str | Path = "model") -> ModelSpec:
    """Detect what the bundle must state about ``model`` (a keras.Model with free spatial sizes);
    UserError in one line for a model the bundle cannot describe."""
    inputs, outputs = list(getattr(model, "inputs", None) or []), list(getattr(model, "outputs", None) or [])
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(f"{source}: {len(inputs)} input(s) and {len(outputs)} output(s); a bundle describes one "
                        f"image in and one image out (DeepImageJ runs single-input single-output models)")
    in_shape, out_shape = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(in_shape) != 4 or len(out_shape) != 4:
        raise UserError(f"{source}: input {in_shape} -> output {out_shape} is not a 2D image model "
                        f"(expected (batch, height, width, channels) on both sides)")
    if in_shape[-1] is None or out_shape[-1] is None:
        raise UserError(f"{source}: the channel count must be fixed (input {in_shape}, output {out_shape})")
    c_in, c_out = int(in_shape[-1]), int(out_shape[-1])
    multiple = scale = None
    for m in MULTIPLES:
        shapes = [_run(model, m * a, m * b, c_in) for a, b in ((3, 5), (5, 3))]
        if None in shapes:
            continue
        (_, h1, w1, k1), (_, h2, w2, k2) = shapes
        ratios = {h1 / (3 * m), w1 / (5 * m), h2 / (5 * m), w2 / (3 * m)}
        if len(ratios) != 1 or k1 != c_out or k2 != c_out:
            raise UserError(f"{source}: output size is not a fixed multiple of the input size "
                            f"({3 * m}x{5 * m} -> {h1}x{w1}, {5 * m}x{3 * m} -> {h2}x{w2}); a bundle needs "
                            f"output = scale x input (crop or pad inside the model)")
        r = ratios.pop()
        if r != int(r) or int(r) not in SCALES:
            raise UserError(f"{source}: output side / input side = {r:g}; supported scales: "
                            f"{', '.join(map(str, SCALES))}")
        multiple, scale = m, int(r)
        break
    if multiple is None:
        raise UserError(f"{source}: the model runs on no input of sides {MULTIPLES[-1]}x3 .. {MULTIPLES[-1]}x5 or "
                        f"smaller multiples ({c_in} channel(s)); it cannot tile images")
    activation = _last_activation(model)
    kind = "probability" if activation in PROBABILITY_ACTIVATIONS else "image"
    spec = ModelSpec(in_channels=c_in, out_channels=c_out, scale=scale, multiple=multiple, output_kind=kind,
                     output_activation=activation, n_params=int(model.count_params()))
    log.info("%s: %s", source, spec.describe())
    return spec


def open_model(path: str | Path) -> tuple[Any, ModelSpec, bool]:
    """Load, free the spatial sizes, inspect: the model the exporter freezes, what it is, and whether
    it was rebuilt (then the bundle carries the rebuilt model, not the file)."""
    loaded = load_keras_model(path)
    model = free_spatial_size(loaded, path)
    return model, inspect_model(model, path), model is not loaded
