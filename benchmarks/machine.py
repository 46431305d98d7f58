"""What machine a benchmark ran on: recorded with every figure, so numbers can be matched to a machine
(the same CPU name covers Zen 3 and Zen 4 EPYCs, whose per-core rates differ by 2x)."""
from __future__ import annotations

import json
import os
import platform
from importlib import metadata
from pathlib import Path

from w2sr.core.cpu import cpu_flags, cpu_model, native_bf16
from w2sr.core.files import atomic_write_text
from w2sr.core.gpu import visible_gpus

#: the flags that decide what a CPU computes fast (the full list is hashed, not stored)
RELEVANT_FLAGS = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16",
                  "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def versions(*modules: str) -> dict:
    """``{module: version}`` from the installed distributions, without importing anything (the module
    ``tensorflow`` may come from ``tensorflow-cpu``, ``onnxruntime`` from ``onnxruntime-gpu``)."""
    dists = metadata.packages_distributions()
    found = {}
    for mod in modules:
        names = dists.get(mod) or [mod]
        try:
            found[mod] = f"{metadata.version(names[0])}" + (f" ({names[0]})" if names[0] != mod else "")
        except metadata.PackageNotFoundError:
            found[mod] = "not installed"
    return found


def cpu_identity() -> dict:
    """Vendor, family, model and stepping from /proc/cpuinfo, and which of :data:`RELEVANT_FLAGS` it has."""
    fields = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping"}
    ident: dict = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in fields and fields[key] not in ident:
                ident[fields[key]] = value.strip()
            if key == "flags":
                break
    except OSError:
        pass
    flags = cpu_flags()
    ident["flags"] = [f for f in RELEVANT_FLAGS if f in flags]
    ident["native_bf16"] = native_bf16(flags)
    return ident


def describe_machine(*modules: str, device: str = "cpu") -> dict:
    """CPU (name, family, model, flags), usable cores, memory, load, GPUs, Python and the versions of
    ``modules``."""
    return {
        "cpu": cpu_model(), **{f"cpu_{k}": v for k, v in cpu_identity().items()},
        "cpus_usable": len(os.sched_getaffinity(0)), "cores": os.cpu_count(),
        "memory_gib": memory_gib(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "platform": platform.platform(), **versions(*modules),
        "device": device,
        "gpus": [f"{g.name} ({g.total_mib} MiB, {g.free_mib} free)" for g in visible_gpus()],
    }


def one_line(record: dict) -> str:
    """The machine in one line, printed above every result."""
    cpu = (f"{record['cpu']} (family {record.get('cpu_family', '?')} model {record.get('cpu_model', '?')}; "
           f"{' '.join(record.get('cpu_flags', [])) or 'no AVX2'}), {record['cpus_usable']} usable CPUs, "
           f"{record['memory_gib']} GiB, load {record['load_average']}")
    gpus = "; GPU: " + ", ".join(record["gpus"]) if record.get("gpus") else "; no GPU"
    return "Machine: " + cpu + gpus


def write_result(out: Path, text: str, result: dict) -> None:
    """``out``.md (the printed text) and ``out``.json (every figure and the machine record), atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out.with_suffix(".md"), text)
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=2, default=str) + "\n")
