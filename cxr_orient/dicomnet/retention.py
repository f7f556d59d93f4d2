"""PHI at rest: received files are deleted from the spool once nobody needs their pixels.

:func:`purge_spool` (run by the beat task ``cxr_orient.purge_spool``, worker/tasks.py)
deletes the file of every instance whose file lies under the spool (``CXR_SPOOL_DIR``:
files received over the network, never an operator's archive enqueued in place) and that

- finished (done or failed) at least ``CXR_SPOOL_KEEP_DAYS`` days ago (0: at once),
- is not awaiting review (its current answer is not flagged ``needs_review``),
- is not labelled (retraining reads the pixels of labelled instances),
- has no result waiting for delivery (``db.crud.held_for_delivery``, the outbox hook).

The files of UID conflicts that no instance refers to (the new bytes kept out under
``CXR_UID_CONFLICT_POLICY=keep_first``, the old ones under ``replace``) go too, once
recorded ``CXR_SPOOL_KEEP_DAYS`` days ago (``uid_conflicts.file_purged_at``; the row
keeps the hashes and sizes), and so do partial files of interrupted writes and transfers
(:func:`~cxr_orient.dicomnet.spool.remove_stale_partials`): nothing received stays at
rest for want of a restart.

The rule is evaluated in the database's UPDATE that marks the instance
(``instances.file_purged_at``), and the files are deleted before that transaction
commits: a crash in between leaves the rows unmarked and the next run finds the files
gone and marks them; work that needs the pixels later fails with ``file_purged``
(:func:`purged_error`: the worker, training, the review page).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from cxr_orient.dicomnet.spool import remove_stale_partials
from cxr_orient.errors import FilePurgedError
from cxr_orient.settings import Settings
from db import crud
from db.models import Instance
from db.session import session_scope

__all__ = ["PurgeCounts", "ensure_not_purged", "purge_spool", "purged_error"]

logger = logging.getLogger(__name__)
CHUNK = 500


@dataclass
class PurgeCounts:
    """What one purge did: files deleted, files found gone already (marked all the
    same), files that could not be deleted (left unmarked, tried again next run)."""

    deleted: int = 0
    already_gone: int = 0
    errors: int = 0
    folders_removed: int = 0
    #: Of which files of UID conflicts (in ``deleted`` / ``already_gone`` too).
    conflict_files: int = 0
    #: Partial files of interrupted writes and transfers removed.
    partials: int = 0

    @property
    def purged(self) -> int:
        return self.deleted + self.already_gone


def purged_error(instance_id: int, file_purged_at: datetime | None) -> FilePurgedError | None:
    """The ``file_purged`` error of an instance whose received file the spool purge
    deleted at ``file_purged_at`` (None: the file was not purged, nothing to say)."""
    if file_purged_at is None:
        return None
    return FilePurgedError(
        f"instance {instance_id}: its received file was deleted by the spool purge at "
        f"{file_purged_at:%Y-%m-%d %H:%M} UTC (CXR_SPOOL_KEEP_DAYS); have it "
        "sent again to use its pixels"
    )


def ensure_not_purged(instance: Instance) -> None:
    """Raise :func:`purged_error` when the spool purge deleted the instance's file: for
    whatever needs its pixels (training on a label added after the purge, the review
    page, the worker), a clear code instead of a missing file."""
    error = purged_error(instance.id, instance.file_purged_at)
    if error is not None:
        raise error


def _delete(path: Path, spool: Path) -> bool | None:
    """True deleted, False gone already, None refused or failed (kept)."""
    # Never follow a link out of the spool: the recorded path must itself lie there.
    if ".." in path.parts or not path.is_relative_to(spool) or path.is_symlink():
        logger.error(
            "spool purge: refusing a recorded path that is not a plain file under the spool"
        )
        return None
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        logger.error("spool purge: could not delete a file: %s", exc.strerror or exc)
        return None


def _remove_empty_folders(folders: set[Path], spool: Path) -> int:
    removed = 0
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder == spool or not folder.is_relative_to(spool):
            continue
        try:
            folder.rmdir()
            removed += 1
        except OSError:  # not empty (more instances of the study), or gone
            pass
    return removed


def purge_spool(settings: Settings, now: datetime) -> PurgeCounts:
    """Delete the received files that nobody needs any more (see the module's rule)."""
    spool = settings.intake.effective_spool_dir
    prefix = str(spool) + os.sep
    finished_before = now - timedelta(days=settings.intake.spool_keep_days)
    counts = PurgeCounts()
    folders: set[Path] = set()
    _purge_marked(
        crud.mark_files_purged,
        crud.unmark_files_purged,
        "instance_ids",
        dict(spool_prefix=prefix, finished_before=finished_before, now=now),
        spool,
        counts,
        folders,
    )
    conflicts_before = counts.purged
    _purge_marked(
        crud.mark_conflict_files_purged,
        crud.unmark_conflict_files_purged,
        "conflict_ids",
        dict(spool_prefix=prefix, created_before=finished_before, now=now),
        spool,
        counts,
        folders,
    )
    counts.conflict_files = counts.purged - conflicts_before
    counts.folders_removed = _remove_empty_folders(folders, spool)
    counts.partials = remove_stale_partials(settings)
    if counts.purged or counts.errors or counts.partials:
        logger.info(
            "spool purge: %d files deleted (%d of uid conflicts), %d gone already, "
            "%d could not be deleted, %d stale partial files removed",
            counts.deleted,
            counts.conflict_files,
            counts.already_gone,
            counts.errors,
            counts.partials,
        )
    return counts


def _purge_marked(
    mark: Callable[..., list[tuple[int, str]]],
    unmark: Callable[..., None],
    unmark_ids: str,
    rule: dict[str, Any],
    spool: Path,
    counts: PurgeCounts,
    folders: set[Path],
) -> None:
    """Walk the rows ``mark`` marks (a chunk per transaction), delete each one's file,
    and ``unmark`` those whose file could not be deleted."""
    after_id = 0
    while True:
        with session_scope() as session:
            marked = mark(session, after_id=after_id, limit=CHUNK, **rule)
            kept: list[int] = []
            for row_id, file_path in marked:
                path = Path(file_path)
                outcome = _delete(path, spool)
                if outcome is None:
                    kept.append(row_id)
                    counts.errors += 1
                    continue
                if outcome:
                    counts.deleted += 1
                else:
                    counts.already_gone += 1
                folders.add(path.parent)
            unmark(session, **{unmark_ids: kept})
        if len(marked) < CHUNK:
            break
        # Files that could not be deleted lie behind the cursor: tried again next run.
        after_id = marked[-1][0]
