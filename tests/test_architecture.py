"""Imports flow one way: the shared bottom (w2sr.core) -> the floor for finished bundles (w2sr.bundle)
-> training -> export -> prediction and Fiji -> the CLI. Every import in the project's packages is read
from the source (function-local ones too) and checked against that order, so a shortcut upwards fails
here rather than in a review. Prediction and the Fiji stand-in use a bundle, never the code that builds
one: they may import only w2sr.core and w2sr.bundle."""
from __future__ import annotations

import ast
from pathlib import Path
from tests.fixtures import REPO

ROOT = REPO  # the repository root
PACKAGES = ("w2sr", "training", "export", "fiji_macros")

#: module prefix -> layer; a module may import its own layer and the layers below it
LAYERS = {
    "w2sr.core": 0,       # errors, bundle contract, normalisation, padding, tiling, files, images, CPU features
    "w2sr.bundle": 1,     # a finished bundle: the rdf reader, one runtime per weight format, JDLL reproduced
    "training": 2,        # config, data, models, losses, training, evaluation
    "export": 3,          # building a bundle and verifying it: sources, weights, halo, rdf, parity, engines
    "w2sr.predict": 4,    # batch prediction with a bundle
    "fiji_macros": 4,     # ImageJ macros, their runner, the DeepImageJ stand-in
    "w2sr.cli": 5,        # the w2sr command and its subcommands
}
NAMES = {0: "w2sr.core", 1: "w2sr.bundle", 2: "training", 3: "export", 4: "prediction/Fiji", 5: "CLI"}
#: modules that use a bundle and may import only these layers (not training, not the exporter)
BUNDLE_USERS = {"w2sr.predict": (0, 1), "fiji_macros": (0, 1)}


def layer_of(module: str) -> int | None:
    """The layer of the longest prefix of ``module`` in LAYERS (None: in no layer)."""
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a project package in the file, relative ones resolved."""
    name = module_name(path, root)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # "from export import jdll" imports export.jdll: judge the most specific name
            found += [(node.lineno, f"{target}.{a.name}") for a in node.names]
    return [(line, mod) for line, mod in found if mod.split(".")[0] in PACKAGES]


def violations(root: Path) -> list[str]:
    problems = []
    for path in sorted(p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")):
        if any(part in ("build", ".venv") for part in path.relative_to(root).parts):
            continue
        name = module_name(path, root)
        own = layer_of(name)
        if own is None:
            if name not in PACKAGES:  # a bare package __init__ holds no code that imports
                problems.append(f"{path.relative_to(root)}: module {name} is in no layer")
            continue
        for line, target in imports_of(path, root):
            # "from export import jdll" -> export.jdll; a name that is not a module falls back to its package
            theirs = layer_of(target)
            if theirs is None:
                theirs = layer_of(target.rsplit(".", 1)[0])
            if theirs is not None and theirs > own:
                problems.append(f"{path.relative_to(root)}:{line}: {name} ({NAMES[own]}) imports "
                                f"{target} ({NAMES[theirs]}), a layer above it")
            user = next((k for k in BUNDLE_USERS if name == k or name.startswith(k + ".")), None)
            own_package = user is not None and (target == user or target.startswith(user + "."))
            if user and theirs is not None and theirs not in BUNDLE_USERS[user] and not own_package and theirs <= own:
                problems.append(f"{path.relative_to(root)}:{line}: {name} ({NAMES[own]}) imports "
                                f"{target} ({NAMES[theirs]}); a bundle's users import only w2sr.core and w2sr.bundle")
    return problems


def test_imports_flow_one_way():
    assert violations(ROOT) == []


def test_every_module_of_the_packages_is_in_a_layer():
    modules = {module_name(p, ROOT) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
               if not any(part in ("build", ".venv") for part in p.relative_to(ROOT).parts)}
    assert {m for m in modules if layer_of(m) is None} <= set(PACKAGES)


def test_the_check_catches_an_import_upwards(tmp_path):
    """The checker itself: a bottom-layer module that imports the CLI, or training that imports
    export through a relative-looking function-local import, is reported."""
    (tmp_path / "w2sr" / "core").mkdir(parents=True)
    (tmp_path / "training").mkdir()
    (tmp_path / "w2sr" / "core" / "bad.py").write_text("from w2sr.cli import main\n")
    (tmp_path / "training" / "worse.py").write_text("def f():\n    from export import jdll\n    return jdll\n")
    (tmp_path / "training" / "fine.py").write_text("from w2sr.core import errors\nfrom . import worse\n")
    (tmp_path / "w2sr" / "predict").mkdir(parents=True)
    (tmp_path / "w2sr" / "predict" / "shortcut.py").write_text("from export.parity import parity_matrix\n")
    (tmp_path / "w2sr" / "predict" / "ok.py").write_text("from w2sr.bundle.reader import read_bundle\n")
    found = violations(tmp_path)
    assert len(found) == 3
    assert any(f.startswith("w2sr/predict/shortcut.py:1: w2sr.predict.shortcut (prediction/Fiji) imports "
                            "export.parity.parity_matrix (export); a bundle's users import only") for f in found)
    assert any(f.startswith("w2sr/core/bad.py:1: w2sr.core.bad (w2sr.core) imports w2sr.cli.main (CLI)")
               for f in found)
    assert any(f.startswith("training/worse.py:2: training.worse (training) imports export.jdll (export)")
               for f in found)
