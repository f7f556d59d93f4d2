"""The layering in docs/architecture.md, checked on the code's own imports.

Every import (top-level and deferred inside functions) of the project's own modules is
read with ``ast``; the rules below are the table in docs/architecture.md. A new module
that breaks them fails here, naming the import.
"""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("cxr_orient", "db", "worker", "training", "recipes", "bench", "service", "cli")
#: The composition root: the command line (``cli/``, the demo among it) may use every
#: layer, and no layer imports it.
ENTRY_POINTS = {"cli"}
#: What each layer may import (besides itself).
ALLOWED = {
    # ``cxr_orient.answer`` is a leaf (the standard library only): the one answer type.
    "db": {"cxr_orient.settings", "cxr_orient.errors", "cxr_orient.answer"},
    "cxr_orient": {"cxr_orient", "db"},
    "training": {"cxr_orient", "db"},
    # How each shipped checkpoint was made (one recipe per model or study, and what
    # they share in recipes.common): the library and training; nothing imports them.
    "recipes": {"cxr_orient", "training"},
    "worker": {"cxr_orient", "db"},
    "bench": {"cxr_orient", "db", "worker", "bench"},
    # The HTTP service: the library, the database and the sender; nothing imports it but
    # the CLI's serve verb (an entry point).
    "service": {"cxr_orient", "db", "worker.dispatch"},
}
#: Deliberate exceptions, each with its reason (docs/architecture.md says the same).
EXCEPTIONS = {
    # The nightly retrain runs as a beat-scheduled task; the import is deferred into it.
    ("worker.tasks", "training.lifecycle"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            out[_module_name(path)] = path
    return out


SOURCES = _sources()


@cache
def _tree(path: Path) -> ast.Module:
    """The parsed file, once per run: every rule below walks the same trees (read only)."""
    return ast.parse(path.read_text(encoding="utf-8"))


def _resolve(name: str) -> str | None:
    """The project module an imported name refers to (longest known prefix)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in SOURCES:
            return candidate
    return None


def _imports(module: str, path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(imported module, line, names taken from it) for each import of a project module."""
    tree = _tree(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name)
                if target:
                    yield target, node.lineno, []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = _resolve(f"{base}.{alias.name}")
                if submodule and submodule != _resolve(base):
                    yield submodule, node.lineno, []
                else:
                    target = _resolve(base)
                    if target:
                        yield target, node.lineno, [alias.name]


def _layer(module: str) -> str:
    return module.split(".")[0]


def _allowed(source: str, target: str) -> bool:
    layer, goal = _layer(source), _layer(target)
    if layer in ENTRY_POINTS or (source, target) in EXCEPTIONS:
        return True
    if goal in ENTRY_POINTS:
        return False
    if layer == goal:
        return True
    return any(target == a or target.startswith(a + ".") for a in ALLOWED[layer])


def test_every_import_follows_the_layering() -> None:
    broken = [
        f"{source} (line {line}) imports {target}"
        for source, path in SOURCES.items()
        for target, line, _ in _imports(source, path)
        if not _allowed(source, target)
    ]
    assert not broken, "\n".join(broken)


def test_no_module_takes_another_modules_private_names() -> None:
    taken = []
    for source, path in {**SOURCES, **_test_sources()}.items():
        for target, line, names in _imports(source, path):
            if target == source:
                continue
            taken += [
                f"{source} (line {line}) takes {target}.{n}"
                for n in names
                if n.startswith("_") and not n.startswith("__")
            ]
        taken += _private_attributes(source, path)
    assert not taken, "\n".join(taken)


def _test_sources() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "tests").rglob("*.py")}


def _private_attributes(source: str, path: Path) -> list[str]:
    """``module._name`` where ``module`` is a project module bound by an import."""
    tree = _tree(path)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _resolve(alias.name) == alias.name:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                if full in SOURCES:
                    aliases[alias.asname or alias.name] = full
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{source} (line {node.lineno}) uses {aliases[node.value.id]}.{node.attr}")
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_no_import_circles() -> None:
    graph = {
        source: {t for t, _, _ in _imports(source, path) if t != source}
        for source, path in SOURCES.items()
    }
    # A package's __init__ importing its own submodules is how re-exports work.
    for source, path in SOURCES.items():
        if path.name == "__init__.py":
            graph[source] = {t for t in graph[source] if not t.startswith(source + ".")}
    assert not _cycles(graph), _cycles(graph)


@pytest.mark.parametrize(
    "rule",
    [
        ("worker.pipeline", "training.lifecycle"),
        ("training.lifecycle", "worker.pipeline"),
        ("db.crud", "cxr_orient.imaging"),
        ("cxr_orient.ingest", "worker.dispatch"),
        ("service.routes.stow", "worker.tasks"),
        ("worker.tasks", "service.app"),
        ("cxr_orient.dicomnet.stow", "service.deps"),
        ("cxr_orient.ingest", "cli.ingest"),
        ("worker.tasks", "cli.main"),
        ("service.routes.admin", "cli.users"),
        ("bench.run", "cli.main"),
        ("cxr_orient.registry", "training.lifecycle"),
        ("cxr_orient.settings", "bench.run"),
        ("training.lifecycle", "recipes.compact_invariant_64_v4"),
        ("cxr_orient.architectures", "recipes.common.release"),
        ("worker.tasks", "recipes.unusual_score"),
        ("bench.corpus", "recipes.common.devdata"),
        ("recipes.common.devdata", "bench.dicom_factory"),
        ("recipes.compact_invariant_64_v4", "db.crud"),
    ],
    ids=lambda r: f"{r[0]}->{r[1]}",
)
def test_the_rules_refuse_what_the_doc_forbids(rule: tuple[str, str]) -> None:
    assert not _allowed(*rule)


def test_nothing_imports_the_recipes() -> None:
    """The recipes record how a checkpoint was made; the product, the bench and the
    CLI never run them (tests may)."""
    found = [
        f"{source} (line {line}) imports {target}"
        for source, path in SOURCES.items()
        if _layer(source) != "recipes"
        for target, line, _ in _imports(source, path)
        if _layer(target) == "recipes"
    ]
    assert not found, "\n".join(found)


def _wheel_packages() -> set[str]:
    """The top-level packages ``pip wheel .`` puts in the wheel (pyproject.toml's
    ``packages.find``)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    # setuptools matches each package's dotted name against the patterns (fnmatch).
    return {
        path.parent.name
        for path in ROOT.glob("*/__init__.py")
        if any(fnmatch.fnmatchcase(path.parent.name, p) for p in include)
    }


def test_the_wheel_holds_the_product_only() -> None:
    """The product's packages and nothing else (the bench and the tests run from a
    checkout), and nothing shipped imports what is not shipped."""
    shipped = _wheel_packages()
    assert shipped == {"cxr_orient", "db", "worker", "training", "service", "cli"}
    outside = [
        f"{source} (line {line}) imports {target}"
        for source, path in SOURCES.items()
        if _layer(source) in shipped
        for target, line, _ in _imports(source, path)
        if _layer(target) not in shipped
    ]
    assert not outside, "\n".join(outside)


def test_the_console_script_is_the_cli_main() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["project"]["scripts"] == {"cxr-orient": "cli.main:main"}


#: The longest a module may be (outside tests and migrations): past a few hundred lines
#: a module has found its seams (../shared/STYLE.md).
MAX_MODULE_LINES = 600
#: Modules still over it, each split by its own part of issue 20; remove an entry as
#: its split lands (a stale entry fails below).
NOT_YET_SPLIT: set[str] = set()


def test_no_module_is_over_the_line_limit() -> None:
    lines = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in SOURCES.items()}
    long = sorted(
        f"{m}: {n} lines"
        for m, n in lines.items()
        if n > MAX_MODULE_LINES and m not in NOT_YET_SPLIT
    )
    assert not long, "\n".join(long)
    stale = sorted(m for m in NOT_YET_SPLIT if lines.get(m, 0) <= MAX_MODULE_LINES)
    assert not stale, f"split already, drop from NOT_YET_SPLIT: {stale}"


def test_db_holds_no_dicom_knowledge() -> None:
    """UIDs (the 2.25 root of PS3.5 B.2) and the study-answer rule belong to the library
    (cxr_orient.dicomnet.sr, cxr_orient.studies); db stores what it is handed."""
    found = [
        f"{m}: {word}"
        for m, p in SOURCES.items()
        if m.split(".")[0] == "db"
        for word in ("2.25.", "STUDY_FLAGS")
        if word in p.read_text(encoding="utf-8")
    ]
    assert not found, found


#: Where settings are read (``get_settings()``): the processes' entry modules, and the
#: module that defines it. Everything else is handed the group (or the groups) it needs.
SETTINGS_READERS = {
    "cxr_orient.settings",
    # celery -A worker: the app's configuration, the tasks, the worker's signal handlers.
    "worker.celery",
    "worker.tasks",
    "worker.signals",
    # cxr-orient serve: the app factory and the FastAPI dependency.
    "service.app",
    "service.deps",
    # The process-wide engine, built on first use from CXR_DATABASE_URL.
    "db.session",
    # python -m recipes.compact_v1 and the other release recipes (their main:
    # CXR_IMAGENET_WEIGHTS_DIR for a transfer backbone).
    "recipes.common.release",
}
#: Layers that are entry points as a whole: the command line (the listener's entry is its
#: ``listen`` verb) and the bench (``python -m bench``).
SETTINGS_READING_LAYERS = {"cli", "bench"}


def _settings_reads(path: Path) -> list[int]:
    """Lines calling ``get_settings()`` (by name or as an attribute)."""
    tree = _tree(path)
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and (
            getattr(node.func, "id", None) == "get_settings"
            or getattr(node.func, "attr", None) == "get_settings"
        )
    ]


def test_settings_are_read_at_the_edges_only() -> None:
    reads = [
        f"{module} (line {line}) calls get_settings(); take the settings it needs as a parameter"
        for module, path in SOURCES.items()
        if module not in SETTINGS_READERS and _layer(module) not in SETTINGS_READING_LAYERS
        for line in _settings_reads(path)
    ]
    assert not reads, "\n".join(reads)


def test_the_edge_rule_sees_a_fallback(tmp_path: Path) -> None:
    library = tmp_path / "library.py"
    library.write_text(
        "from cxr_orient import settings as s\n"
        "def work(settings=None):\n"
        "    settings = settings or s.get_settings()\n"
    )
    assert _settings_reads(library) == [3]
    assert not set(SETTINGS_READERS) - set(SOURCES), "a stale entry in SETTINGS_READERS"
