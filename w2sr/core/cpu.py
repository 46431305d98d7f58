"""What this CPU computes natively, read at run time (the machines this runs on vary: some have
AVX512-BF16 and AMX, some not). Used to choose inference paths and to warn about emulated bf16."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

#: CPU flags (``/proc/cpuinfo``) that make bfloat16 arithmetic native
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> frozenset[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    """The CPU's name, printed beside every measured figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def native_bf16(flags: frozenset[str]) -> Optional[str]:
    """The flag that makes bf16 native here (AMX first: it is the faster one), or None."""
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return flag
    return None
