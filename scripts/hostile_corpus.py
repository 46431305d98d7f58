#!/usr/bin/env python3
"""Hostile-input corpus for the reliability review of issue 11.

Re-runs, the way a hostile (or just unlucky) user would, a corpus of bad inputs and faults against
the real command line: every case is a subprocess of ``.venv/bin/w2sr`` in a fresh folder under
/tmp. ``bundle/`` and ``runs/demo`` are never given to the CLI: they are copied once into the work
folder (and copied again per case when a case damages them). For each case the script records

* the exit code, and the first stderr line starting with ``error:`` (else the relevant log line);
* traceback?  -- "Traceback" in the stderr/stdout of any run of the case;
* garbage?    -- an output written for a bad input, an output that cannot be read back, or an
  output that holds NaN/Inf (a pickle that got executed counts too);
* leftovers?  -- hidden temporary files/folders (``.*``, ``*w2sr<pid>*``, ``*.tmp``, ``*_temp``,
  ``.*.staging*``, ``.*.old``) in the case's output/target folders after the *next* run of the same
  command (for the full-disk cases: the next run once there is room again; for the kill cases: the
  rerun), and processes of a killed export still alive 3 s after its kill -9 (orphans). Temporary
  folders left in ``$TMPDIR`` (set per case) are listed in the notes but not counted;
* inputs modified? -- sha256 of every input file/folder before and after the case.

It prints a Markdown table, one row per case, details (full stderr) of every flagged case, and

    CORPUS cases=N tracebacks=T garbage=G leftovers=L inputs_modified=M

The exit code is 1 when any of T, G, L, M is non-zero. Notes flag exit codes other than expected
("UNEXPECTED exit") and error output that is not one ``error:`` line. Sizes are kept small so that
the whole corpus runs in minutes: 64x64 images; the full-disk predict case writes 256x256 outputs
(128x128 inputs) onto a 300 KiB tmpfs, where the first output fits and the second does not; the
kill -9 predict case uses six 512x512 inputs with ``--format uint16``.

Run it from the repository root (the full-disk and read-only cases mount small tmpfs file systems,
so they need root; they are reported as skipped otherwise):

    .venv/bin/python scripts/hostile_corpus.py                       # the whole corpus (~6 min, 2 cores)
    .venv/bin/python scripts/hostile_corpus.py --only predict/       # cases whose name contains it
    .venv/bin/python scripts/hostile_corpus.py --md corpus.md        # also write the table to a file
    .venv/bin/python scripts/hostile_corpus.py --bundle bundle --run runs/demo --keep

Options: ``--bundle`` (default ``bundle``), ``--run`` (default ``runs/demo``), ``--only SUBSTRING``
(repeatable), ``--md FILE``, ``--keep`` (keep the work folder), ``--list`` (print case names).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
W2SR = REPO / ".venv" / "bin" / "w2sr"
NOBODY = 65534

# names that mark a temporary file or folder (hidden names, PID-tagged names, TF's *_temp)
LEFTOVER = re.compile(r"(^\.)|(w2sr\d+)|(\.tmp$)|(_temp$)|(\.staging)|(\.old$)")


# ------------------------------------------------------------------------------------------------
# running the CLI
# ------------------------------------------------------------------------------------------------
@dataclass
class Proc:
    args: list[str]
    rc: Optional[int]
    out: str
    err: str
    seconds: float
    timed_out: bool = False
    killed: bool = False


class Running:
    """A CLI process started in the background (for the kill cases)."""

    def __init__(self, popen: subprocess.Popen, args: list[str], out_path: Path, err_path: Path, t0: float):
        self.popen, self.args, self.out_path, self.err_path, self.t0 = popen, args, out_path, err_path, t0
        self.killed = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL of the main process only (its children are not touched: they must die by themselves)."""
        if self.alive():
            os.kill(self.popen.pid, signal.SIGKILL)
            self.killed = True
        self.popen.wait()

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.popen.pid, sig)

    def finish(self, timeout: float) -> Proc:
        timed_out = False
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(self.popen.pid)
            self.popen.wait()
        kill_group(self.popen.pid)  # stray children of a killed parent: not ours to keep
        return Proc(self.args, None if timed_out else self.popen.returncode,
                    self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace"),
                    time.perf_counter() - self.t0, timed_out, self.killed)


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def session_members(sid: int) -> list[tuple[int, str]]:
    """Live (non-zombie) processes of session ``sid``: (pid, command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) != sid:
                continue
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        found.append((pid, cmd))
    return found


def processes_with_env(entry: str) -> list[tuple[int, str]]:
    """Live processes whose environment holds ``entry`` (e.g. this case's TMPDIR=...): (pid, command line)."""
    found = []
    needle = entry.encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, IndexError):
            continue
        found.append((int(proc.name), cmd))
    return found


def pgrep(pattern: str) -> set[int]:
    done = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
    return {int(x) for x in done.stdout.split()} - {os.getpid()}


# ------------------------------------------------------------------------------------------------
# files: hashes, leftovers, outputs
# ------------------------------------------------------------------------------------------------
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def snapshot(paths: Iterable[Path]) -> dict[str, str]:
    """sha256 of every file under ``paths`` (symlinks by target, folders recursively)."""
    state: dict[str, str] = {}

    def one(p: Path) -> None:
        if p.is_symlink():
            state[str(p)] = "link->" + os.readlink(p)
        elif p.is_dir():
            state[str(p)] = "<dir>"
            for child in sorted(p.iterdir()):
                one(child)
        elif p.is_file():
            try:
                state[str(p)] = sha256(p)
            except OSError as exc:
                state[str(p)] = f"<unreadable {exc.strerror}>"
        elif p.exists():
            state[str(p)] = "<special>"
        else:
            state[str(p)] = "<missing>"

    for p in paths:
        one(Path(p))
    return state


def diff_snapshots(before: dict[str, str], after: dict[str, str], base: Path) -> list[str]:
    out = []
    for k in sorted(set(before) | set(after)):
        b, a = before.get(k), after.get(k)
        if b == a:
            continue
        rel = os.path.relpath(k, base)
        if b is None:
            out.append(f"added {rel}")
        elif a is None or a == "<missing>":
            out.append(f"removed {rel}")
        else:
            out.append(f"changed {rel}")
    return out


def leftovers_in(folder: Path, skip: Iterable[Path] = ()) -> list[Path]:
    """Temporary-looking names anywhere under ``folder`` (not following links)."""
    skip = {Path(s) for s in skip}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        if here in skip:
            dirnames[:] = []
            continue
        for name in list(dirnames) + filenames:
            if LEFTOVER.search(name) and (here / name) not in skip:
                found.append(here / name)
        dirnames[:] = [n for n in dirnames if not LEFTOVER.search(n) and (here / n) not in skip]
    return found


def output_problems(folders: Iterable[Path], allowed: Optional[set[str]] = None,
                    planted: Iterable[Path] = ()) -> list[str]:
    """Garbage in output folders: files not in ``allowed`` (when given), unreadable images, NaN/Inf."""
    import tifffile

    planted = {Path(p) for p in planted}
    problems = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for p in sorted(folder.rglob("*")):
            if not p.is_file() or p in planted or LEFTOVER.search(p.name):
                continue
            if allowed is not None and p.name not in allowed:
                problems.append(f"output for a bad input: {p.name}")
                continue
            if p.suffix.lower() in (".tif", ".tiff"):
                try:
                    a = tifffile.imread(p)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"unreadable output {p.name} ({type(exc).__name__})")
                    continue
                if a.dtype.kind in "fc" and not np.isfinite(a).all():
                    problems.append(f"NaN/Inf in {p.name} ({int((~np.isfinite(a)).sum())} px)")
    return problems


# ------------------------------------------------------------------------------------------------
# test images
# ------------------------------------------------------------------------------------------------
def tif(path: Path, a: np.ndarray, **kw) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, a, **kw)
    return path


def noise(shape, seed=0, dtype=np.float32, mean=150.0, sd=50.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, shape).astype(dtype)


def good_tif(path: Path, size: int = 64, seed: int = 0) -> Path:
    return tif(path, noise((size, size), seed))


def huge_header_tiff(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A float32 TIFF whose header declares width x height pixels (40 GB) over 1 KiB of data."""
    data = b"\0" * 1024
    entries = [(256, 4, width), (257, 4, height), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, len(data)), (339, 3, 3)]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        if tag == 273:
            value = data_offset
        ifd += struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + data)
    return path


class _Evil:
    """Pickled into an object .npy: unpickling it runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------------
# the context and one case's bookkeeping
# ------------------------------------------------------------------------------------------------
@dataclass
class Row:
    case: str
    command: str
    rc: str
    message: str
    traceback: bool
    garbage: list[str]
    leftovers: list[str]
    modified: list[str]
    notes: list[str]
    seconds: float
    stderr: str = ""


class Ctx:
    def __init__(self, root: Path, bundle_src: Path, run_src: Path):
        self.root = root
        self.bundle_src, self.run_src = bundle_src, run_src
        self._bundle: Optional[Path] = None
        self._run: Optional[Path] = None
        self._train_cwd: Optional[Path] = None
        self.mounts: list[Path] = []
        self.is_root = os.geteuid() == 0

    @property
    def bundle(self) -> Path:
        """A pristine copy of the bundle, shared by the cases that only read it (hashed per case)."""
        if self._bundle is None:
            self._bundle = self.root / "pristine_bundle"
            shutil.copytree(self.bundle_src, self._bundle, symlinks=True)
        return self._bundle

    @property
    def run(self) -> Path:
        """A pristine copy of the run folder, shared by the cases that only read it (hashed per case)."""
        if self._run is None:
            self._run = self.root / "pristine_run"
            shutil.copytree(self.run_src, self._run, symlinks=True)
        return self._run

    def bundle_copy(self, dest: Path, packages: bool = False) -> Path:
        shutil.copytree(self.bundle, dest, symlinks=True,
                        ignore=None if packages else shutil.ignore_patterns("packages"))
        return dest

    def run_copy(self, dest: Path) -> Path:
        shutil.copytree(self.run, dest, symlinks=True, ignore=shutil.ignore_patterns("tensorboard", "panels"))
        return dest

    def train_cwd(self) -> Path:
        """A working folder where the tiny config's data (./data/tiny) is simulated once for all train cases."""
        if self._train_cwd is None:
            cwd = self.root / "train_cwd"
            cwd.mkdir()
            (cwd / "_tmp").mkdir()
            p = run_cli(["simulate", "--config", "tiny"], cwd, timeout=300)
            if p.rc != 0:
                raise RuntimeError(f"could not simulate the tiny data: {p.err[-2000:]}")
            self._train_cwd = cwd
        return self._train_cwd

    # tmpfs -----------------------------------------------------------------------------------
    def mount(self, where: Path, kib: int) -> Optional[str]:
        """Mount a tmpfs of ``kib`` KiB; returns why not (None when mounted)."""
        if not self.is_root:
            return "needs root (mount)"
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            return f"mount refused: {done.stderr.strip()}"
        self.mounts.append(where)
        return None

    @staticmethod
    def remount(where: Path, opts: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{opts}", str(where)], check=True, capture_output=True)

    def unmount_all(self) -> None:
        for where in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(where)], capture_output=True)
        self.mounts.clear()


_RUN_COUNTER = [0]


def _spawn(args: list[str], cwd: Path, user: Optional[int] = None, limit_as: Optional[int] = None,
           extra_env: Optional[dict] = None, tmpdir: Optional[Path] = None) -> Running:
    cmd = [str(W2SR), *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *cmd]
    tmpdir = Path(tmpdir) if tmpdir else cwd / "_tmp"
    tmpdir.mkdir(exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONDONTWRITEBYTECODE="1", TF_CPP_MIN_LOG_LEVEL="2")
    if user is not None:
        home = tmpdir.parent / "_home"
        home.mkdir(exist_ok=True)
        os.chmod(home, 0o777)
        env["HOME"] = str(home)
    env.update(extra_env or {})
    logs = tmpdir.parent / "_logs"
    logs.mkdir(exist_ok=True)
    _RUN_COUNTER[0] += 1
    n = _RUN_COUNTER[0]
    out_path, err_path = logs / f"run{n}.out", logs / f"run{n}.err"

    def preexec() -> None:
        if limit_as:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    with open(out_path, "w") as out, open(err_path, "w") as err:
        popen = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=preexec if limit_as else None)
    return Running(popen, args, out_path, err_path, time.perf_counter())


def run_cli(args: list[str], cwd: Path, timeout: float = 180, **kw) -> Proc:
    return _spawn(args, cwd, **kw).finish(timeout)


class Case:
    """What one case did: its runs, what it damaged, its notes."""

    def __init__(self, ctx: Ctx, name: str, d: Path):
        self.ctx, self.name, self.d = ctx, name, d
        self.procs: list[Proc] = []
        self.garbage: list[str] = []
        self.modified: list[str] = []
        self.notes: list[str] = []
        self.leftover_paths: list[str] = []
        self.command = ""
        self.primary: Optional[Proc] = None  # the run whose exit code and message the table shows
        self.skipped: Optional[str] = None

    # runs --------------------------------------------------------------------------------------
    def _record_cmd(self, args: list[str]) -> None:
        if not self.command:
            self.command = "w2sr " + " ".join(self.short(a) for a in args)

    def short(self, a: str) -> str:
        s = str(a)
        for base, label in ((str(self.ctx.bundle_src), "BUNDLE"), (str(self.ctx.root / "pristine_bundle"), "B"),
                            (str(self.ctx.root / "pristine_run"), "RUN"), (str(self.d) + "/", ""), (str(self.d), ".")):
            s = s.replace(base, label)
        return s if len(s) < 40 else s[:37] + "..."

    def run(self, args: list[str], timeout: float = 180, primary: bool = False, **kw) -> Proc:
        self._record_cmd(args)
        kw.setdefault("cwd", self.d)
        kw.setdefault("tmpdir", self.d / "_tmp")
        p = run_cli(list(map(str, args)), timeout=timeout, **kw)
        self.procs.append(p)
        if primary or self.primary is None:
            self.primary = p
        if p.timed_out:
            self.notes.append(f"TIMEOUT after {timeout:.0f} s")
        return p

    def start(self, args: list[str], **kw) -> Running:
        self._record_cmd(args)
        kw.setdefault("cwd", self.d)
        kw.setdefault("tmpdir", self.d / "_tmp")
        return _spawn(list(map(str, args)), **kw)

    def finish(self, r: Running, timeout: float = 300, primary: bool = False) -> Proc:
        p = r.finish(timeout)
        self.procs.append(p)
        if primary or self.primary is None:
            self.primary = p
        return p

    # checks ------------------------------------------------------------------------------------
    def expect(self, p: Proc, want: str) -> None:
        """want: 'ok' (0), 'fail' (1 or 2), 'rc1', 'rc2', 'any'."""
        ok = {"ok": p.rc == 0, "fail": p.rc in (1, 2), "rc1": p.rc == 1, "rc2": p.rc == 2, "any": True}[want]
        if not ok:
            self.notes.append(f"UNEXPECTED exit {p.rc} (wanted {want})")
        if want in ("fail", "rc2") and p.rc == 2:
            errors = [ln for ln in p.err.splitlines() if ln.startswith("error:")]
            if not errors and re.search(r"^w2sr[\w -]*: error: ", p.err, re.M):
                self.notes.append("argparse's own 'usage: ...' + 'w2sr CMD: error: ...' lines")
            elif len(errors) != 1:
                self.notes.append(f"{len(errors)} 'error:' lines (wanted one)")

    def outputs(self, folders: Iterable[Path], allowed: Optional[set[str]] = None, planted: Iterable[Path] = ()) -> None:
        for g in output_problems(folders, allowed, planted):
            if g not in self.garbage:
                self.garbage.append(g)

    def compare(self, before: dict, after: dict, label: str = "") -> None:
        for m in diff_snapshots(before, after, self.d):
            self.modified.append(f"{label}{m}")

    def leftovers(self, folders: Optional[Iterable[Path]] = None) -> None:
        """Temporary names in the case's folders (default: all of it, except $TMPDIR and the logs)."""
        folders = [self.d] if folders is None else list(folders)
        skip = [self.d / "_tmp", self.d / "_logs", self.d / "_home"]
        for f in folders:
            if Path(f).is_dir():
                for p in leftovers_in(Path(f), skip):
                    rel = os.path.relpath(p, self.d)
                    if rel not in self.leftover_paths:
                        self.leftover_paths.append(rel)
        tmp = self.d / "_tmp"
        if tmp.is_dir():
            # .ses: onnxruntime's session id; __autograph_generated_file*: TensorFlow's, in every TF run
            junk = sorted(x.name for x in tmp.iterdir()
                          if x.name != ".ses" and not x.name.startswith("__autograph_generated_file"))
            if junk:
                self.notes.append(f"left in $TMPDIR (not counted): {', '.join(junk[:4])}"
                                  + (f" +{len(junk) - 4}" if len(junk) > 4 else ""))

    # the row -----------------------------------------------------------------------------------
    def row(self, seconds: float) -> Row:
        p = self.primary
        if p is None:
            rc = "-"
        else:
            # every run in order: 2 -> 2 (the command, then its next run); K = killed -9, T = timed out
            rc = " -> ".join("T" if x.timed_out else ("K" if x.killed else str(x.rc)) for x in self.procs)
        tb = any("Traceback (most recent call last)" in (x.err + x.out) for x in self.procs)
        msg = self.skipped or (pick_message(p) if p else "")
        # paths in the table relative to the case folder (the details keep the exact stderr)
        msg = msg.replace(str(self.d) + "/", "").replace(str(self.ctx.root) + "/", "")
        self.notes = [n.replace(str(self.d) + "/", "").replace(str(self.ctx.root) + "/", "") for n in self.notes]
        stderr = "\n\n".join(f"$ {self.command_of(x)}\n[exit {x.rc}]\n{x.err.strip()}" for x in self.procs)
        return Row(self.name, self.command, rc, msg, tb, self.garbage, self.leftover_paths, self.modified,
                   self.notes, seconds, stderr)

    def command_of(self, p: Proc) -> str:
        return "w2sr " + " ".join(self.short(a) for a in p.args)


def pick_message(p: Proc) -> str:
    lines = [ln.rstrip() for ln in p.err.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith("error:"):
            return ln
    for ln in lines:
        if re.match(r"^usage:|^w2sr[\w -]*: error:", ln) and "error:" in ln:
            return ln
    if "Traceback (most recent call last)" in p.err:
        exc = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt)\b", ln)]
        return "TRACEBACK: " + (exc[-1] if exc else lines[-1])
    for ln in lines:
        m = re.search(r"\b(ERROR|CRITICAL)\s+[\w.]+: (.*)$", ln)
        if m:
            return "[log ERROR] " + m.group(2)
    for ln in reversed(lines):
        m = re.search(r"\b(summary: .*|bundle written.*|training finished.*|run folder: .*)$", ln)
        if m:
            return m.group(1)
    if p.killed:
        return "(killed)"
    out = [ln.strip() for ln in p.out.splitlines() if ln.strip()]
    if "Failures:" in out:  # w2sr validate's report
        i = out.index("Failures:")
        return "[stdout] " + "; ".join(x.lstrip("- ") for x in out[i + 1:i + 4])
    if p.rc == 0 and out:
        return "[stdout] " + out[0]
    return lines[-1][-200:] if lines else ""


# ------------------------------------------------------------------------------------------------
# case definitions
# ------------------------------------------------------------------------------------------------
CASES: list[tuple[str, Callable[[Case], None]]] = []


def case(name: str):
    def deco(fn):
        CASES.append((name, fn))
        return fn
    return deco


def predict_case(c: Case, bundle: Path, inputs: list, *, expect: str = "fail",
                 allowed: Optional[set[str]] = None, extra: Iterable[str] = (), out: Optional[Path] = None,
                 hash_paths: Iterable[Path] = (), rerun: bool = True, timeout: float = 120, **kw) -> tuple[Proc, Path]:
    """predict BUNDLE INPUTS --out OUT; garbage = any output when it should fail (or not in ``allowed``),
    unreadable or NaN outputs; leftovers after the same command ran again; inputs hashed throughout."""
    out = out or c.d / "out"
    watched = [Path(bundle), *[Path(i) for i in inputs if Path(i).exists() or Path(i).is_symlink()], *hash_paths]
    before = snapshot(watched)
    planted = [x for x in out.rglob("*")] if out.is_dir() else []  # files there before: not outputs
    args = ["predict", str(bundle), *map(str, inputs), "--out", str(out), "--no-progress", *extra]
    p = c.run(args, timeout=timeout, primary=True, **kw)
    c.expect(p, expect)
    if allowed is None and expect == "fail":
        allowed = set()
    c.outputs([out], allowed, planted)
    if expect == "fail" and out.is_dir() and not planted and not any(out.iterdir()):
        c.notes.append("empty --out folder left")
    if rerun:
        c.run(args, timeout=timeout, **kw)
        c.outputs([out], allowed, planted)
    c.leftovers()
    c.compare(before, snapshot(watched))
    return p, out


def bad_image_case(name: str, make: Callable[[Path], Path], expect: str = "fail", note: str = "", **kw):
    @case(f"predict/{name}")
    def _(c: Case):
        img = make(c.d)
        p, _ = predict_case(c, c.ctx.bundle, [img], expect=expect, **kw)
        if note:
            c.notes.append(note)


def _truncated(d: Path) -> Path:
    full = good_tif(d / "full.tif")
    data = full.read_bytes()
    full.unlink()
    (d / "truncated.tif").write_bytes(data[: len(data) // 2])
    return d / "truncated.tif"


def _png(d: Path) -> Path:
    from PIL import Image

    Image.fromarray(noise((64, 64), dtype=np.float32).clip(0, 65535).astype(np.uint16)).save(d / "img.png")
    return d / "img.png"


def _png_rgb(d: Path) -> Path:
    from PIL import Image

    Image.fromarray(noise((64, 64, 3)).clip(0, 255).astype(np.uint8), "RGB").save(d / "rgb.png")
    return d / "rgb.png"


def _jpeg(d: Path) -> Path:
    from PIL import Image

    Image.fromarray(noise((64, 64)).clip(0, 255).astype(np.uint8)).save(d / "img.jpg")
    return d / "img.jpg"


def _nan(d: Path) -> Path:
    a = noise((64, 64))
    a[10, 10] = np.nan
    return tif(d / "nan.tif", a)


def _inf(d: Path) -> Path:
    a = noise((64, 64))
    a[5, 7] = np.inf
    return tif(d / "inf.tif", a)


def _stack_nan_last(d: Path) -> Path:
    a = noise((3, 64, 64))
    a[2, 0, 0] = np.nan
    return tif(d / "stacknan.tif", a, imagej=True, metadata={"axes": "ZYX"})


def _symlink_loop(d: Path) -> Path:
    p = d / "loop.tif"
    os.symlink("loop.tif", p)
    return p


def _dangling(d: Path) -> Path:
    p = d / "dangling.tif"
    os.symlink("nowhere.tif", p)
    return p


def _big_sparse(d: Path) -> Path:
    a = np.zeros((17000, 17000), np.float32)
    a[::97, ::89] = 100
    return tif(d / "big.tif", a, compression="zlib", tile=(1024, 1024))


def _npy_pickle(d: Path) -> Path:
    arr = np.empty(1, dtype=object)
    arr[0] = _Evil(d / "PWNED")
    np.save(d / "evil.npy", arr, allow_pickle=True)
    return d / "evil.npy"


def _register_bad_images() -> None:
    bad_image_case("empty-file", lambda d: (d / "empty.tif").write_bytes(b"") or d / "empty.tif")
    bad_image_case("truncated-tiff", _truncated)
    bad_image_case("random-bytes.tif", lambda d: (d / "random.tif").write_bytes(
        np.random.default_rng(1).bytes(4096)) and d / "random.tif")
    bad_image_case("random-bytes-with-tiff-magic", lambda d: (d / "magic.tif").write_bytes(
        b"II*\0" + np.random.default_rng(2).bytes(4092)) and d / "magic.tif")
    bad_image_case("text-file.tif", lambda d: (d / "text.tif").write_text("hello, I am a text file\n") and d / "text.tif")
    bad_image_case("png-16bit", _png, expect="ok", note="PNG is a supported input")
    bad_image_case("png-rgb", _png_rgb)
    bad_image_case("jpeg", _jpeg)
    bad_image_case("nan-image", _nan)
    bad_image_case("inf-image", _inf)
    bad_image_case("stack-nan-in-last-slice", _stack_nan_last)
    bad_image_case("extreme-values-3e38", lambda d: tif(d / "extreme.tif", np.full((64, 64), 3e38, np.float32)),
                   expect="any", note="legal float32; output must still be finite")
    bad_image_case("all-constant", lambda d: tif(d / "const.tif", np.full((64, 64), 123.0, np.float32)), expect="any",
                   note="refusing it is fine (percentile normalisation); an output must be finite")
    bad_image_case("all-zero-uint8", lambda d: tif(d / "zero.tif", np.zeros((64, 64), np.uint8)), expect="any")
    bad_image_case("5d-tiff", lambda d: tif(d / "five.tif", noise((2, 2, 2, 16, 16)), photometric="minisblack"))
    bad_image_case("4d-tiff", lambda d: tif(d / "four.tif", noise((2, 4, 16, 16)), photometric="minisblack"))
    bad_image_case("rgb-tiff", lambda d: tif(d / "rgb.tif", noise((64, 64, 3)).clip(0, 255).astype(np.uint8),
                                             photometric="rgb"))
    bad_image_case("complex-dtype", lambda d: tif(d / "complex.tif", noise((64, 64)).astype(np.complex64)))
    bad_image_case("bool-dtype", lambda d: tif(d / "bool.tif", noise((64, 64)) > 150), expect="any",
                   note="bool is accepted as 0/1 integers (dtype kind 'b' allowed)")
    bad_image_case("1x1", lambda d: tif(d / "one.tif", np.ones((1, 1), np.float32)))
    bad_image_case("3x3", lambda d: tif(d / "three.tif", np.ones((3, 3), np.float32)))
    bad_image_case("8x8-smallest-allowed", lambda d: tif(d / "eight.tif", noise((8, 8))), expect="ok")
    bad_image_case("1x4096-line", lambda d: tif(d / "line.tif", noise((1, 4096))))
    bad_image_case("huge-declared-header", lambda d: huge_header_tiff(d / "huge.tif"),
                   limit_as=16 << 30, timeout=120, note="declares 100000x100000 float32 (40 GB); RLIMIT_AS 16 GB")
    bad_image_case("legit-17000x17000-output-over-4GiB", _big_sparse, expect="any", timeout=120,
                   note="a legal 17000x17000 float32 image (zlib, 1.3 MB on disk); README: 'any size'")
    bad_image_case("directory-named-x.tif", lambda d: (d / "x.tif").mkdir() or d / "x.tif")
    bad_image_case("missing-file", lambda d: d / "missing.tif")
    bad_image_case("symlink-loop", _symlink_loop)
    bad_image_case("dangling-symlink", _dangling)
    bad_image_case("npy-float", lambda d: np.save(d / "img.npy", noise((64, 64))) or d / "img.npy", expect="ok")
    bad_image_case("npy-random-bytes", lambda d: (d / "junk.npy").write_bytes(np.random.default_rng(3).bytes(2048))
                   and d / "junk.npy")

    @case("predict/npy-with-malicious-pickle")
    def _(c: Case):
        img = _npy_pickle(c.d)
        predict_case(c, c.ctx.bundle, [img], expect="fail")
        if (c.d / "PWNED").exists():
            c.garbage.append("the pickle in the .npy was EXECUTED (marker file created)")

    @case("predict/unreadable-file-as-root")
    def _(c: Case):
        img = good_tif(c.d / "secret.tif")
        os.chmod(img, 0)
        predict_case(c, c.ctx.bundle, [img], expect="any")
        c.notes.append("run as root: mode 000 does not stop root from reading, so this succeeds by design")

    @case("predict/unreadable-file-as-nobody")
    def _(c: Case):
        if not c.ctx.is_root:
            c.skipped = "skipped: needs root to switch to nobody"
            return
        for p in (c.ctx.root, c.d):
            os.chmod(p, 0o755)
        os.chmod(c.d, 0o777)
        (c.d / "_tmp").mkdir(exist_ok=True)
        os.chmod(c.d / "_tmp", 0o777)
        img = good_tif(c.d / "secret.tif")
        os.chmod(img, 0)
        predict_case(c, c.ctx.bundle, [img], expect="fail", user=NOBODY)
        c.notes.append("run as nobody (setpriv) so that mode 000 really denies the read")

    @case("predict/unicode-and-spaces-in-name")
    def _(c: Case):
        img = good_tif(c.d / "été µm 01 (copy).tif")
        predict_case(c, c.ctx.bundle, [img], expect="ok")

    @case("predict/stack-3d-control")
    def _(c: Case):
        img = tif(c.d / "stack.tif", noise((3, 64, 64)), imagej=True, metadata={"axes": "ZYX"})
        predict_case(c, c.ctx.bundle, [img], expect="ok")


_register_bad_images()


# --- inputs and outputs -------------------------------------------------------------------------
@case("predict/folder-with-no-images")
def _(c: Case):
    (c.d / "in").mkdir()
    (c.d / "in" / "notes.txt").write_text("no images here\n")
    predict_case(c, c.ctx.bundle, [c.d / "in"], expect="fail")


@case("predict/glob-with-no-match")
def _(c: Case):
    (c.d / "in").mkdir()
    predict_case(c, c.ctx.bundle, [str(c.d / "in" / "*.tif")], expect="fail", hash_paths=[c.d / "in"])


@case("predict/mixed-batch-good-and-bad")
def _(c: Case):
    (c.d / "in").mkdir()
    good_tif(c.d / "in" / "good.tif")
    (c.d / "in" / "bad.tif").write_bytes(b"not a tiff")
    (c.d / "in" / "empty.tif").write_bytes(b"")
    predict_case(c, c.ctx.bundle, [c.d / "in"], expect="rc1", allowed={"good_sr.tif"})
    if not (c.d / "out" / "good_sr.tif").is_file():
        c.notes.append("good image NOT predicted")


@case("predict/same-input-twice")
def _(c: Case):
    img = good_tif(c.d / "a.tif")
    p, out = predict_case(c, c.ctx.bundle, [img, img], expect="ok", rerun=False)
    n = sum(1 for ln in p.err.splitlines() if "_sr.tif (" in ln and " slice" in ln)
    c.notes.append(f"{len(list(out.glob('*_sr.tif')))} output(s), predicted {n} time(s)")
    c.run(["predict", c.ctx.bundle, img, img, "--out", out, "--no-progress"])
    c.leftovers()


@case("predict/same-stem-in-two-folders")
def _(c: Case):
    a1, a2 = good_tif(c.d / "d1" / "a.tif", seed=1), good_tif(c.d / "d2" / "a.tif", seed=2)
    p, out = predict_case(c, c.ctx.bundle, [a1, a2], expect="any")
    c.notes.append(f"{len(list(out.glob('*_sr.tif')))} output(s) for 2 inputs named a.tif")


@case("predict/same-stem-tif-and-npy")
def _(c: Case):
    (c.d / "in").mkdir()
    good_tif(c.d / "in" / "a.tif")
    np.save(c.d / "in" / "a.npy", noise((64, 64), seed=5))
    p, out = predict_case(c, c.ctx.bundle, [c.d / "in"], expect="any")
    c.notes.append(f"{len(list(out.glob('*_sr.tif')))} output(s) for a.tif + a.npy")


@case("predict/out-equals-input-folder")
def _(c: Case):
    (c.d / "in").mkdir()
    good_tif(c.d / "in" / "a.tif")
    predict_case(c, c.ctx.bundle, [c.d / "in"], expect="fail", out=c.d / "in", hash_paths=[c.d / "in"])


@case("predict/out-equals-input-folder-via-glob")
def _(c: Case):
    (c.d / "in").mkdir()
    good_tif(c.d / "in" / "a.tif")
    pattern = str(c.d / "in" / "*.tif")
    before = snapshot([c.d / "in"])
    p = c.run(["predict", c.ctx.bundle, pattern, "--out", c.d / "in", "--no-progress"], primary=True)
    c.run(["predict", c.ctx.bundle, pattern, "--out", c.d / "in", "--no-progress"])
    names = sorted(x.name for x in (c.d / "in").iterdir())
    if any(n.endswith("_sr_sr.tif") for n in names):
        c.garbage.append("2nd run predicted its own output: " + ", ".join(n for n in names if "_sr" in n))
    c.notes.append("in/ now holds: " + ", ".join(names))
    c.outputs([c.d / "in"])
    c.leftovers()
    c.compare(before, snapshot([c.d / "in"]))


@case("predict/out-is-existing-file")
def _(c: Case):
    img = good_tif(c.d / "a.tif")
    (c.d / "out.txt").write_text("my precious notes\n")
    predict_case(c, c.ctx.bundle, [img], expect="fail", out=c.d / "out.txt", hash_paths=[c.d / "out.txt"])


@case("predict/out-is-empty-string")
def _(c: Case):
    (c.d / "in").mkdir()
    img = good_tif(c.d / "in" / "a.tif")
    # --out '' is '.', the working folder; the input folder is elsewhere
    before = snapshot([c.d / "in"])
    p = c.run(["predict", c.ctx.bundle, img, "--out", "", "--no-progress"], primary=True)
    c.notes.append("wrote into the working folder: " + (", ".join(x.name for x in c.d.glob("*_sr.tif")) or "nothing"))
    c.outputs([c.d])
    c.leftovers()
    c.compare(before, snapshot([c.d / "in"]))


@case("predict/out-under-proc")
def _(c: Case):
    img = good_tif(c.d / "a.tif")
    predict_case(c, c.ctx.bundle, [img], expect="fail", out=Path("/proc/w2sr-hostile-out"))


@case("predict/overwrite-semantics")
def _(c: Case):
    img = good_tif(c.d / "a.tif")
    out = c.d / "out"
    base = ["predict", c.ctx.bundle, img, "--out", out, "--no-progress"]
    before = snapshot([img, c.ctx.bundle])
    c.run(base, primary=True)
    first = sha256(out / "a_sr.tif")
    # change the existing output: without --overwrite it must be skipped (left as is)
    import tifffile

    tifffile.imwrite(out / "a_sr.tif", np.zeros((128, 128), np.float32))
    marked = sha256(out / "a_sr.tif")
    p2 = c.run(base)
    kept = sha256(out / "a_sr.tif") == marked
    p3 = c.run([*base, "--overwrite"])
    replaced = sha256(out / "a_sr.tif") == first
    c.notes.append(f"without --overwrite: {'skipped, kept' if kept else 'REPLACED'} "
                   f"({'skip logged' if 'skipped' in p2.err else 'no skip message'}); "
                   f"with --overwrite: {'re-predicted, same bytes as the first run' if replaced else 'NOT replaced'}")
    c.outputs([out])
    c.leftovers()
    c.compare(before, snapshot([img, c.ctx.bundle]))


@case("predict/existing-empty-output-without-overwrite")
def _(c: Case):
    img = good_tif(c.d / "a.tif")
    out = c.d / "out"
    out.mkdir()
    (out / "a_sr.tif").write_bytes(b"")  # e.g. left by another tool that crashed
    before = snapshot([img, c.ctx.bundle])
    p = c.run(["predict", c.ctx.bundle, img, "--out", out, "--no-progress"], primary=True)
    size = (out / "a_sr.tif").stat().st_size
    c.notes.append(f"a 0-byte a_sr.tif already there: {'skipped (still 0 bytes)' if size == 0 else 'replaced'}")
    c.outputs([out], planted=[out / "a_sr.tif"] if size == 0 else [])
    c.leftovers()
    c.compare(before, snapshot([img, c.ctx.bundle]))


# --- bundle faults ------------------------------------------------------------------------------
def bundle_case(name: str, damage: Callable[[Path], Path], runtime: str = "onnx", expect: str = "fail",
                packages: bool = False):
    @case(f"bundle/{name}")
    def _(c: Case):
        b = c.ctx.bundle_copy(c.d / "bundle", packages=packages)
        arg = damage(b)
        img = good_tif(c.d / "a.tif")
        p, out = predict_case(c, arg, [img], expect=expect, extra=["--runtime", runtime] if runtime != "onnx" else [],
                              hash_paths=[b])
        for o in sorted(out.glob("*_sr.tif")):
            import tifffile

            y = tifffile.imread(o)
            c.notes.append(f"{o.name} range {float(np.nanmin(y)):.4g} .. {float(np.nanmax(y)):.4g} "
                           f"(input {float(tifffile.imread(img).min()):.4g} .. {float(tifffile.imread(img).max()):.4g})")


def _zipped(b: Path) -> Path:
    z = next((b / "packages").glob("*_deepimagej.zip"))
    return z


def _rdf(text: str | bytes):
    def damage(b: Path) -> Path:
        f = b / "rdf.yaml"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        return b
    return damage


def _flip_byte(name: str):
    def damage(b: Path) -> Path:
        f = b / name
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
        return b
    return damage


def _truncate(name: str, fix_sha: bool = False):
    def damage(b: Path) -> Path:
        import yaml

        f = b / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        if fix_sha:
            doc = yaml.safe_load((b / "rdf.yaml").read_text())
            for w in doc["weights"].values():
                if w.get("source") == name:
                    w["sha256"] = sha256(f)
            (b / "rdf.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return b
    return damage


def _rdf_edit(fn: Callable[[dict], None]):
    def damage(b: Path) -> Path:
        import yaml

        doc = yaml.safe_load((b / "rdf.yaml").read_text())
        fn(doc)
        (b / "rdf.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        return b
    return damage


def _degenerate_normalisation(doc: dict) -> None:
    """std 0 (fixed z-score) or an empty percentile range (scale_range): every output is x / eps."""
    for op in doc["inputs"][0].get("preprocessing") or []:
        kw = op.setdefault("kwargs", {})
        if op["name"] == "zero_mean_unit_variance":
            kw["std"], kw["eps"] = [0.0], 0.0
        elif op["name"] == "scale_range":
            kw["min_percentile"] = kw["max_percentile"] = 50.0
            kw["eps"] = 0.0


def _halo_negative(doc: dict) -> None:
    doc["outputs"][0]["halo"] = [0, -5, -5, 0]


bundle_case("zipped-bundle", _zipped, packages=True)
bundle_case("not-a-bundle-folder", lambda b: (shutil.rmtree(b), b.mkdir(), (b / "x.txt").write_text("x"), b)[-1])
bundle_case("missing-bundle-path", lambda b: b.parent / "no-such-bundle")
bundle_case("rdf-not-yaml", _rdf("inputs: [oops\n  name: x"))
bundle_case("rdf-binary-garbage", _rdf(b"\xff\xfe\x00\x01\x80garbage\x00"))
bundle_case("rdf-yaml-list", _rdf("- just\n- a list\n"))
bundle_case("rdf-inputs-oops", _rdf("inputs: [oops]\noutputs: [oops]\n"))
bundle_case("rdf-empty", _rdf(""))
bundle_case("rdf-degenerate-normalisation", _rdf_edit(_degenerate_normalisation), expect="fail")
bundle_case("rdf-negative-halo", _rdf_edit(_halo_negative), expect="any")
bundle_case("weights-onnx-missing", lambda b: ((b / "weights.onnx").unlink(), b)[-1])
bundle_case("weights-onnx-sha-mismatch", _flip_byte("weights.onnx"))
bundle_case("weights-onnx-truncated", _truncate("weights.onnx"))
bundle_case("weights-onnx-truncated-sha-fixed", _truncate("weights.onnx", fix_sha=True))
bundle_case("savedmodel-zip-truncated-sha-fixed", _truncate("tf_saved_model.zip", fix_sha=True), runtime="tensorflow")
bundle_case("rdf-yaml-path-as-bundle-control", lambda b: b / "rdf.yaml", expect="ok")


@case("bundle/run-folder-given-as-bundle")
def _(c: Case):
    img = good_tif(c.d / "a.tif")
    predict_case(c, c.ctx.run, [img], expect="fail")


# --- option faults ------------------------------------------------------------------------------
def option_case(name: str, extra: list[str], expect: str = "fail", timeout: float = 120):
    @case(f"option/{name}")
    def _(c: Case):
        img = good_tif(c.d / "a.tif")
        predict_case(c, c.ctx.bundle, [img], expect=expect, extra=extra, timeout=timeout)


option_case("threads=-1", ["--threads", "-1"])
option_case("threads=0", ["--threads", "0"])
option_case("tile=3", ["--tile", "3"])
option_case("tile=-5", ["--tile", "-5"])
option_case("tile=0", ["--tile", "0"])
option_case("tile=100000", ["--tile", "100000"], expect="ok")
option_case("batch=0", ["--batch", "0"])
option_case("format=bogus", ["--format", "jpeg2000"])
option_case("runtime=bogus", ["--runtime", "pytorch"])
option_case("threads=abc", ["--threads", "abc"])
option_case("scheduler-unreachable", ["--scheduler", "tcp://127.0.0.1:9"], timeout=90)


# --- other commands -----------------------------------------------------------------------------
def simple_cmd(c: Case, args: list, expect: str = "fail", hash_paths: Iterable[Path] = (), rerun: bool = True,
               must_not_exist: Iterable[Path] = (), timeout: float = 300, cwd: Optional[Path] = None) -> Proc:
    before = snapshot(hash_paths)
    kw = {"cwd": cwd} if cwd else {}
    p = c.run(list(args), primary=True, timeout=timeout, **kw)
    c.expect(p, expect)
    for m in must_not_exist:
        if Path(m).exists():
            c.garbage.append(f"{os.path.relpath(m, c.d)} was created")
    if rerun:
        c.run(list(args), timeout=timeout, **kw)
    c.leftovers()
    c.compare(before, snapshot(hash_paths))
    return p


@case("cmd/demo-missing-config")
def _(c: Case):
    simple_cmd(c, ["demo", "--config", c.d / "missing.yaml", "--out", c.d / "b", "--run-dir", c.d / "run"],
               must_not_exist=[c.d / "b", c.d / "run"])


@case("cmd/simulate-tiny")
def _(c: Case):
    p = simple_cmd(c, ["simulate", "--config", "tiny", "--out", c.d / "X"], expect="ok")
    n = len(list((c.d / "X").rglob("*.npy"))) + len(list((c.d / "X").rglob("*.png")))
    c.notes.append(f"{n} files simulated")


@case("cmd/simulate-n-fovs-0")
def _(c: Case):
    simple_cmd(c, ["simulate", "--out", c.d / "X", "--n-fovs", "0"], expect="any")


@case("cmd/simulate-size-1")
def _(c: Case):
    simple_cmd(c, ["simulate", "--out", c.d / "X", "--n-fovs", "2", "--size", "1"], expect="any")


@case("cmd/check-data-empty-folder")
def _(c: Case):
    (c.d / "empty").mkdir()
    simple_cmd(c, ["check-data", c.d / "empty"], hash_paths=[c.d / "empty"])


@case("cmd/train-missing-config")
def _(c: Case):
    simple_cmd(c, ["train", "--config", c.d / "missing.yaml", "--run-dir", c.d / "run"], must_not_exist=[c.d / "run"])


@case("cmd/train-config-not-yaml")
def _(c: Case):
    (c.d / "bad.yaml").write_text("data: [oops\n  root: x\n")
    simple_cmd(c, ["train", "--config", c.d / "bad.yaml", "--run-dir", c.d / "run"], must_not_exist=[c.d / "run"],
               hash_paths=[c.d / "bad.yaml"])


@case("cmd/train-set-unknown-key")
def _(c: Case):
    simple_cmd(c, ["train", "--config", "tiny", "--run-dir", c.d / "run", "--set", "nonsense.key=1"],
               must_not_exist=[c.d / "run"], cwd=c.ctx.train_cwd())


@case("cmd/train-set-bad-value")
def _(c: Case):
    simple_cmd(c, ["train", "--config", "tiny", "--run-dir", c.d / "run", "--set", "train.global_batch_size=abc"],
               must_not_exist=[c.d / "run"], cwd=c.ctx.train_cwd())


@case("cmd/train-resume-empty-run-dir")
def _(c: Case):
    (c.d / "EMPTY").mkdir()
    p = simple_cmd(c, ["train", "--config", "tiny", "--resume", "--run-dir", c.d / "EMPTY"],
                   hash_paths=[c.d / "EMPTY"], cwd=c.ctx.train_cwd())


@case("cmd/train-resume-missing-run-dir")
def _(c: Case):
    simple_cmd(c, ["train", "--config", "tiny", "--resume", "--run-dir", c.d / "MISSING"],
               must_not_exist=[c.d / "MISSING"], cwd=c.ctx.train_cwd())


@case("cmd/train-into-non-empty-folder-without-resume")
def _(c: Case):
    (c.d / "mine").mkdir()
    (c.d / "mine" / "thesis.tex").write_text("do not touch\n")
    simple_cmd(c, ["train", "--config", "tiny", "--run-dir", c.d / "mine"], hash_paths=[c.d / "mine"],
               cwd=c.ctx.train_cwd())


@case("cmd/evaluate-not-a-run")
def _(c: Case):
    (c.d / "notrun").mkdir()
    (c.d / "notrun" / "x.txt").write_text("x")
    simple_cmd(c, ["evaluate", c.d / "notrun"], hash_paths=[c.d / "notrun"])


@case("cmd/evaluate-missing-folder")
def _(c: Case):
    simple_cmd(c, ["evaluate", c.d / "missing"])


@case("cmd/export-not-a-run")
def _(c: Case):
    (c.d / "notrun").mkdir()
    (c.d / "notrun" / "x.txt").write_text("x")
    simple_cmd(c, ["export", c.d / "notrun", "--out", c.d / "bundle", "--quick"], hash_paths=[c.d / "notrun"],
               must_not_exist=[c.d / "bundle"])


@case("cmd/export-truncated-generator")
def _(c: Case):
    run = c.ctx.run_copy(c.d / "run")
    g = run / "generator.keras"
    g.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    simple_cmd(c, ["export", run, "--out", c.d / "bundle", "--quick"], hash_paths=[run],
               must_not_exist=[c.d / "bundle"])


@case("cmd/export-random-bytes-generator")
def _(c: Case):
    run = c.ctx.run_copy(c.d / "run")
    (run / "generator.keras").write_bytes(np.random.default_rng(4).bytes(100_000))
    simple_cmd(c, ["export", run, "--out", c.d / "bundle", "--quick"], hash_paths=[run],
               must_not_exist=[c.d / "bundle"])


@case("cmd/export-config-missing")
def _(c: Case):
    run = c.ctx.run_copy(c.d / "run")
    (run / "config.yaml").unlink()
    simple_cmd(c, ["export", run, "--out", c.d / "bundle", "--quick"], hash_paths=[run],
               must_not_exist=[c.d / "bundle"])


@case("cmd/export-keras-file-without-config")
def _(c: Case):
    k = c.d / "g.keras"
    shutil.copy2(c.ctx.run / "generator.keras", k)
    simple_cmd(c, ["export", k, "--out", c.d / "bundle", "--quick"], hash_paths=[k], must_not_exist=[c.d / "bundle"])


@case("cmd/export-out-existing-non-bundle-folder")
def _(c: Case):
    (c.d / "mystuff").mkdir()
    (c.d / "mystuff" / "notes.txt").write_text("precious\n")
    simple_cmd(c, ["export", c.ctx.run, "--out", c.d / "mystuff", "--quick"],
               hash_paths=[c.d / "mystuff", c.ctx.run])


@case("cmd/export-out-existing-file")
def _(c: Case):
    (c.d / "bundle").write_text("a file\n")
    simple_cmd(c, ["export", c.ctx.run, "--out", c.d / "bundle", "--quick"], hash_paths=[c.d / "bundle", c.ctx.run])


@case("cmd/export-tile-3")
def _(c: Case):
    simple_cmd(c, ["export", c.ctx.run, "--out", c.d / "bundle", "--quick", "--tile", "3"], hash_paths=[c.ctx.run],
               must_not_exist=[c.d / "bundle"])


@case("cmd/validate-non-bundle")
def _(c: Case):
    (c.d / "notbundle").mkdir()
    (c.d / "notbundle" / "x.txt").write_text("x")
    p = simple_cmd(c, ["validate", c.d / "notbundle"], expect="rc2", hash_paths=[c.d / "notbundle"])


@case("cmd/validate-missing-path")
def _(c: Case):
    simple_cmd(c, ["validate", c.d / "missing"], expect="rc2")


@case("cmd/validate-tampered-weights-no-bioimageio")
def _(c: Case):
    b = c.ctx.bundle_copy(c.d / "bundle", packages=True)
    _flip_byte("weights.onnx")(b)
    simple_cmd(c, ["validate", b, "--no-bioimageio"], expect="rc1", hash_paths=[b], rerun=False, timeout=400)


# --- faults: read-only file system ----------------------------------------------------------------
def _ro_disk(c: Case) -> Optional[Path]:
    disk = c.d / "ro"
    why = c.ctx.mount(disk, 1024)
    if why:
        c.skipped = f"skipped: {why}"
        return None
    Ctx.remount(disk, "ro")
    return disk


@case("fault/read-only-fs-predict")
def _(c: Case):
    disk = _ro_disk(c)
    if disk:
        img = good_tif(c.d / "a.tif")
        predict_case(c, c.ctx.bundle, [img], expect="fail", out=disk / "out")


@case("fault/read-only-fs-export")
def _(c: Case):
    disk = _ro_disk(c)
    if disk:
        simple_cmd(c, ["export", c.ctx.run, "--out", disk / "bundle", "--quick"], hash_paths=[c.ctx.run])


@case("fault/read-only-fs-train")
def _(c: Case):
    disk = _ro_disk(c)
    if disk:
        cwd = c.ctx.train_cwd()
        simple_cmd(c, ["train", "--config", "tiny", "--run-dir", disk / "run"], cwd=cwd,
                   hash_paths=[cwd / "data"])


# --- faults: full disk --------------------------------------------------------------------------
@case("fault/full-disk-predict")
def _(c: Case):
    disk = c.d / "disk"
    why = c.ctx.mount(disk, 300)
    if why:
        c.skipped = f"skipped: {why}"
        return
    imgs = [good_tif(c.d / "in" / f"{n}.tif", size=128, seed=i) for i, n in enumerate("abc")]
    out = disk / "out"
    args = ["predict", c.ctx.bundle, *imgs, "--out", out, "--no-progress"]
    before = snapshot([*imgs, c.ctx.bundle])
    p = c.run(args, primary=True)
    c.expect(p, "rc2")
    if "no space left on the device; stopped at" not in p.err:
        c.notes.append("no 'no space left ... stopped at' line")
    left = sorted(os.path.relpath(x, disk) for x in disk.rglob("*"))
    c.notes.append("on the full disk: " + ", ".join(left))
    c.outputs([out], allowed={"a_sr.tif"})
    Ctx.remount(disk, "size=8m")
    p2 = c.run(args)
    c.notes.append(f"after freeing space: exit {p2.rc}, " + ", ".join(sorted(x.name for x in out.iterdir())))
    c.outputs([out])
    c.leftovers()
    c.compare(before, snapshot([*imgs, c.ctx.bundle]))


@case("fault/full-disk-export")
def _(c: Case):
    disk = c.d / "disk"
    why = c.ctx.mount(disk, 256)
    if why:
        c.skipped = f"skipped: {why}"
        return
    old = disk / "bundle"
    old.mkdir()
    (old / "rdf.yaml").write_text("name: an older bundle\nconfig: {w2sr: {}}\n")
    args = ["export", c.ctx.run, "--out", old, "--force", "--quick"]
    before = snapshot([old, c.ctx.run])
    p = c.run(args, primary=True, timeout=400)
    c.expect(p, "rc2")
    c.compare(before, snapshot([old, c.ctx.run]), label="by the failed run: ")
    c.notes.append("on the full disk: " + ", ".join(sorted(os.path.relpath(x, disk) for x in disk.rglob("*"))))
    Ctx.remount(disk, "size=128m")
    before_run = snapshot([c.ctx.run])
    p2 = c.run(args, timeout=400)
    c.notes.append(f"after freeing space: exit {p2.rc}")
    c.leftovers()
    c.compare(before_run, snapshot([c.ctx.run]))


@case("fault/full-disk-train")
def _(c: Case):
    disk = c.d / "disk"
    why = c.ctx.mount(disk, 300)
    if why:
        c.skipped = f"skipped: {why}"
        return
    cwd = c.ctx.train_cwd()
    run = disk / "run"
    before = snapshot([cwd / "data"])
    p = c.run(["train", "--config", "tiny", "--run-dir", run], cwd=cwd, primary=True, timeout=300)
    c.expect(p, "rc2")
    Ctx.remount(disk, "size=128m")
    p2 = c.run(["train", "--config", "tiny", "--run-dir", run, "--resume"], cwd=cwd, timeout=300)
    done = (run / "DONE").is_file() and (run / "generator.keras").is_file()
    c.notes.append(f"--resume after freeing space: exit {p2.rc}, {'finished (DONE)' if done else 'NOT finished'}")
    c.leftovers()
    c.compare(before, snapshot([cwd / "data"]))


# --- faults: kill -9 ----------------------------------------------------------------------------
def wait_for(cond: Callable[[], bool], r: Running, timeout: float, step: float = 0.005) -> bool:
    t_end = time.time() + timeout
    while time.time() < t_end:
        if cond():
            return True
        if not r.alive():
            return False
        time.sleep(step)
    return False


@case("fault/kill9-predict-midway")
def _(c: Case):
    imgs = [good_tif(c.d / "in" / f"img{i}.tif", size=512, seed=i) for i in range(6)]
    out = c.d / "out"
    args = ["predict", c.ctx.bundle, c.d / "in", "--out", out, "--format", "uint16", "--no-progress"]
    before = snapshot([c.d / "in", c.ctx.bundle])
    r = c.start(args)
    # kill while a temporary file is being written (after at least one output, when possible)
    hit = wait_for(lambda: out.is_dir() and any("w2sr" in x.name for x in out.iterdir())
                   and any(x.name.endswith("_sr.tif") for x in out.iterdir()), r, 120)
    if not hit:
        hit = wait_for(lambda: out.is_dir() and any("w2sr" in x.name for x in out.iterdir()), r, 60)
    r.kill9()
    p = c.finish(r)
    after_kill = sorted(x.name for x in out.iterdir()) if out.is_dir() else []
    c.notes.append(("killed mid-write" if hit else "NOT killed mid-write (finished first)")
                   + f"; after the kill: {', '.join(after_kill)}")
    c.outputs([out])  # whatever has a final name must be complete
    p2 = c.run(args, primary=True)
    c.expect(p2, "ok")
    outs = sorted(out.glob("*_sr.tif"))
    c.notes.append(f"rerun: exit {p2.rc}, {len(outs)}/{len(imgs)} outputs")
    c.outputs([out])
    c.leftovers()
    c.compare(before, snapshot([c.d / "in", c.ctx.bundle]))


@case("fault/sigint-predict-midway")
def _(c: Case):
    imgs = [good_tif(c.d / "in" / f"img{i}.tif", size=512, seed=i) for i in range(4)]
    out = c.d / "out"
    args = ["predict", c.ctx.bundle, c.d / "in", "--out", out, "--format", "uint16", "--no-progress"]
    before = snapshot([c.d / "in", c.ctx.bundle])
    r = c.start(args)
    hit = wait_for(lambda: out.is_dir() and any("w2sr" in x.name for x in out.iterdir()), r, 120)
    r.signal(signal.SIGINT)
    p = c.finish(r, primary=True, timeout=60)
    right_after = [x.name for x in leftovers_in(out)] if out.is_dir() else []
    c.notes.append(("interrupted mid-write" if hit else "NOT interrupted mid-write")
                   + f"; exit {p.rc}; temp files right after Ctrl-C (before any rerun): {right_after or 'none'}")
    c.outputs([out])
    p2 = c.run(args)
    c.outputs([out])
    c.leftovers()
    c.compare(before, snapshot([c.d / "in", c.ctx.bundle]))


def _export_kill(c: Case, quick: bool) -> None:
    """Kill -9 an export midway (with an older bundle in place), then export again with --quick."""
    target = c.ctx.bundle_copy(c.d / "bundle", packages=True)  # an existing bundle of the same name
    run = c.ctx.run
    old_state = snapshot([target])
    run_state = snapshot([run])
    mine = f"TMPDIR={c.d / '_tmp'}"  # every process of this case (and only those) has it
    args = ["export", run, "--out", target] + (["--quick"] if quick else [])
    r = c.start(args)
    if quick:
        cond = lambda: any((s / "weights.onnx").exists() for s in c.d.glob(".bundle.staging*"))  # noqa: E731
        what = "staging folder with weights.onnx"
    else:
        cond = lambda: any(pid != r.pid and "-m bioimageio.core" in cmd  # noqa: E731
                           for pid, cmd in session_members(r.pid))
        what = "'python -m bioimageio.core test' child running"
    hit = wait_for(cond, r, 300, step=0.05)
    children = [f"{pid}: {cmd[:100]}" for pid, cmd in session_members(r.pid) if pid != r.pid]
    r.kill9()
    time.sleep(3)  # PR_SET_PDEATHSIG: children should be gone by now
    orphans = [f"{pid}: {cmd[:120]}" for pid, cmd in processes_with_env(mine)]
    bioimageio_left = sorted(pid for pid, _ in processes_with_env(mine) if pid in pgrep("bioimageio"))
    p = c.finish(r)  # also kills anything left in the session
    staged = sorted(x.name for x in c.d.iterdir() if x.name.startswith("."))
    c.notes.append(f"killed {'when ' + what if hit else 'WITHOUT seeing ' + what}; children at the kill: "
                   f"{children or 'none'}; 3 s later, processes of this case alive: {orphans or 'none'} "
                   f"(of them matching pgrep -f bioimageio: {bioimageio_left or 'none'}); "
                   f"hidden entries after the kill: {', '.join(staged) or 'none'}")
    if orphans:
        c.leftover_paths.append(f"orphan processes after kill -9: {orphans}")
    c.compare(old_state, snapshot([target]), label="old bundle by the killed export: ")
    p2 = c.run(["export", run, "--out", target, "--quick"], primary=True, timeout=400)
    c.expect(p2, "ok")
    c.notes.append(f"rerun --quick: exit {p2.rc}; processes of this case left after it: "
                   f"{[pid for pid, _ in processes_with_env(mine)] or 'none'}")
    c.leftovers()
    c.compare(run_state, snapshot([run]))


@case("fault/kill9-export-quick-midway")
def _(c: Case):
    _export_kill(c, quick=True)


@case("fault/kill9-export-during-reference-test")
def _(c: Case):
    _export_kill(c, quick=False)


@case("fault/kill9-train-then-resume")
def _(c: Case):
    cwd = c.ctx.train_cwd()
    run = c.d / "run"
    before = snapshot([cwd / "data"])
    args = ["train", "--config", "tiny", "--run-dir", run, "--set", "train.pretrain.steps_per_epoch=24"]
    r = c.start(args, cwd=cwd)
    hit = wait_for(lambda: (run / "checkpoints").is_dir() and any((run / "checkpoints").glob("ckpt-*")), r, 240,
                   step=0.01)
    r.kill9()
    c.finish(r)
    c.notes.append(("killed at the first checkpoint" if hit else "NOT killed midway (it finished)")
                   + "; after the kill: " + ", ".join(sorted(x.name for x in (run / "checkpoints").iterdir()))
                   if (run / "checkpoints").is_dir() else "no checkpoints folder")
    p2 = c.run(["train", "--run-dir", run, "--resume"], cwd=cwd, primary=True, timeout=400)
    c.expect(p2, "ok")
    done = (run / "DONE").is_file() and (run / "generator.keras").is_file()
    c.notes.append(f"--resume: exit {p2.rc}, {'finished (DONE, generator.keras)' if done else 'NOT finished'}")
    c.leftovers()
    c.compare(before, snapshot([cwd / "data"]))


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def cell(text: str, limit: int = 220) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.replace("|", "\\|")


def yes_no(items: list[str]) -> str:
    return "no" if not items else "**yes**: " + "; ".join(items)


def table(rows: list[Row]) -> str:
    head = ("| # | case | command (short) | exit (each run; K = kill -9) | error line / message | traceback? | garbage outputs? | "
            "leftovers after the next run? | inputs modified? | notes | s |")
    lines = [head, "|" + "---|" * 11]
    for i, r in enumerate(rows, 1):
        lines.append("| " + " | ".join([
            str(i), cell(r.case), cell(r.command, 90), cell(r.rc), cell(r.message), "**yes**" if r.traceback else "no",
            cell(yes_no(r.garbage)), cell(yes_no(r.leftovers)), cell(yes_no(r.modified)), cell("; ".join(r.notes), 900),
            f"{r.seconds:.0f}"]) + " |")
    return "\n".join(lines)


def details(rows: list[Row]) -> str:
    flagged = [r for r in rows if r.traceback or r.garbage or r.leftovers or r.modified
               or any("UNEXPECTED" in n or "error:' lines" in n for n in r.notes)]
    if not flagged:
        return ""
    out = ["", "## Details of flagged cases", ""]
    for r in flagged:
        err = r.stderr
        if len(err) > 6000:
            err = err[:2500] + "\n[...]\n" + err[-3000:]
        out += [f"### {r.case}", "", "```", err, "```", ""]
    return "\n".join(out)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default=str(REPO / "bundle"), help="built bundle to copy (never modified)")
    ap.add_argument("--run", default=str(REPO / "runs" / "demo"), help="trained run folder to copy (never modified)")
    ap.add_argument("--only", action="append", default=[], metavar="SUBSTRING",
                    help="run only the cases whose name contains it (repeatable)")
    ap.add_argument("--md", metavar="FILE", help="also write the table (and details) to this Markdown file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder under /tmp")
    ap.add_argument("--list", action="store_true", help="list the case names and exit")
    args = ap.parse_args(argv)

    selected = [(n, f) for n, f in CASES if not args.only or any(s in n for s in args.only)]
    if args.list:
        print("\n".join(n for n, _ in selected))
        return 0
    if not selected:
        print(f"no case matches {args.only}", file=sys.stderr)
        return 2
    bundle_src, run_src = Path(args.bundle).resolve(), Path(args.run).resolve()
    for what, p, marker in (("bundle", bundle_src, "rdf.yaml"), ("run", run_src, "generator.keras")):
        if not (p / marker).is_file():
            print(f"{p}: not a {what} ({marker} missing)", file=sys.stderr)
            return 2
    if not W2SR.exists():
        print(f"{W2SR}: the CLI is not installed (make install)", file=sys.stderr)
        return 2

    originals = snapshot([bundle_src, run_src])
    root = Path(tempfile.mkdtemp(prefix="hostile-corpus-", dir="/tmp"))
    ctx = Ctx(root, bundle_src, run_src)
    rows: list[Row] = []
    t_all = time.perf_counter()
    try:
        for i, (name, fn) in enumerate(selected, 1):
            d = root / f"{i:03d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}"
            d.mkdir()
            c = Case(ctx, name, d)
            t0 = time.perf_counter()
            try:
                fn(c)
            except Exception as exc:  # a bug in this script, not in w2sr: report it as such
                import traceback

                c.notes.append(f"CORPUS SCRIPT ERROR: {type(exc).__name__}: {exc}")
                print(traceback.format_exc(), file=sys.stderr)
            finally:
                for where in [m for m in ctx.mounts if str(m).startswith(str(d))]:
                    subprocess.run(["umount", "-l", str(where)], capture_output=True)
                    ctx.mounts.remove(where)
            row = c.row(time.perf_counter() - t0)
            rows.append(row)
            flags = [k for k, v in (("TRACEBACK", row.traceback), ("GARBAGE", row.garbage),
                                    ("LEFTOVERS", row.leftovers), ("MODIFIED", row.modified)) if v]
            print(f"[{i}/{len(selected)}] {name}: exit {row.rc} in {row.seconds:.1f} s "
                  f"{' '.join(flags)}  {row.message[:120]}", file=sys.stderr, flush=True)
    finally:
        ctx.unmount_all()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - t_all

    n_tb = sum(r.traceback for r in rows)
    n_garbage = sum(bool(r.garbage) for r in rows)
    n_left = sum(bool(r.leftovers) for r in rows)
    n_mod = sum(bool(r.modified) for r in rows)
    summary = (f"CORPUS cases={len(rows)} tracebacks={n_tb} garbage={n_garbage} leftovers={n_left} "
               f"inputs_modified={n_mod}")
    originals_ok = snapshot([bundle_src, run_src]) == originals
    text = "\n".join([
        "# Hostile-input corpus (issue 11)", "",
        f"w2sr at {REPO}; bundle {bundle_src}; run {run_src}; {len(rows)} cases in {elapsed:.0f} s"
        + (f"; work folder kept: {root}" if args.keep else ""), "",
        table(rows),
        details(rows), "",
        f"original bundle and run folder unchanged: {'yes' if originals_ok else 'NO'}", "",
        summary,
    ])
    print(text)
    if args.md:
        Path(args.md).write_text(text + "\n")
    return 1 if (n_tb or n_garbage or n_left or n_mod) else 0


if __name__ == "__main__":
    sys.exit(main())
