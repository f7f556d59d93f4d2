"""The command line's help stays true: every verb the README and docs/ name exists,
``--help`` loads nothing heavy, ``python -m cli`` is the console script, and the bench
(no longer a verb) keeps its options under ``python -m bench``."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

from cli.main import main

ROOT = Path(__file__).resolve().parents[3]
#: ``cxr-orient VERB [SUB]`` in inline code, or at the start of a line in a fenced block.
_INLINE = re.compile(r"`cxr-orient ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?")
_FENCED = re.compile(r"^```\w*\n(.*?)^```$", re.M | re.S)
_LINE = re.compile(r"^(?:\$ )?cxr-orient ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?", re.M)
#: Not commands: the Series Description of a corrected replacement (docs/dicom.md).
NOT_COMMANDS = {("corrected", None)}


def _named_commands(text: str) -> set[tuple[str, str | None]]:
    found = {(m[1], m[2] or None) for m in _INLINE.finditer(text)}
    for block in _FENCED.findall(text):
        found |= {(m[1], m[2] or None) for m in _LINE.finditer(block)}
    return found - NOT_COMMANDS


def _exists(verb: str, sub: str | None) -> bool:
    command = main.commands.get(verb)
    if command is None:
        return False
    # A second word after a plain command is its argument, not a subcommand.
    return not (
        isinstance(command, click.Group) and sub is not None and sub not in command.commands
    )


def test_the_docs_name_only_commands_that_exist() -> None:
    documents = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    named = {
        (doc.relative_to(ROOT), words)
        for doc in documents
        for words in _named_commands(doc.read_text(encoding="utf-8"))
    }
    assert len(named) > 50, "the pattern no longer finds the docs' commands"
    missing = sorted(
        f"{doc}: cxr-orient {' '.join(w for w in words if w)}"
        for doc, words in named
        if not _exists(*words)
    )
    assert not missing, "\n".join(missing)


def test_the_pattern_finds_what_an_operator_reads() -> None:
    text = (
        "Run `cxr-orient outbox retry` then\n```sh\ncxr-orient db upgrade\n"
        "$ cxr-orient bench --quick\n```\n"
    )
    assert _named_commands(text) == {("outbox", "retry"), ("db", "upgrade"), ("bench", None)}
    assert not _exists("bench", None) and not _exists("db", "sideways")


def test_help_loads_nothing_heavy() -> None:
    """The verbs defer their imports: ``--help`` must not pull in Keras, the database
    layer, the worker, training, the service or the bench (the settings' URL type is
    SQLAlchemy's, so that much of it comes)."""
    probe = (
        "import sys\nfrom click.testing import CliRunner\nfrom cli.main import main\n"
        "assert CliRunner().invoke(main, ['--help']).exit_code == 0\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = [
        m
        for m in loaded
        if m.split(".")[0]
        in {
            "keras",
            "tensorflow",
            "jax",
            "numpy",
            "rich",
            "celery",
            "pydicom",
            "pynetdicom",
            "fastapi",
            "worker",
            "training",
            "service",
            "bench",
            "db",
        }
    ]
    assert not heavy, heavy


def test_python_dash_m_cli_is_the_console_script() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    verbs = {line.split()[0] for line in shown.split("Commands:")[1].splitlines() if line.strip()}
    assert verbs == set(main.commands) and "bench" not in verbs


def test_the_bench_keeps_the_verbs_options() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "bench", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for option in (
        "--quick",
        "--out",
        "--machine",
        "--model",
        "--broker",
        "--no-pipeline",
        "--no-network",
    ):
        assert option in shown, option
