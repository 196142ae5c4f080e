"""The sans-IO rule (STYLE.md 4.2), enforced by reading the imports.

Every module of the pure core is parsed (never imported) and each of its
``import`` statements, including those under ``if TYPE_CHECKING:``, is
checked against two rules:

1. no I/O module of the standard library (``socket``, ``asyncio``,
   ``selectors``, ``threading``, ``mmap``, ``subprocess``, ``os``);
2. no pyxenstored module of a higher layer.  Layers: 1 ``errors``,
   ``paths``, ``perms``; 2 ``wire``, ``watches``, ``store``; 3 ``engine``
   (and ``migration``, ``client.protocol``, ``client.commands``); 4 and up
   everything else (``transports``, ``rundir``, ``server``, ``client``, ``sim``,
   ``cli``, and the package root, which may re-export any of them).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pyxenstored"

#: Standard-library modules that do I/O or start threads or processes.
FORBIDDEN = frozenset(
    {"socket", "asyncio", "selectors", "threading", "mmap", "subprocess", "os"}
)

#: Layer of each pyxenstored module prefix (the longest prefix wins).
LAYERS: dict[str, int] = {
    "pyxenstored.errors": 1,
    "pyxenstored.paths": 1,
    "pyxenstored.perms": 1,
    "pyxenstored.wire": 2,
    "pyxenstored.watches": 2,
    "pyxenstored.store": 2,
    "pyxenstored.engine": 3,
    "pyxenstored.migration": 3,
    "pyxenstored.client.protocol": 3,
    "pyxenstored.client.commands": 3,
    "pyxenstored.transports": 4,
    "pyxenstored.rundir": 4,
    "pyxenstored.server": 5,
    "pyxenstored.client": 5,
    "pyxenstored.sim": 5,
    "pyxenstored.cli": 6,
}
#: The package root and any module not listed above: the top layer.
TOP = 6


def layer_of(module: str) -> int:
    """The layer of a dotted pyxenstored module name."""
    best, best_len = TOP, -1
    for prefix, layer in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(
            prefix
        ) > best_len:
            best, best_len = layer, len(prefix)
    return best


def module_name(path: Path, root: Path) -> str:
    """Dotted name of a source file below ``root`` (the package directory)."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str, root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    base = root / rel
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(
    source: str, module: str, is_package: bool, root: Path
) -> list[str]:
    """Every module an AST imports, as absolute dotted names."""
    found: list[str] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                keep = len(parts) - (node.level - 1)
                base = ".".join(parts[:keep])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append(target)
            if target.split(".")[0] == "pyxenstored":
                # ``from pyxenstored.engine import control`` imports a module.
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if _is_module(sub, root):
                        found.append(sub)
    return found


def violations(source: str, module: str, is_package: bool, root: Path) -> list[str]:
    """What is wrong with the imports of one module (empty if nothing)."""
    own = layer_of(module)
    problems: list[str] = []
    for target in imported_modules(source, module, is_package, root):
        top = target.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"{module} imports I/O module {target}")
        elif top == "pyxenstored":
            if target == "pyxenstored":
                # ``from pyxenstored import x``: fine only if x is a module,
                # which imported_modules() then lists on its own.
                continue
            if layer_of(target) > own:
                problems.append(
                    f"{module} (layer {own}) imports {target} "
                    f"(layer {layer_of(target)})"
                )
    return problems


def core_files() -> list[Path]:
    files = [PACKAGE / f"{name}.py" for name in ("errors", "paths", "perms", "watches")]
    for sub in ("wire", "store", "engine", "migration"):
        files.extend(sorted((PACKAGE / sub).glob("*.py")))
    # The client's sans-IO half: the protocol and the command flows.
    files += [PACKAGE / "client" / f"{name}.py" for name in ("protocol", "commands")]
    return files


@pytest.mark.parametrize(
    "path", core_files(), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_core_module_is_sans_io_and_layered(path: Path) -> None:
    module = module_name(path, PACKAGE)
    source = path.read_text(encoding="utf-8")
    assert violations(source, module, path.name == "__init__.py", PACKAGE) == []


def test_every_core_package_is_checked() -> None:
    names = {module_name(p, PACKAGE) for p in core_files()}
    assert {"pyxenstored.wire", "pyxenstored.store", "pyxenstored.engine"} <= names
    assert {"pyxenstored.migration", "pyxenstored.client.protocol"} <= names
    assert "pyxenstored.engine.ringsession" in names
    assert "pyxenstored.engine.engine" in names
    assert "pyxenstored.store.tree" in names


@pytest.mark.parametrize(
    ("source", "module", "expected"),
    [
        ("import os\n", "pyxenstored.paths", "imports I/O module os"),
        ("import os.path\n", "pyxenstored.store.tree", "imports I/O module os.path"),
        ("from asyncio import Queue\n", "pyxenstored.wire.decoder", "asyncio"),
        (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import socket\n",
            "pyxenstored.engine.engine",
            "socket",
        ),
        (
            "from pyxenstored.engine.engine import Engine\n",
            "pyxenstored.store.tree",
            "(layer 2) imports pyxenstored.engine.engine (layer 3)",
        ),
        (
            "from pyxenstored.wire.ops import Op\n",
            "pyxenstored.perms",
            "(layer 1) imports pyxenstored.wire.ops (layer 2)",
        ),
        (
            "from pyxenstored import server\n",
            "pyxenstored.engine.engine",
            "imports pyxenstored.server (layer 5)",
        ),
        (
            "from ..server import daemon\n",
            "pyxenstored.engine.engine",
            "imports pyxenstored.server (layer 5)",
        ),
        (
            "from .. import cli\n",
            "pyxenstored.engine.engine",
            "imports pyxenstored.cli (layer 6)",
        ),
    ],
)
def test_checker_catches_violations(source: str, module: str, expected: str) -> None:
    """The checker itself can fail: each snippet breaks one rule."""
    problems = violations(source, module, False, PACKAGE)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import struct\nfrom enum import IntEnum\n", "pyxenstored.wire.ops"),
        ("from pyxenstored.errors import NoEntry\n", "pyxenstored.store.tree"),
        ("from pyxenstored.store import tree\n", "pyxenstored.engine.handlers"),
        ("from . import tree\n", "pyxenstored.store.transaction"),
        ("from pyxenstored import paths\n", "pyxenstored.engine.handlers"),
    ],
)
def test_checker_accepts_allowed_imports(source: str, module: str) -> None:
    assert violations(source, module, False, PACKAGE) == []
