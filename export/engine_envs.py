"""The environments of the old runtimes DeepImageJ embeds (TF 1.15, TF 2.7, TF 2.10.1, ONNX Runtime 1.13.1):
one virtual environment each, built from a pyenv interpreter of the Python those wheels exist for,
cached outside the repository (``~/.cache/w2sr/engines`` or ``$W2SR_ENGINE_CACHE``) under a lock, and
rebuilt when the way they are built changes. ``export.engines`` runs bundles in them."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

from w2sr.core.proc import die_with_parent
log = logging.getLogger(__name__)

SCRIPTS_DIR = Path(__file__).parent / "engine_scripts"
MARKER = ".w2sr-engine.json"
#: bump when the way an environment is built changes (forces a rebuild of cached environments)
BUILD_FORMAT = 1


@dataclass(frozen=True)
class Engine:
    """One runtime DeepImageJ can embed, and the Python environment that reproduces it."""

    key: str                  # short name used on the command line, e.g. "tf2.7"
    runtime: str              # "tensorflow" | "onnxruntime"
    version: str              # the runtime version DeepImageJ/JDLL ships
    python: str               # interpreter major.minor the wheels exist for
    packages: tuple[str, ...]  # pip requirement strings, pinned
    module: str               # module whose __version__ must equal ``version`` after install
    why: str = ""             # where DeepImageJ uses it

    @property
    def label(self) -> str:
        name = "TensorFlow" if self.runtime == "tensorflow" else "ONNX Runtime"
        return f"{name} {self.version}"

    @property
    def script(self) -> Path:
        return SCRIPTS_DIR / ("run_savedmodel.py" if self.runtime == "tensorflow" else "run_onnx.py")

    def build_hash(self, interpreter_version: str) -> str:
        doc = {"format": BUILD_FORMAT, "python": interpreter_version, "packages": list(self.packages)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


#: The engines a DeepImageJ installation can run a bundle in (docs/deepimagej.md). numpy and protobuf
#: must be as old as the runtime (newer ones break its import): pinned to what pip resolved from the
#: documented ranges (TF 1.15: protobuf<3.21 numpy<1.19; 2.7: protobuf<3.20 numpy<1.22 keras<2.8
#: tensorflow-estimator<2.8; 2.10.1: protobuf<3.20 numpy<1.24) when these were first checked.
#: Changing a list rebuilds that environment on its next use.
ENGINES: dict[str, Engine] = {
    e.key: e
    for e in (
        Engine(
            "tf1.15", "tensorflow", "1.15.0", "3.7",
            ("tensorflow-cpu==1.15.0", "protobuf==3.20.3", "numpy==1.18.5"),
            "tensorflow",
            "DeepImageJ 2.1 and JDLL's TF1 engine (the default TF1 install)",
        ),
        Engine(
            "tf2.7", "tensorflow", "2.7.0", "3.9",
            ("tensorflow-cpu==2.7.0", "protobuf==3.19.6", "numpy==1.21.6", "keras==2.7.0",
             "tensorflow-estimator==2.7.0"),
            "tensorflow",
            "JDLL's default TF2 engine (what a fresh Fiji installs)",
        ),
        Engine(
            "tf2.10", "tensorflow", "2.10.1", "3.10",
            ("tensorflow-cpu==2.10.1", "protobuf==3.19.6", "numpy==1.23.5"),
            "tensorflow",
            "JDLL's newest TF2 engine",
        ),
        Engine(
            "ort1.13", "onnxruntime", "1.13.1", "3.10",
            ("onnxruntime==1.13.1", "numpy==1.23.5", "protobuf==3.20.3"),
            "onnxruntime",
            "JDLL's newest ONNX engine (opset <= 17 by default)",
        ),
    )
}


class EngineUnavailable(Exception):
    """The engine's environment cannot be had on this machine (no interpreter, pip failed).

    ``reason`` is one line meant for people; callers report the engine as skipped with it.
    """

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------
# interpreters and environments
# --------------------------------------------------------------------------------------------

def default_cache_dir() -> Path:
    env = os.environ.get("W2SR_ENGINE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "w2sr" / "engines"


def _pyenv_root() -> Optional[Path]:
    exe = shutil.which("pyenv")
    if exe:
        try:
            out = subprocess.run([exe, "root"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
        except (OSError, subprocess.TimeoutExpired):
            pass
    env = os.environ.get("PYENV_ROOT")
    if env:
        return Path(env)
    home = Path.home() / ".pyenv"
    return home if home.is_dir() else None


def _interpreter_version(exe: Path) -> Optional[str]:
    """Full version ("3.7.16") of a working interpreter, None if it does not run."""
    try:
        out = subprocess.run(
            [str(exe), "-c", "import platform; print(platform.python_version())"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version_key(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text))


def find_interpreter(python: str) -> tuple[Path, str]:
    """Find a Python ``major.minor`` interpreter: pyenv's versions first, then ``pythonX.Y`` on PATH.

    Returns (executable, full version). Raises EngineUnavailable with the places looked at.
    """
    looked: list[str] = []
    candidates: list[Path] = []
    root = _pyenv_root()
    if root is not None:
        versions = root / "versions"
        looked.append(str(versions))
        pattern = re.compile(rf"^{re.escape(python)}\.\d+$")
        if versions.is_dir():
            found = sorted((d for d in versions.iterdir() if pattern.match(d.name)),
                           key=lambda d: _version_key(d.name), reverse=True)
            candidates += [d / "bin" / f"python{python}" for d in found]
    on_path = shutil.which(f"python{python}")
    looked.append(f"python{python} on PATH")
    if on_path:
        candidates.append(Path(on_path))
    for exe in candidates:
        if not exe.exists():
            continue
        version = _interpreter_version(exe)
        if version and version.startswith(python + "."):
            return exe, version
    raise EngineUnavailable(
        f"no python{python} interpreter (pyenv) on this machine (looked in {', '.join(looked)}); "
        f"install one with 'pyenv install {python}'"
    )


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive lock so two processes never build the same environment at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_marker(env_dir: Path) -> Optional[dict]:
    try:
        return json.loads((env_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def clean_env() -> dict[str, str]:
    """The environment for child processes: nothing of the project's own venv leaks in."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_NO_INPUT"] = "1"
    env["CUDA_VISIBLE_DEVICES"] = ""      # CPU wheels anyway; keeps GPU probing quiet
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def tail(text: str, n: int = 5) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def ensure_engine_env(engine: Union[str, Engine], cache_dir: Optional[Path] = None,
                      rebuild: bool = False) -> Path:
    """Return the folder of a ready virtual environment for ``engine``, building it if needed.

    The environment lives in ``cache_dir/<key>`` and carries a marker with the hash of the
    interpreter version and package list; a missing or different marker means (re)build. A build
    happens in ``cache_dir/.<key>.building-<pid>`` and is renamed into place only once pip has
    finished and the runtime imports with the expected version, so a half-built environment is
    never used. Raises EngineUnavailable (no interpreter, pip failed) with a one-line reason.
    """
    engine = ENGINES[engine] if isinstance(engine, str) else engine
    cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    exe, full_version = find_interpreter(engine.python)
    want = engine.build_hash(full_version)
    env_dir = cache_dir / engine.key
    with _lock(cache_dir / f".{engine.key}.lock"):
        marker = _read_marker(env_dir)
        if not rebuild and marker and marker.get("hash") == want and (env_dir / "bin" / "python").exists():
            log.debug("engine %s: reusing %s", engine.key, env_dir)
            return env_dir
        why = "rebuild requested" if rebuild else ("package list changed" if marker else "not built yet")
        log.info("engine %s: building environment (%s) with Python %s: pip install %s",
                 engine.key, why, full_version, " ".join(engine.packages))
        t0 = time.time()
        # we hold the lock, so any staging folder of this engine is a leftover of a killed build
        for stale in cache_dir.glob(f".{engine.key}.building-*"):
            log.info("engine %s: removing %s, left by an interrupted build", engine.key, stale)
            shutil.rmtree(stale, ignore_errors=True)
        staging = cache_dir / f".{engine.key}.building-{os.getpid()}"
        build_log = cache_dir / f"{engine.key}.build.log"
        try:
            freeze, runtime_version = _build(engine, exe, staging, build_log)
            marker = {
                "hash": want, "engine": engine.key, "python": full_version, "interpreter": str(exe),
                "packages": list(engine.packages), "runtime_version": runtime_version,
                "freeze": freeze, "built": time.strftime("%Y-%m-%d %H:%M:%S"), "built_ns": time.time_ns(),
                "build_seconds": round(time.time() - t0, 1),
            }
            (staging / MARKER).write_text(json.dumps(marker, indent=2))
            from w2sr.core.files import atomic_replace_dir

            atomic_replace_dir(staging, env_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("engine %s: environment ready in %.0f s (%s)", engine.key, time.time() - t0, env_dir)
        return env_dir


def _build(engine: Engine, exe: Path, staging: Path, build_log: Path) -> tuple[list[str], str]:
    env = clean_env()
    with open(build_log, "w") as logf:
        def run(cmd: list[str], what: str, timeout: int) -> str:
            logf.write(f"$ {' '.join(cmd)}\n")
            logf.flush()
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                                     preexec_fn=die_with_parent)
            except subprocess.TimeoutExpired:
                raise EngineUnavailable(f"{engine.key}: {what} took over {timeout} s (log: {build_log})") from None
            logf.write(out.stdout + out.stderr)
            logf.flush()
            if out.returncode != 0:
                raise EngineUnavailable(
                    f"{engine.key}: {what} failed (exit {out.returncode}): {tail(out.stderr or out.stdout)} "
                    f"(log: {build_log})"
                )
            return out.stdout

        run([str(exe), "-m", "venv", str(staging)], f"creating a venv with {exe}", 300)
        py = str(staging / "bin" / "python")
        run([py, "-m", "pip", "install", "--no-input", "--progress-bar", "off", *engine.packages],
            "pip install " + " ".join(engine.packages), 1800)
        probe = f"import {engine.module} as m; print(m.__version__)"
        version = run([py, "-c", probe], f"importing {engine.module}", 300).strip().splitlines()[-1]
        if version != engine.version:
            raise EngineUnavailable(f"{engine.key}: pip installed {engine.module} {version}, expected "
                                    f"{engine.version} (log: {build_log})")
        freeze = run([py, "-m", "pip", "freeze", "--all"], "pip freeze", 120).split()
    return freeze, version
