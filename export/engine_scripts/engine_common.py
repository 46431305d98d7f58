"""Shared by the engine scripts (imported from their own folder; plain Python 3.7, no project imports)."""
import platform
import resource


def peak_rss_mb():
    """Peak resident memory of this process since it started (VmHWM), in MiB. Not ru_maxrss: Linux
    carries that over from the parent at fork, so a child of a big process would report the parent's."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def short_error(exc):
    """An exception on a few lines at most, for the result file."""
    lines = [ln for ln in "{}: {}".format(type(exc).__name__, exc).splitlines() if ln.strip()]
    return " | ".join(lines[:6])[:1500]


def result_header(runtime, version, import_s, numpy_version):
    """The result file's first fields (the loaders fill ``loaders``)."""
    return {"runtime": runtime, "version": version, "python": platform.python_version(),
            "numpy": numpy_version, "import_s": import_s, "loaders": {}}
