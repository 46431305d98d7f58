"""What machine a benchmark ran on: printed with every figure, so numbers can be compared."""
from __future__ import annotations

import os
import platform

from w2sr.core.cpu import cpu_model


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def versions(*modules: str) -> dict:
    """``{module: version}``; a module that is not installed is listed as such."""
    found = {}
    for mod in modules:
        try:
            found[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is just reported
            found[mod] = "not installed"
    return found


def describe_machine(*modules: str) -> dict:
    """CPU, usable cores, memory, load, Python and the versions of ``modules``."""
    return {
        "cpu": cpu_model(), "cpus_usable": len(os.sched_getaffinity(0)), "cores": os.cpu_count(),
        "memory_gib": memory_gib(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(), **versions(*modules),
        "gpu": "none visible" if not os.environ.get("CUDA_VISIBLE_DEVICES") else os.environ["CUDA_VISIBLE_DEVICES"],
    }
