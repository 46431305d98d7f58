"""Child processes that do not outlive their parent.

``bioimageio test``, the engine checks and the timing runs are subprocesses; when the exporter is
killed (kill -9, a closed terminal) they would run on, orphaned, for minutes. On Linux the child
asks the kernel for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); elsewhere nothing changes.
"""
from __future__ import annotations

import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for subprocess: the child gets SIGKILL when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except OSError:  # no glibc (musl, ...): the child just is not tied to its parent
        pass
