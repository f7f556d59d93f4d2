"""``cxr-orient pull --dimse AET@host:port``: the same pull over classic DICOM networking:
C-FIND (Study Root) for the instances, then a C-MOVE of each unrecorded one to our own
AE title, i.e. to the running ``cxr-orient listen``, which spools and records it like any
C-STORE. The PACS must know our AE title (``CXR_DICOM_AE_TITLE``) as a destination, with
the listener's host and port; we call it with that AE title too.

Idempotent and resumable like the DICOMweb pull: SOP Instance UIDs already recorded are
not moved again; one C-MOVE per instance, so an interruption leaves each instance either
received whole (the listener acknowledged it durably) or not at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxr_orient.dicomnet.pull import PullQuery, PullReport, RemoteInstance, not_yet_recorded
from cxr_orient.logs import cap_third_party_loggers
from cxr_orient.settings import Settings
from db import crud
from db.session import session_scope

__all__ = ["DimsePeer", "find_instances_dimse", "pull_dimse"]

logger = logging.getLogger(__name__)

FIND = UID("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root Query/Retrieve - FIND
MOVE = UID("1.2.840.10008.5.1.4.1.2.2.2")  # Study Root Query/Retrieve - MOVE
PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class DimsePeer:
    """A PACS's Query/Retrieve SCP: ``AET@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> DimsePeer:
        title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not (at and colon and title and host and port.isdigit()):
            raise ValueError(f"--dimse {text!r}: expected AET@host:port")
        return cls(title.strip(), host.strip(), int(port))


def _find(assoc: Any, level: str, keys: dict[str, str]) -> Iterator[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    for status, identifier in assoc.send_c_find(query, FIND):
        code = int(getattr(status, "Status", 0xC000))
        if code in PENDING and identifier is not None:
            yield identifier
        elif code not in PENDING and code != 0x0000:
            raise RuntimeError(f"C-FIND at {level} level failed with status 0x{code:04X}")


def find_instances_dimse(assoc: Any, query: PullQuery) -> Iterator[RemoteInstance]:
    """C-FIND: the instances of the matching studies' series of the wanted modalities."""
    if query.study_uid:
        studies = [query.study_uid]
    else:
        keys = {"StudyInstanceUID": "", "StudyDate": "", **query.study_filters()}
        studies = [
            str(d.StudyInstanceUID)
            for d in _find(assoc, "STUDY", keys)
            if d.get("StudyInstanceUID") and query.wants_study(str(d.get("StudyDate") or ""))
        ]
    wanted = {m.upper() for m in query.modalities}
    for study in studies:
        # Each level is read to its end before the next C-FIND: one operation at a time
        # on the association (a nested C-FIND is refused, C000).
        series_found = list(
            _find(
                assoc,
                "SERIES",
                {"StudyInstanceUID": study, "SeriesInstanceUID": "", "Modality": ""},
            )
        )
        for series in series_found:
            modality = str(series.get("Modality", "")).upper()
            series_uid = str(series.get("SeriesInstanceUID", ""))
            if not series_uid or (wanted and modality not in wanted):
                continue
            for instance in list(
                _find(
                    assoc,
                    "IMAGE",
                    {
                        "StudyInstanceUID": study,
                        "SeriesInstanceUID": series_uid,
                        "SOPInstanceUID": "",
                    },
                )
            ):
                sop = str(instance.get("SOPInstanceUID", ""))
                if sop:
                    yield RemoteInstance(study, series_uid, sop)


def _move(assoc: Any, remote: RemoteInstance, destination: str) -> str | None:
    """C-MOVE one instance to ``destination``; None on success, else why not."""
    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = remote.study_uid
    query.SeriesInstanceUID = remote.series_uid
    query.SOPInstanceUID = remote.sop_uid
    final = None
    for status, _ in assoc.send_c_move(query, destination, MOVE):
        final = int(getattr(status, "Status", 0xC000))
    if final == 0x0000:
        return None
    return f"C-MOVE status 0x{final:04X}" if final is not None else "no C-MOVE response"


def pull_dimse(
    peer: DimsePeer,
    query: PullQuery,
    *,
    settings: Settings,
    on_total: Callable[[int], None] | None = None,
    on_instance: Callable[[], None] | None = None,
    wait_recorded_s: float = 60.0,
) -> tuple[PullReport, int]:
    """C-FIND the instances matching ``query`` at ``peer``, C-MOVE those not recorded yet
    to ``CXR_DICOM_AE_TITLE`` (the listener). Returns the report and how many of the
    moved instances the listener had recorded within ``wait_recorded_s``."""
    from pynetdicom import AE

    # pynetdicom logs every identifier it sends and receives (UIDs) at INFO: WARNING
    # unless we are debugging, as the listener does (docs/security.md).
    cap_third_party_loggers(debugging=logger.isEnabledFor(logging.DEBUG))
    title = settings.dicom.dicom_ae_title
    ae = AE(ae_title=title)
    ae.add_requested_context(FIND)
    ae.add_requested_context(MOVE)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise ConnectionError(
            f"{peer.ae_title}@{peer.host}:{peer.port} refused the association from {title}"
        )
    report = PullReport()
    moved: list[str] = []
    try:
        # All found first, then moved (one association carries both).
        todo = not_yet_recorded(find_instances_dimse(assoc, query), report, on_total)
        for item in todo:
            problem = _move(assoc, item, title)
            if problem is None:
                report.fetched += 1
                moved.append(item.sop_uid)
            else:
                report.failed.append((item, problem))
                logger.warning("pull: a C-MOVE failed (%s)", problem)
            if on_instance is not None:
                on_instance()
    finally:
        assoc.release()
    deadline = time.monotonic() + wait_recorded_s
    recorded = 0
    while moved:
        with session_scope() as session:
            recorded = len(crud.known_sop_instance_uids(session, sop_instance_uids=moved))
        if recorded == len(moved) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    logger.info(
        "pull (DIMSE): %d instances found, %d recorded before, %d moved, %d failed",
        report.found,
        report.skipped_known,
        report.fetched,
        len(report.failed),
    )
    return report, recorded
