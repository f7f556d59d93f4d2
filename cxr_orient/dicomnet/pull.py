"""``cxr-orient pull``: read studies back from a PACS over DICOMweb (QIDO-RS to find
them, WADO-RS to fetch each instance), spool and record them like any received instance.

Idempotent and resumable without state of its own: the SOP Instance UIDs found are
checked against the database first and the recorded ones are not fetched again; each
fetched instance is durable in the spool before it is recorded (in chunks), so a pull
killed mid-way and run again fetches only what no row names yet, and an instance fetched
but not recorded before the kill lands on the same spool file (same bytes, same name) and
is recorded once.

Instances are asked for in the transfer syntax the PACS holds them in
(``transfer-syntax=*``: no transcoding by the server). Series are filtered by Modality
(``--modality``); studies by StudyDate (``--since``/``--until``) or named (``--study``).

A study with no StudyDate (empty, absent or not a date) has no date a window could rule
out, so a date-bounded pull includes it unless ``undated`` is off (``--skip-undated``).
A PACS cannot match an empty date against a range (DICOM range matching skips empty
values), so such a pull lists the studies unfiltered, with their StudyDate, and applies
the window here; with ``undated`` off the PACS filters, as before.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from cxr_orient.dicomnet.receive import record_received
from cxr_orient.dicomnet.spool import write_instance
from cxr_orient.ingest import EnqueueReport, Sender
from cxr_orient.settings import Settings
from db import crud
from db.session import session_scope

__all__ = [
    "PullQuery",
    "PullReport",
    "RemoteInstance",
    "find_instances",
    "not_yet_recorded",
    "parse_modalities",
    "pull",
    "remote_summary",
]

logger = logging.getLogger(__name__)

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
STUDY_DATE = "00080020"
MODALITY = "00080060"
#: Instances recorded per transaction (and the most an interruption leaves unrecorded).
CHUNK = 50


@dataclass(frozen=True)
class PullQuery:
    """Which instances to pull: one study, or studies by date (and, unless ``undated`` is
    off, those with no StudyDate); series by modality."""

    study_uid: str | None = None
    since: date | None = None
    until: date | None = None
    modalities: tuple[str, ...] = ("CR", "DX")
    undated: bool = True

    @property
    def dated(self) -> bool:
        return self.since is not None or self.until is not None

    def study_filters(self) -> dict[str, str]:
        """The StudyDate range for the PACS to match; none when undated studies are
        wanted too (the PACS would leave them out), :meth:`wants_study` then decides."""
        if not self.dated or self.undated:
            return {}
        low = self.since.strftime("%Y%m%d") if self.since else ""
        high = self.until.strftime("%Y%m%d") if self.until else ""
        return {"StudyDate": f"{low}-{high}"}

    def wants_study(self, study_date: str | None) -> bool:
        """Whether a study the PACS listed, with this StudyDate (DA), is in the window."""
        if not self.dated:
            return True
        try:
            day = datetime.strptime((study_date or "").strip(), "%Y%m%d").date()
        except ValueError:
            return self.undated
        return (self.since is None or day >= self.since) and (
            self.until is None or day <= self.until
        )


@dataclass(frozen=True)
class RemoteInstance:
    study_uid: str
    series_uid: str
    sop_uid: str


@dataclass
class PullReport:
    """What a pull found, skipped (recorded before), fetched and recorded; failures keep
    their reason and are fetched again by the next run."""

    found: int = 0
    skipped_known: int = 0
    fetched: int = 0
    recorded: EnqueueReport = field(default_factory=EnqueueReport)
    failed: list[tuple[RemoteInstance, str]] = field(default_factory=list)


def _value(item: dict[str, Any], tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


def _client(url: str) -> Any:
    from dicomweb_client.api import DICOMwebClient

    # dicomweb-client logs every UID it retrieves at INFO.
    logging.getLogger("dicomweb_client").setLevel(logging.WARNING)
    return DICOMwebClient(url=url)


def find_instances(client: Any, query: PullQuery) -> Iterator[RemoteInstance]:
    """QIDO-RS: the instances of the matching studies' series of the wanted modalities."""
    if query.study_uid:
        studies = [query.study_uid]
    else:
        found = client.search_for_studies(
            search_filters=query.study_filters(), fields=["StudyDate"], get_remaining=True
        )
        studies = [
            uid
            for uid, day in ((_value(s, STUDY_UID), _value(s, STUDY_DATE)) for s in found)
            if uid and query.wants_study(day)
        ]
    wanted = {m.upper() for m in query.modalities}
    for study in studies:
        for series in client.search_for_series(study, get_remaining=True):
            series_uid = _value(series, SERIES_UID)
            modality = (_value(series, MODALITY) or "").upper()
            if not series_uid or (wanted and modality not in wanted):
                continue
            for instance in client.search_for_instances(study, series_uid, get_remaining=True):
                sop = _value(instance, SOP_UID)
                if sop:
                    yield RemoteInstance(study, series_uid, sop)


def _fetch(client: Any, remote: RemoteInstance) -> bytes:
    """WADO-RS: one instance in its stored transfer syntax, as a DICOM file."""
    dataset = client.retrieve_instance(
        remote.study_uid,
        remote.series_uid,
        remote.sop_uid,
        media_types=(("application/dicom", "*"),),
    )
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _merge(into: EnqueueReport, report: EnqueueReport) -> None:
    into.files += report.files
    into.queued += report.queued
    into.already_known += report.already_known
    into.refused += report.refused
    into.refused_ids += report.refused_ids
    into.uid_conflicts += report.uid_conflicts
    into.studies |= report.studies


def not_yet_recorded(
    found: Iterable[RemoteInstance],
    report: PullReport,
    on_total: Callable[[int], None] | None = None,
) -> list[RemoteInstance]:
    """The instances a PACS answered with (duplicates dropped) that no row records yet:
    what a pull, by DICOMweb or by C-MOVE, must fetch. Counts ``found`` and
    ``skipped_known`` in ``report`` and tells ``on_total`` how many are left to fetch."""
    remote = list(dict.fromkeys(found))
    report.found = len(remote)
    with session_scope() as session:
        known = crud.known_sop_instance_uids(session, sop_instance_uids=[r.sop_uid for r in remote])
    todo = [r for r in remote if r.sop_uid not in known]
    report.skipped_known = len(remote) - len(todo)
    if on_total is not None:
        on_total(len(todo))
    return todo


def pull(
    url: str,
    query: PullQuery,
    *,
    settings: Settings,
    send: Sender | None,
    client: Any = None,
    on_total: Callable[[int], None] | None = None,
    on_instance: Callable[[], None] | None = None,
) -> PullReport:
    """Find the instances matching ``query`` at the DICOMweb service ``url``, fetch those
    not recorded yet into the spool, record them and hand the new ones to ``send``."""
    client = client or _client(url)
    report = PullReport()
    todo = not_yet_recorded(find_instances(client, query), report, on_total)
    spooled: list[Path] = []

    def flush() -> None:
        if spooled:
            _merge(
                report.recorded, record_received(spooled, send=send, settings=settings, hold=False)
            )
            spooled.clear()

    for item in todo:
        try:
            data = _fetch(client, item)
            spooled.append(
                write_instance(
                    data,
                    study_instance_uid=item.study_uid,
                    sop_instance_uid=item.sop_uid,
                    settings=settings,
                ).path
            )
            report.fetched += 1
        except Exception as exc:  # one instance failing must not stop the pull
            report.failed.append((item, f"{type(exc).__name__}: {exc}"[:300]))
            logger.warning("pull: an instance could not be fetched (%s)", type(exc).__name__)
        if on_instance is not None:
            on_instance()
        if len(spooled) >= CHUNK:
            flush()
    flush()
    logger.info(
        "pull: %d instances found, %d recorded before, %d fetched, %d failed",
        report.found,
        report.skipped_known,
        report.fetched,
        len(report.failed),
    )
    return report


def parse_modalities(text: str) -> tuple[str, ...]:
    """``CR,DX`` -> ("CR", "DX")."""
    return tuple(m.strip().upper() for m in text.split(",") if m.strip())


def remote_summary(failed: Sequence[tuple[RemoteInstance, str]]) -> list[str]:
    """One line per failed instance, for the operator's terminal (not the log)."""
    return [f"{r.study_uid}/{r.series_uid}/{r.sop_uid}: {reason}" for r, reason in failed]
