"""Small file helpers shared by training, export and prediction: nothing half-written, ever.

Temporary names carry the writing process's PID (``.<target>.<pid>.…``), so the next run can tell
the leftovers of a killed run (PID gone) from a run still going, and remove them
(:func:`sweep_stale`); :func:`recover_replaced_dir` finishes a folder swap a kill interrupted.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


#: how temporary names carry their process: ".<name>.w2sr<pid>.…" (files), ".<name>.staging.w2sr<pid>-…" (folders)
_PID_TAG = re.compile(r"\.w2sr(\d+)[.-]")


def temp_prefix(name: str, kind: str = "") -> str:
    """Prefix of this process's temporary files (or ``kind`` folders) for ``name``."""
    return f".{name}.{kind + '.' if kind else ''}w2sr{os.getpid()}{'-' if kind else '.'}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(folder: Path, prefix: str = ".") -> list[Path]:
    """Remove temporary files and folders in ``folder`` whose names start with ``prefix`` and carry
    the PID of a process that no longer runs (the leftovers of a killed run). Returns them."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _PID_TAG.search(entry.name) if entry.name.startswith(prefix) else None
        if not m or _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
        log.info("removed %s, left by an interrupted run (process %s is gone)", entry, m.group(1))
    return removed


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A temporary folder in the system's temp folder whose name carries this process, so that the
    next run can remove it when this one was killed (:func:`sweep_scratch`)."""
    return tempfile.TemporaryDirectory(prefix=temp_prefix(f"w2sr-{kind}", "scratch"))


def sweep_scratch() -> list[Path]:
    """Remove the :func:`scratch_dir` folders of killed runs (their process is gone)."""
    return sweep_stale(Path(tempfile.gettempdir()), prefix=".w2sr-")


def disk_problem(exc: BaseException) -> str | None:
    """What is wrong with the disk being written, when ``exc`` says so (None for other errors).
    tifffile reports a full disk as a short write ("N requested and M written"), without errno;
    TensorFlow's checkpoint writer raises ``ResourceExhaustedError`` with the OS message in its text."""
    code = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    text = str(exc)
    if code in (errno.ENOSPC, errno.EDQUOT) or re.search(r"\d+ requested and \d+ written|No space left on device|"
                                                         r"Disk quota exceeded", text):
        return "no space left on the device"
    if code == errno.EROFS or "Read-only file system" in text:
        return "read-only file system"
    if code == errno.EACCES or (not isinstance(exc, OSError) and "Permission denied" in text):
        return "permission denied"
    return None


def recover_replaced_dir(target: Path) -> None:
    """Finish a :func:`atomic_replace_dir` that a kill interrupted: the old folder comes back when the
    new one never arrived; a leftover old folder beside a complete new one is removed."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(old, target)
        log.warning("%s: restored from %s (an earlier run was interrupted while replacing it)", target, old.name)


def current_umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def share_permissions(root: Path) -> None:
    """Temp files/folders are private (0600/0700); give a staged tree the usual umask permissions."""
    mask = current_umask()
    for p in [root, *root.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    The temp file lives in the same folder so the final ``os.replace`` is atomic.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=temp_prefix(target.name), suffix=suffix if suffix is not None else target.suffix + ".tmp",
        dir=target.parent,
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give outputs the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(target: Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_replace_dir(staging: Path, target: Path) -> None:
    """Move a fully built folder into place, replacing an old one only after the new one exists."""
    staging, target = Path(staging), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old)
    else:
        os.replace(staging, target)
