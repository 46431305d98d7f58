"""A loaded bundle predicting one plane: the inference path chosen for this machine, the bundle's
normalisation measured on the whole plane, and tiled prediction with the bundle's halo."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from w2sr.bundle.reader import BundleInfo, read_bundle
from w2sr.core.tiling import balanced_tile, count_tiles, predict_tiled
from w2sr.core.contract import DEFAULT_TILE
from w2sr.core.errors import UserError
from w2sr.core.normalization import InputMap, equal_percentiles

log = logging.getLogger("w2sr.predict")

#: tile progress bars only for images with more tiles than this
TILE_BAR_MIN = 16


@dataclass(frozen=True)
class Settings:
    """How to predict: the bundle, the inference path asked for, tiling, output format."""
    bundle: str
    runtime: str = "auto"       # auto | onnx | openvino | tensorflow (w2sr.predict.paths)
    threads: Optional[int] = None
    tile: Optional[int] = None  # None: DEFAULT_TILE on the CPU, sized to the free memory on a GPU
    batch: int = 1
    fmt: str = "float32"
    overwrite: bool = False
    progress: bool = True       # tile progress bars for big images (off on dask workers)
    precision: str = "auto"     # auto | fp32 | bf16 | tf32
    device: str = "auto"        # auto | cpu | gpu


def _tf_threads(threads: Optional[int]) -> None:
    if not threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process
        log.warning("TensorFlow already running; --threads %s not applied", threads)


def load_path(info: BundleInfo, path: str, threads: Optional[int] = None):
    """The runtime of one inference path (``w2sr.predict.paths``: "onnx-fp32", "openvino-bf16",
    "onnx-cuda-tf32", ...): an object with ``predict(x (B,h,w,1) normalised) -> (B,2h,2w,1)``,
    weights hash-checked."""
    runtime, precision = path.rsplit("-", 1)
    framework = runtime.split("-")[0]
    weights = info.savedmodel_zip if framework == "tensorflow" else info.onnx_path
    if weights is None:
        raise UserError(f"{info.root / 'rdf.yaml'}: the bundle has no {framework} weights")
    if not Path(weights).exists():
        raise UserError(f"{weights}: weights named in the rdf are missing")
    info.check_weights(weights)
    from w2sr.bundle.runtimes import OnnxRuntime, OpenVinoRuntime, SavedModelRuntime

    if runtime == "onnx":
        return OnnxRuntime(weights, threads=threads)
    if runtime == "onnx-cuda":
        return OnnxRuntime(weights, providers=["CUDAExecutionProvider"], threads=threads, math=precision)
    if runtime == "openvino":
        return OpenVinoRuntime(weights, precision, threads=threads)
    _tf_threads(threads)
    if runtime == "tensorflow-gpu":
        return SavedModelRuntime(weights, device="gpu", math=precision)
    return SavedModelRuntime(weights)


def is_gpu_path(path: str) -> bool:
    return "-cuda-" in path or "-gpu-" in path


def tile_for(info: BundleInfo, path: str, asked: Optional[int]) -> int:
    """The tile side: the one asked for; else on a GPU the largest that half its free memory holds
    (``w2sr.core.gpu``, scaled by the generator's width in the rdf), on a CPU ``DEFAULT_TILE``."""
    if asked:
        return asked
    if not is_gpu_path(path):
        return DEFAULT_TILE
    from w2sr.core.gpu import bytes_per_pixel, first_gpu, tile_for_memory

    gpu = first_gpu()
    if gpu is None:
        log.warning("GPU memory unknown (no nvidia-smi): tile %d px", DEFAULT_TILE)
        return DEFAULT_TILE
    nf = (((info.doc.get("config") or {}).get("w2sr") or {}).get("run") or {}).get("generator", {}).get("nf")
    per_px = bytes_per_pixel(nf)
    tile = info.valid_size_at_least(tile_for_memory(gpu.free_mib * 2**20, per_px, DEFAULT_TILE))
    log.info("GPU %s: %.1f of %.1f GiB free, about %.1f KB per pixel (nf %s): tile %d px", gpu.name,
             gpu.free_mib / 1024, gpu.total_mib / 1024, per_px / 1000, nf or "unknown", tile)
    return tile


def load_runtime(info: BundleInfo, runtime: str = "auto", threads: Optional[int] = None,
                 precision: str = "auto", device: str = "auto"):
    """(runtime, path name): the path ``w2sr.predict.paths.choose`` keeps for this machine."""
    from w2sr.predict.paths import choose

    choice, rt = choose(info, runtime, precision, lambda path: load_path(info, path, threads), device=device)
    guard = (f", guard {choice.guard_db:.1f} dB vs test_output.npy, margin {choice.margin_db:+.1f} dB"
             if choice.guard_db is not None and choice.margin_db is not None else "")
    log.info("inference path: %s (%s%s)", choice.path, choice.reason, guard)
    return rt, choice.path


class Model:
    """A loaded bundle: its numbers and one runtime."""

    def __init__(self, info: BundleInfo, runtime, name: str, tile: int = DEFAULT_TILE):
        self.info, self.runtime, self.name, self.tile = info, runtime, name, tile

    @classmethod
    def load(cls, settings: Settings) -> "Model":
        info = read_bundle(settings.bundle)
        if info.halo == 0:
            log.warning("%s: the rdf states halo 0; tiles may show seams", info.root / "rdf.yaml")
        runtime, path = load_runtime(info, settings.runtime, settings.threads, settings.precision, settings.device)
        return cls(info, runtime, path, tile_for(info, path, settings.tile))

    def predict_fn(self, input_map: InputMap) -> Callable[[np.ndarray], np.ndarray]:
        """Raw tiles (B,h,w,1) -> outputs: the bundle's pre, network, post.

        ``input_map`` is measured once on the whole plane (percentiles, or the fixed statistics), and
        the maps are per pixel, so tiles get the numbers of the whole image while no normalised copy
        of it is ever held."""
        runtime, norm = self.runtime, self.info.normalization

        def fn(x: np.ndarray) -> np.ndarray:
            return norm.output(runtime.predict(input_map.apply(x)))
        return fn

    def predict_slice(self, plane: np.ndarray, settings: Settings, label: str = "",
                      where: str = "") -> np.ndarray:
        """Raw 2D slice (any dtype) -> float32 output, (scale*H, scale*W), in the bundle's output units.

        ``label`` names the slice in the tile progress bar, ``where`` (default: ``label``) in warnings.
        A slice whose percentiles coincide (a blank plane) is not refused: it gets the bundle's numbers
        as DeepImageJ computes them, ``(x - lo) / (hi - lo + eps)`` (all zeros for a constant plane),
        then the network, with a warning naming it; one blank plane never fails a whole stack."""
        info = self.info
        norm = info.normalization
        input_map = norm.measure(plane, strict=False)
        if input_map.degenerate:
            log.warning("%s: %s; its output is what DeepImageJ gives (a flat plane for a constant one), "
                        "not a restoration", where or label or "image",
                        equal_percentiles(norm.low_percentile, norm.high_percentile, input_map.lo, "plane"))
        tile = balanced_tile(plane.shape, self.tile, info.halo, info.valid_size_at_least, info.multiple)
        n_tiles = count_tiles(plane.shape, tile, info.halo, info.valid_size_at_least, info.multiple)
        bar = None
        if settings.progress and n_tiles > TILE_BAR_MIN:
            from tqdm import tqdm
            bar = tqdm(total=n_tiles, desc=f"  tiles {label}", unit="tile", leave=False)
        try:
            # tiles are gathered as float32 before preprocessing: 8/16-bit inputs never round
            return predict_tiled(self.predict_fn(input_map), plane, tile, info.halo, scale=info.scale,
                                 valid_size=info.valid_size_at_least, batch=settings.batch,
                                 progress=bar.update if bar else None, align=info.multiple)
        finally:
            if bar:
                bar.close()


_MODEL_CACHE: dict[tuple, Model] = {}
_MODEL_LOCK = threading.Lock()


def _bundle_state(bundle: str) -> tuple:
    """Size and mtime of the bundle's rdf and weight files: a bundle replaced or damaged on disk is
    loaded (and hash-checked) again instead of served from the cache."""
    root = Path(bundle)
    root = root if root.is_dir() else root.parent
    files = sorted([*root.glob("rdf.yaml"), *root.glob("*.onnx"), *root.glob("*.zip")])
    return tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file())


def cached_model(settings: Settings) -> Model:
    """The model for these settings, loaded once per process (dask workers reuse it)."""
    key = (settings.bundle, settings.runtime, settings.threads, settings.precision, settings.device, settings.tile,
           _bundle_state(settings.bundle))
    with _MODEL_LOCK:
        if key not in _MODEL_CACHE:
            _MODEL_CACHE[key] = Model.load(settings)
        return _MODEL_CACHE[key]
