"""The embedded setup in the test process: an SQLite file and kombu's filesystem broker
under ``tmp_path``, no server.

:func:`embedded_setup` configures it for one test. The Celery app of
:mod:`worker.celery` reads the settings once, when first imported; so that the real
:func:`worker.dispatch.send_instances` writes into *this* test's broker folder, the test
gets an app made from its own settings (:func:`worker.celery.make_app`), as a fresh
process would. The model cached by :func:`cxr_orient.registry.current_model` is
forgotten for the test too (it was loaded under another test's settings).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["BrokerMessage", "Embedded", "broker_messages", "embedded_setup"]


@dataclass(frozen=True)
class Embedded:
    root: Path  #: CXR_INGEST_ROOT
    data_dir: Path  #: CXR_DATA_DIR
    database_url: str

    @property
    def broker_out(self) -> Path:
        """Where the filesystem transport writes messages (settings.storage.broker_folder/out)."""
        return self.data_dir / "broker" / "out"

    def messages(self) -> list[BrokerMessage]:
        return broker_messages(self.broker_out)


def embedded_setup(
    tmp_path: Path,
    configure: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
    *,
    migrate: bool = True,
    **settings: object,
) -> Embedded:
    """SQLite + filesystem broker under ``tmp_path`` for this test (CXR_BROKER_URL unset);
    ``settings`` are further CXR_* values. Migrated (a copy of the run's migrated
    template) unless ``migrate`` is False."""
    from cxr_orient import registry
    from tests.utils.env import migrate_from_template

    monkeypatch.delenv("CXR_BROKER_URL", raising=False)
    root = tmp_path / "archive"
    root.mkdir(exist_ok=True)
    setup = Embedded(
        root=root.resolve(),
        data_dir=(tmp_path / "data").resolve(),
        database_url=f"sqlite:///{tmp_path / 'cxr.db'}",
    )
    configure(
        database_url=setup.database_url, data_dir=setup.data_dir, ingest_root=setup.root, **settings
    )

    import worker.dispatch
    from worker.celery import make_app

    monkeypatch.setattr(worker.dispatch, "app", make_app())
    monkeypatch.setattr(registry, "_LOADED", None)
    if migrate:
        migrate_from_template(setup.database_url)  # what upgrade() would leave
    return setup


@dataclass(frozen=True)
class BrokerMessage:
    """One kombu filesystem-transport message file, decoded."""

    path: Path
    task: str
    args: list[Any]
    queue: str
    raw: dict[str, Any]


def broker_messages(folder: Path) -> list[BrokerMessage]:
    """Every message file waiting in ``folder``, oldest first. A file is JSON holding
    ``headers`` (the task name among them) and the body (Celery's protocol 2:
    ``[args, kwargs, embed]``), base64 encoded."""
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.glob("*.msg")):
        raw = json.loads(path.read_text(encoding="utf-8"))
        body = raw["body"]
        if raw["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body).decode("utf-8")
        args, _kwargs, _embed = json.loads(body)
        queue = raw["properties"]["delivery_info"]["routing_key"]
        out.append(BrokerMessage(path, raw["headers"]["task"], list(args), queue, raw))
    return out
