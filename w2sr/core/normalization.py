"""The bundle's pre- and post-processing, in numpy, exactly as the rdf declares them: the one owner
of the normalisation maths, used by training, evaluation, export, ``w2sr predict`` and the checks.

Two modes (``normalization.mode`` in the config):

* ``percentile`` (default): every image is scaled by its own low/high percentiles,
  ``(x - lo) / (hi - lo + eps)``, so a camera offset or gain does not change the result. The
  percentile is JDLL 0.6.1's (``ScaleRangeTransformation.findPercentileValue``, read in its source):
  ``sorted[int(N * p / 100)]`` over the whole float32 image, computed in float64. The training target
  is scaled by its own percentiles too, so the network's output is in *normalised units* (about 0 at
  the background, 1 at bright structures); it is not mapped back, because DeepImageJ cannot (JDLL
  has no ``scale_range`` with ``reference_tensor``). In the rdf: ``scale_range`` (per sample, axes xy).
  An image whose two percentiles coincide (constant, or nearly) is refused by training and
  evaluation (:class:`NormalizationError`); ``w2sr predict`` warns and gives DeepImageJ's (and
  bioimageio.core's) result, ``(x - lo) / (hi - lo + eps)`` anyway (``measure(image, strict=False)``).
* ``fixed``: W2S's global z-score. Pre: ``(x - mean) / (std + eps)``; post: the affine map
  ``gain * y + offset`` with gain = target_std, offset = target_mean (in the rdf a fixed
  ``zero_mean_unit_variance`` with mean = -offset/gain, std = 1/gain - eps; see export/rdf.py), so
  outputs are in the training targets' (SIM) units.

* ``none`` (``w2sr bundle`` of a model that takes raw values): the input is only cast to float32.
  A ``fixed`` model without target statistics has no output map either (``maps_output``).

All are ops DeepImageJ 3 (JDLL) implements.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

#: epsilon of bioimageio's zero_mean_unit_variance (spec default)
EPS = 1e-6


def preprocess(image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Raw intensities (any dtype) -> network input, float32. Casts first (no 8/16-bit rounding)."""
    x = np.asarray(image, dtype=np.float32)
    return ((x - np.float32(mean)) / np.float32(std + EPS)).astype(np.float32)


def postprocess(output: np.ndarray, target_mean: float, target_std: float) -> np.ndarray:
    """Network output -> target (SIM) intensity units, float32."""
    y = np.asarray(output, dtype=np.float32)
    return (y * np.float32(target_std) + np.float32(target_mean)).astype(np.float32)


def inverse_postprocess(image: np.ndarray, target_mean: float, target_std: float) -> np.ndarray:
    return ((np.asarray(image, np.float32) - np.float32(target_mean)) / np.float32(target_std)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# percentile mode

MODES = ("percentile", "fixed", "none")
#: default low/high percentiles of the percentile mode (CSBDeep's and StarDist's defaults)
DEFAULT_PERCENTILES = (1.0, 99.8)


class NormalizationError(ValueError):
    """An image that the normalisation cannot scale (its percentiles coincide)."""


def jdll_percentiles(image: np.ndarray, percentiles) -> list[float]:
    """JDLL 0.6.1's percentiles of the whole image: ``sorted[int(N * (p / 100))]``, clamped to the last
    element, on the float32 copy JDLL makes of the image (no interpolation, unlike numpy's default).
    One float32 copy of the image, partitioned in place (not sorted) for all of them at once."""
    flat = np.array(image, np.float32).ravel()
    n = flat.size
    ks = [min(int(n * (float(p) / 100.0)), n - 1) for p in percentiles]
    flat.partition(sorted(set(ks)))
    return [float(flat[k]) for k in ks]


def definitions_agree(n_pixels: int, percentiles) -> bool:
    """Whether numpy's interpolated percentile (bioimageio.core's) and JDLL's ``sorted[int(N p / 100)]``
    pick the same element for an image of ``n_pixels``: when ``(N - 1) p / 100`` is a whole number for
    every ``p`` (then it equals ``int(N p / 100)`` and numpy interpolates nothing)."""
    from fractions import Fraction

    return all(((n_pixels - 1) * Fraction(str(p)) / 100).denominator == 1 for p in percentiles)


def jdll_percentile(image: np.ndarray, percentile: float) -> float:
    return jdll_percentiles(image, [percentile])[0]


def _ordinal(p: float) -> str:
    """1 -> '1st', 99.8 -> '99.8th', 2 -> '2nd'."""
    text = f"{p:g}"
    if "." in text or p % 100 in (11, 12, 13):
        return text + "th"
    return text + {1: "st", 2: "nd", 3: "rd"}.get(int(p) % 10, "th")


def percentile_range(image: np.ndarray, low: float, high: float, strict: bool = True) -> tuple[float, float]:
    """(lo, hi) of one whole image. When they coincide (an image that is constant over more than
    ``high - low`` percent of its pixels), ``strict`` (training, evaluation, the checks) raises
    :class:`NormalizationError`; otherwise (``w2sr predict``) they are returned anyway, and
    :func:`scale_range` then gives what DeepImageJ and bioimageio.core give: ``(x - lo) / eps``,
    all zeros for a constant image (see :attr:`PercentileMap.degenerate`)."""
    lo, hi = jdll_percentiles(image, [low, high])
    if strict and not hi > lo:
        raise NormalizationError(
            f"{equal_percentiles(low, high, lo, 'image')}, so percentile normalisation is undefined")
    return lo, hi


def equal_percentiles(low: float, high: float, value: float, what: str = "image") -> str:
    """'its 1st and 99.8th percentiles are equal (7): the image is (nearly) constant'."""
    return (f"its {_ordinal(low)} and {_ordinal(high)} percentiles are equal ({value:g}): the {what} is "
            f"(nearly) constant")


def scale_range(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(x - lo) / (hi - lo + eps)`` as JDLL computes it: in float64, stored as float32."""
    return ((np.asarray(x, np.float64) - lo) / (hi - lo + EPS)).astype(np.float32)


@dataclass(frozen=True)
class PercentileMap:
    """One image's percentile normalisation, measured once on the whole image (so that tiles
    normalised separately get the numbers of the whole image): ``(x - lo) / (hi - lo + eps)``."""

    lo: float
    hi: float

    @property
    def degenerate(self) -> bool:
        """Coinciding percentiles (measured with ``strict=False``): the map is DeepImageJ's
        ``(x - lo) / eps``, all zeros for a constant image, not a real normalisation."""
        return not self.hi > self.lo

    def apply(self, x: np.ndarray) -> np.ndarray:
        return scale_range(x, self.lo, self.hi)


@dataclass(frozen=True)
class FixedMap:
    """A fixed z-score, the same for every image: ``(x - mean) / (std + eps)`` (identity: mean 0,
    std 1 - eps, the ``none`` mode)."""

    mean: float
    std: float
    degenerate = False

    def apply(self, x: np.ndarray) -> np.ndarray:
        return preprocess(x, self.mean, self.std)


#: what :meth:`Normalization.measure` gives: the map of one whole image
InputMap = Union[PercentileMap, FixedMap]


@dataclass(frozen=True)
class Normalization:
    """One model's normalisation, from its config (``training.config.NormalizationConfig``) or its
    rdf (``w2sr.bundle.reader.BundleInfo``): raw image -> network input, network output -> output units."""

    mode: str = "percentile"
    low_percentile: float = DEFAULT_PERCENTILES[0]
    high_percentile: float = DEFAULT_PERCENTILES[1]
    input_mean: Optional[float] = None
    input_std: Optional[float] = None
    target_mean: Optional[float] = None
    target_std: Optional[float] = None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"normalization mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if not 0 <= self.low_percentile < self.high_percentile <= 100:
            raise ValueError(f"percentiles {self.low_percentile:g} / {self.high_percentile:g}: "
                             f"need 0 <= low < high <= 100")

    @classmethod
    def of(cls, source: Any) -> "Normalization":
        """From anything that carries the fields (a config section, a BundleInfo, a dict)."""
        get = source.get if isinstance(source, dict) else (lambda k, d=None: getattr(source, k, d))
        return cls(**{k: get(k, getattr(cls, k)) for k in cls.__dataclass_fields__})

    @property
    def percentile(self) -> bool:
        return self.mode == "percentile"

    @property
    def resolved(self) -> bool:
        """Can it be applied? (fixed mode needs the input statistics measured on the training images;
        without target statistics its output is left as the network gives it)"""
        return self.mode != "fixed" or None not in (self.input_mean, self.input_std)

    @property
    def maps_output(self) -> bool:
        """Is there an output map (fixed mode with target statistics)?"""
        return self.mode == "fixed" and None not in (self.target_mean, self.target_std)

    @property
    def output_units(self) -> str:
        if self.mode == "none" or (self.mode == "fixed" and not self.maps_output):
            return "the network's own output units"
        if self.percentile:
            return (f"normalised units (each output as if scaled by its own {_ordinal(self.low_percentile)}/"
                    f"{_ordinal(self.high_percentile)} percentiles: about 0 = background, 1 = bright structures)")
        return "the training targets' (SIM) intensity units"

    def measure(self, image: np.ndarray, strict: bool = True) -> InputMap:
        """The input map of one whole raw image. In percentile mode, when its percentiles coincide,
        ``strict`` (the default: training, evaluation, export checks) raises NormalizationError;
        ``strict=False`` (``w2sr predict`` only) returns DeepImageJ's map anyway, flagged
        :attr:`PercentileMap.degenerate`, so that the caller can warn."""
        if self.mode == "none":
            return FixedMap(0.0, 1.0 - EPS)
        if not self.percentile:
            return FixedMap(float(self.input_mean), float(self.input_std))
        return PercentileMap(*percentile_range(image, self.low_percentile, self.high_percentile, strict=strict))

    def input(self, image: np.ndarray) -> np.ndarray:
        """Whole raw image -> network input, float32."""
        return self.measure(image).apply(image)

    def output(self, y: np.ndarray) -> np.ndarray:
        """Network output -> output units, float32."""
        if not self.maps_output:
            return np.asarray(y, np.float32)
        return postprocess(y, self.target_mean, self.target_std)

    def target(self, hr: np.ndarray) -> np.ndarray:
        """Raw training target -> what the network should output (float32)."""
        if self.percentile:
            return scale_range(hr, *percentile_range(hr, self.low_percentile, self.high_percentile))
        return inverse_postprocess(hr, self.target_mean, self.target_std)

    def reference(self, hr: np.ndarray) -> np.ndarray:
        """Raw target -> the units outputs are compared in (evaluation: PSNR, SSIM)."""
        return self.target(hr) if self.percentile else np.asarray(hr, np.float32)
