"""Run an ImageJ macro unattended with Debian's ImageJ 1.x, and get (exit code, stdout, stderr).

Used by tests/test_fiji_macros.py; also a command line::

    python fiji_macros/imagej_runner.py MACRO.ijm ["key=value key2=[value with spaces]"] [--timeout S]

What it does (see fiji_macros/README.md):

* compiles ``runner/src`` (the headless macro runner, class ``ij.macro.HeadlessMacroRunner``) and
  ``runner/plugin_src`` (the "DeepImageJ Run" STAND-IN plugin) against ImageJ's ij.jar into
  ``runner/build/`` (git-ignored), once, and again only when a source is newer than its class;
* runs ``xvfb-run -a timeout ... java -cp ij.jar:build/classes ij.macro.HeadlessMacroRunner``
  with ``-Dplugins.dir=build/ij`` (so build/ij/plugins/DeepImageJ_Run.class is the command
  "DeepImageJ Run") and the stand-in's Python interpreter and script as system properties;
* returns the runner's exit code: 0 ok, 1 macro error, 2 exit("message") or an aborting IJ.error,
  3 usage, 4 a dialog opened, 124 timed out.

Needs: java + javac (default-jdk-headless), ij.jar (Debian package imagej / libij-java), xvfb-run
(xvfb, xauth): ``scripts/install_system_deps.sh`` installs them.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
RUNNER_DIR = HERE / "runner"
BUILD = RUNNER_DIR / "build"
CLASSES = BUILD / "classes"
IJ_HOME = BUILD / "ij"                 # -Dplugins.dir: ImageJ uses IJ_HOME/plugins
PLUGINS = IJ_HOME / "plugins"
STANDIN_SCRIPT = RUNNER_DIR / "deepimagej_standin.py"
IJ_JAR_CANDIDATES = (os.environ.get("IJ_JAR", ""), "/usr/share/java/ij.jar", "/usr/share/imagej/ij.jar")

OK, MACRO_ERROR, MACRO_EXIT, USAGE, DIALOG, TIMED_OUT = 0, 1, 2, 3, 4, 124


@dataclass
class MacroRun:
    returncode: int
    stdout: str
    stderr: str
    command: list[str]

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr


class ImageJUnavailable(RuntimeError):
    """A tool the runner needs is missing (message says which and how to install it)."""


def ij_jar() -> Optional[Path]:
    for c in IJ_JAR_CANDIDATES:
        if c and Path(c).is_file():
            return Path(c)
    return None


def missing_tools() -> list[str]:
    """What is missing to run macros here (empty when everything is there)."""
    missing = []
    if ij_jar() is None:
        missing.append("ij.jar (Debian package 'imagej', or set IJ_JAR)")
    for tool, pkg in (("java", "default-jdk-headless"), ("javac", "default-jdk-headless"),
                      ("xvfb-run", "xvfb + xauth"), ("timeout", "coreutils")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} ({pkg})")
    return missing


def _stale(sources: list[Path], out_dir: Path, main_class: Path) -> bool:
    stamp = out_dir / ".built"
    if not stamp.exists() or not (out_dir / main_class).exists():
        return True
    built = stamp.stat().st_mtime
    return any(s.stat().st_mtime > built for s in sources)


def _javac(sources: list[Path], out_dir: Path, classpath: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["javac", "-nowarn", "-encoding", "UTF-8", "-cp", classpath, "-d", str(out_dir)] + [str(s) for s in sources]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"javac failed for {', '.join(s.name for s in sources)}:\n{proc.stdout}{proc.stderr}")
    (out_dir / ".built").touch()


def build(force: bool = False) -> Path:
    """Compile the runner and the stand-in plugin when needed; return the build folder."""
    missing = missing_tools()
    if missing:
        raise ImageJUnavailable("cannot run ImageJ macros here, missing: " + "; ".join(missing)
                                + " (run scripts/install_system_deps.sh as root)")
    jar = str(ij_jar())
    BUILD.mkdir(parents=True, exist_ok=True)
    with open(BUILD / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not compile into one folder at once
        runner_src = sorted((RUNNER_DIR / "src").rglob("*.java"))
        plugin_src = sorted((RUNNER_DIR / "plugin_src").glob("*.java"))
        if force or _stale(runner_src, CLASSES, Path("ij/macro/HeadlessMacroRunner.class")):
            _javac(runner_src, CLASSES, jar)
        if force or _stale(plugin_src, PLUGINS, Path("DeepImageJ_Run.class")):
            _javac(plugin_src, PLUGINS, jar)
        (IJ_HOME / "models").mkdir(exist_ok=True)  # DeepImageJ looks up model names here
    return BUILD


def default_python() -> str:
    """Interpreter for the stand-in: $W2SR_PYTHON, else the project's venv, else this one."""
    env = os.environ.get("W2SR_PYTHON")
    if env:
        return env
    venv = HERE.parent / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def run_macro(macro: str | Path, argument: str = "", *, timeout: float = 300, python: Optional[str] = None,
              java_options: tuple[str, ...] = (), env: Optional[dict] = None, cwd: Optional[Path] = None) -> MacroRun:
    """Run ``macro`` with ``argument`` (its getArgument()) under Xvfb; never hangs past ``timeout``."""
    build()
    macro = Path(macro).resolve()
    java = [
        "java", "-Djava.awt.headless=false", f"-Dplugins.dir={IJ_HOME}",
        f"-Dw2sr.python={python or default_python()}", f"-Dw2sr.standin.script={STANDIN_SCRIPT}",
        *java_options,
        "-cp", f"{ij_jar()}{os.pathsep}{CLASSES}", "ij.macro.HeadlessMacroRunner", str(macro), argument,
    ]
    limit = max(1, int(timeout))
    run_env = dict(os.environ if env is None else env)
    with tempfile.TemporaryDirectory(prefix="w2sr_imagej_") as scratch:
        # java's own exit code goes through a file: xvfb-run's status also reflects its clean-up
        rc_file = Path(scratch) / "rc"
        script = 'limit=$1; rcf=$2; shift 2; timeout -k 10 "$limit" "$@"; echo $? > "$rcf"'
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "sh", "-c", script, "w2sr-imagej",
               str(limit), str(rc_file)] + java
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=run_env, cwd=str(cwd) if cwd else None, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=limit + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own session: xvfb-run, Xvfb and java
            out, err = proc.communicate()
            return MacroRun(TIMED_OUT, out, err + f"\nimagej_runner: killed after {limit + 30} s", cmd)
        text = rc_file.read_text().strip() if rc_file.exists() else ""
    if not text.isdigit():  # java never ran: Xvfb could not start, or xvfb-run failed
        return MacroRun(proc.returncode or 1, out,
                        err + f"\nimagej_runner: xvfb-run failed (exit {proc.returncode}) before ImageJ ran", cmd)
    rc = int(text)
    if rc == TIMED_OUT:
        err += f"\nimagej_runner: the macro ran longer than {limit} s and was stopped"
    return MacroRun(rc, out, err, cmd)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description="Run an ImageJ macro unattended (Debian ImageJ 1.x + Xvfb).")
    p.add_argument("macro")
    p.add_argument("argument", nargs="?", default="", help="what the macro's getArgument() returns")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--python", default=None, help="interpreter for the DeepImageJ stand-in")
    args = p.parse_args(argv)
    try:
        res = run_macro(args.macro, args.argument, timeout=args.timeout, python=args.python)
    except ImageJUnavailable as exc:
        print(exc, file=sys.stderr)
        return USAGE
    sys.stdout.write(res.stdout)
    sys.stderr.write(res.stderr)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
