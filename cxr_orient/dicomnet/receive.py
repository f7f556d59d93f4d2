"""The one way in for instances received over the network: spooled files are recorded
through :func:`cxr_orient.ingest.enqueue_paths`, exactly like files found on disk, so that
the accept policy, the UID-conflict rule and the refusal codes are the same whatever the
source (C-STORE, STOW-RS, DICOMweb pull)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cxr_orient.ingest import EnqueueReport, Sender, enqueue_paths
from cxr_orient.settings import Settings

__all__ = ["record_received"]


def record_received(
    paths: Sequence[Path], *, send: Sender | None, settings: Settings
) -> EnqueueReport:
    """Record spooled files (each already durable on disk) and hand the new instances to
    ``send`` (``worker.dispatch.send_instances`` in the network processes)."""
    return enqueue_paths(list(paths), send=send, settings=settings)
