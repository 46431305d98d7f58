"""What the NVIDIA GPU here is and how much memory it has free, read at run time from
``nvidia-smi`` (present wherever the NVIDIA driver is), and the tile side that memory allows.

No framework is imported: TensorFlow reports no total memory, ONNX Runtime none at all, and the
driver's own figures are the same for both."""
from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Optional

#: memory per input pixel of the full RRDBNet (nf 64, gc 32) in float32, measured on an H200
#: (PyTorch, 2048^2: 17 GiB peak = 4.35 KB/px) and rounded up by 30 % for other runtimes' allocators
FULL_MODEL_BYTES_PER_PX = 5632
FULL_MODEL_NF = 64
#: share of the free memory one tile may use (the runtime's workspace and arena take the rest)
MEMORY_SHARE = 0.5
#: no tile larger than this side: past it a tile saves no launch overhead and costs latency
MAX_GPU_TILE = 4096


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_mib: int
    free_mib: int


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """Rows of ``nvidia-smi --query-gpu=index,name,memory.total,memory.free --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            gpus.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])), int(float(parts[3]))))
        except ValueError:
            continue
    return gpus


def visible_gpus() -> list[Gpu]:
    """The GPUs the driver lists, restricted to ``CUDA_VISIBLE_DEVICES`` (numeric form) when set;
    empty without a driver."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.free",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = parse_nvidia_smi(out.stdout) if out.returncode == 0 else []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    wanted = [int(v) for v in visible.split(",") if v.strip().isdigit()]
    return [g for i in wanted for g in gpus if g.index == i]


def first_gpu() -> Optional[Gpu]:
    """The GPU the runtimes use (device 0 of the visible ones), or None."""
    gpus = visible_gpus()
    return gpus[0] if gpus else None


def bytes_per_pixel(nf: Optional[int], bytes_per_value: int = 4) -> int:
    """Peak memory per input pixel: the measured full-model figure scaled by the network's width
    (activations grow with nf; the 2x upsampled trunk dominates). Unknown width: the full model's."""
    width = nf if nf else FULL_MODEL_NF
    return int(math.ceil(FULL_MODEL_BYTES_PER_PX * width / FULL_MODEL_NF * bytes_per_value / 4))


def tile_for_memory(free_bytes: float, per_px: int, smallest: int, largest: int = MAX_GPU_TILE) -> int:
    """The largest square tile side whose activations fit :data:`MEMORY_SHARE` of ``free_bytes``,
    between ``smallest`` (the bundle's own minimum) and ``largest``."""
    side = int(math.sqrt(max(0.0, free_bytes) * MEMORY_SHARE / max(1, per_px)))
    return max(int(smallest), min(int(largest), side))
