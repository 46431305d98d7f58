"""From image pairs to normalised, augmented training batches (tf.data), made online from memory.

Why online: the report found building 225 overlapping patches per image on the fly no slower than
reading pre-cut patches, and it needs no disk. Why stateless random ops: the original code drew its
augmentation with numpy inside ``Dataset.map``, i.e. once at trace time, so every patch got the same
transform for a whole epoch. Here each sample's transform comes from
``stateless_fold_in([seed, epoch], patch id)``: different per sample and per epoch, identical when
the same (seed, epoch) is rebuilt, so a resumed run rebuilds its epoch and ``.skip(n)``s the batches
already done.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from w2sr.core.normalization import NormalizationError
from training.config import DataConfig, NormalizationConfig
from w2sr.core.errors import DataError

if TYPE_CHECKING:
    import tensorflow as tf

    from training.data.layouts import ImagePair

log = logging.getLogger(__name__)

#: stateless RNG algorithm, fixed so the same (seed, epoch) gives the same transforms on any device
RNG_ALG = "philox"


def compute_normalization(pairs: Sequence["ImagePair"]) -> NormalizationConfig:
    """Fixed mode: mean/std of all LR pixels and of all HR pixels of the training pairs (float64 sums)."""
    if not pairs:
        raise DataError("no training pairs to compute the normalisation from")

    def stats(arrs):
        n = sum(a.size for a in arrs)
        mean = sum(float(a.sum(dtype=np.float64)) for a in arrs) / n
        var = sum(float(np.square(a.astype(np.float64) - mean).sum()) for a in arrs) / n
        return mean, float(np.sqrt(var))

    in_mean, in_std = stats([p.lr for p in pairs])
    out_mean, out_std = stats([p.hr for p in pairs])
    for what, std, src in (("widefield", in_std, pairs[0].lr_source), ("SIM", out_std, pairs[0].hr_source)):
        if not std > 0:
            raise DataError(f"{src.parent}: all {what} pixels are equal; cannot normalise")
    return NormalizationConfig(mode="fixed", input_mean=in_mean, input_std=in_std, target_mean=out_mean,
                               target_std=out_std)


def _require_resolved(norm: NormalizationConfig) -> None:
    if not norm.resolved:
        raise ValueError("normalisation statistics are not set (call compute_normalization first)")


def normalize_pair(pair: "ImagePair", norm: NormalizationConfig) -> tuple[np.ndarray, np.ndarray]:
    """Network input and target of one pair, with the bundle's own normalisation maths; a file whose
    percentiles coincide is a DataError naming it."""
    _require_resolved(norm)
    return map_pair(pair, norm.maths.input, norm.maths.target)


def map_pair(pair: "ImagePair", lr_map: Callable[[np.ndarray], np.ndarray],
             hr_map: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(lr_map(pair.lr), hr_map(pair.hr))``; an image the normalisation refuses (its two percentiles
    coincide) is a DataError naming its file. Training and evaluation both go through here."""
    try:
        lr = lr_map(pair.lr)
    except NormalizationError as exc:
        raise DataError(f"{pair.lr_source}: {exc}") from None
    try:
        hr = hr_map(pair.hr)
    except NormalizationError as exc:
        raise DataError(f"{pair.hr_source}: {exc}") from None
    return lr, hr


def patch_stride(patch: int, overlap: float) -> int:
    """Step between patches: patch * (1 - overlap), at least 1 (64 at 50% -> 32)."""
    return max(1, int(round(patch * (1.0 - overlap))))


def _axis_starts(n: int, patch: int, stride: int, rule: str) -> list[int]:
    starts = list(range(0, n - patch + 1, stride))
    if rule == "shift" and starts[-1] + patch < n:
        starts.append(n - patch)
    return starts


def patch_grid(h: int, w: int, patch: int, overlap: float, rule: str = "shift") -> list[tuple[int, int]]:
    """Top-left LR corners (y, x) of the training patches of an h x w image.

    Patches start at 0, stride = patch * (1 - overlap). When (size - patch) is not a multiple of
    the stride, ``rule`` decides: "crop" drops the incomplete remainder (the last pixels are never
    seen), "shift" adds one more patch flush with the far edge (overlapping its neighbour more), so
    every pixel is covered. 512 x 512 with patch 64 and overlap 0.5: 15 x 15 = 225 either way.
    """
    if rule not in ("shift", "crop"):
        raise ValueError(f"unknown unaligned-size rule {rule!r} (shift or crop)")
    if h < patch or w < patch:
        raise DataError(f"image of {h}x{w} pixels is smaller than the {patch}x{patch} training patch")
    stride = patch_stride(patch, overlap)
    ys = _axis_starts(h, patch, stride, rule)
    xs = _axis_starts(w, patch, stride, rule)
    return [(y, x) for y in ys for x in xs]


def patch_index(pairs: Sequence["ImagePair"], data_cfg: DataConfig) -> np.ndarray:
    """(P, 3) int32 table of (image index, y, x) over all pairs, in a fixed order."""
    rows = []
    for i, p in enumerate(pairs):
        h, w = p.lr.shape
        try:
            grid = patch_grid(h, w, data_cfg.lr_patch, data_cfg.overlap, data_cfg.unaligned)
        except DataError as exc:
            raise DataError(f"{p.lr_source}: {exc}") from None
        rows.append(np.array([(i, y, x) for y, x in grid], np.int32))
    return np.concatenate(rows) if rows else np.zeros((0, 3), np.int32)


def count_patches(pairs: Sequence["ImagePair"], data_cfg: DataConfig) -> int:
    return int(len(patch_index(pairs, data_cfg)))


def count_batches_per_epoch(pairs: Sequence["ImagePair"], data_cfg: DataConfig, batch_size: int) -> int:
    """Full batches in one pass over all patches (the last partial batch is dropped)."""
    return count_patches(pairs, data_cfg) // int(batch_size)


def epoch_order(n_patches: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shuffled order of patch ids: a full permutation, fixed by (seed, epoch).

    A full permutation of the index table is an exact shuffle (no buffer needed), and costs only
    P integers; LR and HR are cut from the same (image, y, x) so they stay paired.
    """
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n_patches)


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Stack 2-D images, zero-padding to the largest size (patch corners stay inside each image)."""
    h = max(a.shape[0] for a in arrays)
    w = max(a.shape[1] for a in arrays)
    out = np.zeros((len(arrays), h, w), np.float32)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0], : a.shape[1]] = a
    return out


def augment_pair(lr: "tf.Tensor", hr: "tf.Tensor", key: "tf.Tensor") -> tuple["tf.Tensor", "tf.Tensor"]:
    """The report's paired augmentation, drawn from a stateless key.

    With probability 0.5 the pair is transformed; if so, horizontal flip, vertical flip and a
    90-degree rotation are each applied with probability 0.5 -- identically to LR and HR.
    """
    import tensorflow as tf

    u = tf.random.stateless_uniform([4], seed=key, alg=RNG_ALG)
    do = u[0] < 0.5
    hflip, vflip, rot = do & (u[1] < 0.5), do & (u[2] < 0.5), do & (u[3] < 0.5)

    def apply(x):
        x = tf.cond(hflip, lambda: tf.reverse(x, [1]), lambda: x)
        x = tf.cond(vflip, lambda: tf.reverse(x, [0]), lambda: x)
        return tf.cond(rot, lambda: tf.image.rot90(x), lambda: x)

    return apply(lr), apply(hr)


class PatchSource:
    """Normalised training images held once in memory, from which each epoch's dataset is cut.

    Build it once per run and call ``dataset(batch_size, seed, epoch)`` every epoch: normalising
    and stacking the images (seconds for all of W2S) is then not repeated.
    """

    def __init__(self, pairs: Sequence["ImagePair"], data_cfg: DataConfig, norm: NormalizationConfig):
        import tensorflow as tf

        _require_resolved(norm)
        if not pairs:
            raise DataError("no training pairs")
        self.data_cfg = data_cfg
        self.index = patch_index(pairs, data_cfg)
        self.n_images = len(pairs)
        normalised = [normalize_pair(p, norm) for p in pairs]
        self.lr_all = tf.constant(_stack([lr for lr, _ in normalised]))
        self.hr_all = tf.constant(_stack([hr for _, hr in normalised]))
        del normalised

    @property
    def n_patches(self) -> int:
        return int(len(self.index))

    def batches_per_epoch(self, batch_size: int) -> int:
        return self.n_patches // int(batch_size)

    def dataset(self, batch_size: int, seed: int, epoch: int) -> "tf.data.Dataset":
        """One epoch of (lr, hr) batches; same (seed, epoch) -> same batches, so resume = ``.skip(n)``."""
        import tensorflow as tf

        n_batches = self.batches_per_epoch(batch_size)
        if n_batches == 0:
            raise DataError(f"only {self.n_patches} training patches, fewer than one batch of {batch_size}")
        order = epoch_order(self.n_patches, seed, epoch)
        # columns: image, y, x, patch id (the id keys the augmentation, so it is tied to the patch)
        table = np.concatenate([self.index[order], order[:, None].astype(np.int32)], axis=1)
        lr_all, hr_all = self.lr_all, self.hr_all
        p = int(self.data_cfg.lr_patch)
        s = int(self.data_cfg.scale)
        base_key = tf.constant([int(seed), int(epoch)], tf.int64)
        augment = bool(self.data_cfg.augment)

        def cut(row):
            i, y, x, pid = row[0], row[1], row[2], row[3]
            lr = tf.slice(lr_all, tf.stack([i, y, x]), [1, p, p])[0][..., None]
            hr = tf.slice(hr_all, tf.stack([i, s * y, s * x]), [1, s * p, s * p])[0][..., None]
            if augment:
                key = tf.random.experimental.stateless_fold_in(base_key, tf.cast(pid, tf.int64), alg=RNG_ALG)
                lr, hr = augment_pair(lr, hr, key)
            return tf.ensure_shape(lr, [p, p, 1]), tf.ensure_shape(hr, [s * p, s * p, 1])

        ds = tf.data.Dataset.from_tensor_slices(table)
        ds = ds.map(cut, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(int(batch_size), drop_remainder=True)
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
        log.debug("epoch %d: %d patches from %d images -> %d batches of %d", epoch, self.n_patches,
                  self.n_images, n_batches, batch_size)
        return ds


def make_train_dataset(
    pairs: Sequence["ImagePair"],
    data_cfg: DataConfig,
    norm: NormalizationConfig,
    batch_size: int,
    seed: int,
    epoch: int,
) -> "tf.data.Dataset":
    """One epoch of normalised (lr, hr) batches, float32 (B, p, p, 1) and (B, 2p, 2p, 1).

    Deterministic for (seed, epoch): same order, same transforms. Batches drop the remainder, so
    ``count_batches_per_epoch`` tells how many there are. Images stay in memory (as tensors captured
    by the map function); patches are cut on the fly. For many epochs, build a ``PatchSource`` once.
    """
    return PatchSource(pairs, data_cfg, norm).dataset(batch_size, seed, epoch)
