"""The one way in for instances received over the network: spooled files are recorded
through :func:`cxr_orient.ingest.enqueue_paths`, exactly like files found on disk, so that
the accept policy, the UID-conflict rule and the refusal codes are the same whatever the
source (C-STORE, STOW-RS, DICOMweb pull). Received instances are held for their study's
quiet period (``hold=True``, :mod:`cxr_orient.studies`): a sender may still be sending
the rest of the study."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cxr_orient.ingest import EnqueueReport, Sender, enqueue_paths
from cxr_orient.settings import Settings

__all__ = ["record_received"]


def record_received(
    paths: Sequence[Path], *, send: Sender | None, settings: Settings, hold: bool = True
) -> EnqueueReport:
    """Record spooled files (each already durable on disk), held ``waiting`` until their
    study is quiet (``CXR_STUDY_QUIET_S``; with 0 the new instances go to ``send``,
    ``worker.dispatch.send_instances`` in the network processes, at once).

    ``hold=False`` is for a source that knows its studies are whole when it records them:
    ``pull`` retrieves what the PACS already holds, study by study (like a folder walk,
    and a short-lived command with no release sweep of its own), so it sends at once."""
    return enqueue_paths(list(paths), send=send, settings=settings, hold=hold)
