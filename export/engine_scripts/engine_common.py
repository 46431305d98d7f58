"""Shared by the engine scripts (imported from their own folder; plain Python 3.7, no project imports)."""
import json
import platform
import resource
import sys
import traceback


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


def write_result(result, result_path):
    """The result file, with the process's peak memory."""
    result["peak_rss_mb"] = peak_rss_mb()
    with open(result_path, "w") as fh:
        json.dump(result, fh)
    return 0


def run_main(main):
    """``main(job_path, result_path)`` from the command line; a crash prints its traceback, exit 3."""
    try:
        sys.exit(main(sys.argv[1], sys.argv[2]))
    except Exception:  # noqa: BLE001 - the caller reads the traceback
        traceback.print_exc()
        sys.exit(3)
