"""The README's operator sections as scripts: the shell blocks it marks executable, run
as an operator runs them, in an empty folder, by bash.

A block is marked by an HTML comment on the line before its fence::

    <!-- readme-test: dicom-node -->
    ```sh
    ...
    ```

The text between the fences is what runs; nothing is rewritten. Ports and paths differ
from the README's only through the environment variables the block itself reads
(``${PACS_HTTP_PORT:-8042}``...), which :func:`operator_env` sets.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.utils.worker import REPO

__all__ = ["README", "BlockRun", "operator_env", "readme_block", "readme_blocks"]

README = REPO / "README.md"
_MARKED = re.compile(r"^<!-- readme-test: ([\w-]+) -->\n```sh\n(.*?)^```$", re.M | re.S)


def readme_blocks(text: str | None = None) -> dict[str, str]:
    """Every marked block of the README (or ``text``), by name, as written."""
    text = README.read_text() if text is None else text
    blocks: dict[str, str] = {}
    for name, body in _MARKED.findall(text):
        if name in blocks:
            raise ValueError(f"README marks two blocks {name!r}")
        blocks[name] = body
    return blocks


def readme_block(name: str, *, through: str | None = None) -> str:
    """The block ``name``; with ``through``, its lines up to and including the first
    that starts with ``through`` (the part of a section that can run here)."""
    blocks = readme_blocks()
    if name not in blocks:
        raise KeyError(f"README has no block marked readme-test: {name}")
    body = blocks[name]
    if through is None:
        return body
    lines = body.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith(through):
            return "".join(lines[: index + 1])
    raise KeyError(f"README block {name} has no line starting {through!r}")


def operator_env(**values: str) -> dict[str, str]:
    """An operator's shell: the checkout's virtual environment active (its ``bin`` first
    on PATH, this checkout importable as an editable install makes it), no ``CXR_*``
    setting but ``values`` (names given in full)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CXR_", "PACS_", "VIRTUAL_ENV"))
    }
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(Path(venv_bin).parent)
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(values)
    return env


@dataclass
class BlockRun:
    """A block run by ``bash -e -o pipefail -x`` in ``folder``, in a process group of its
    own: what it starts in the background (``&``) stays in the group, so :meth:`stop`
    ends all of it. Its commands, their output and the trace go to ``log``."""

    script: str
    folder: Path
    env: dict[str, str]
    log: Path
    stdin: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> BlockRun:
        script = self.log.with_suffix(".sh")
        script.write_text(self.script)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["bash", "-e", "-o", "pipefail", "-x", str(script)],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        assert self.process.stdin is not None
        self.process.stdin.write(self.stdin.encode())
        self.process.stdin.close()
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """The script's exit status; an AssertionError naming the step it was at after
        ``timeout`` seconds."""
        assert self.process is not None
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            steps = [line for line in self.output().splitlines() if line.startswith("+")]
            raise AssertionError(
                f"the README's block had not finished after {timeout:.0f} s; it was at "
                f"{steps[-1] if steps else 'its start'!r}\n{self.output()[-6000:]}"
            ) from None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM to the whole group (the block's background processes too), SIGKILL
        to what is left after ``timeout``."""
        if self.process is None:
            return
        group = self.process.pid
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.process.poll()
                try:
                    os.killpg(group, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
        self.process.poll()
