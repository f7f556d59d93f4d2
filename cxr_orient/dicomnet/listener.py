"""``cxr-orient listen``: a C-STORE SCP (with C-ECHO) that writes what it receives to the
spool and records it through :mod:`cxr_orient.dicomnet.receive`.

A C-STORE handler only checks, writes and returns a status (pynetdicom's storescp
pattern); recording happens on the :class:`~cxr_orient.dicomnet.recorder.Recorder`
thread, which takes the spooled paths of every association in batches, so the database
sees one transaction per batch, not per instance. Nothing acknowledged can be lost:

- the dataset is received onto disk as it arrives, into the spool's ``.receiving``
  folder (:mod:`~cxr_orient.dicomnet.receiving`: memory stays bounded whatever the
  size; an association whose dataset passes the largest we accept is aborted at once,
  and a partial file is deleted when its association ends without storing it);
- success (0000) is returned only after the instance's bytes, exactly as sent (file meta
  added, never transcoded), are checked whole and durable in the spool
  (:func:`spool.adopt_file`: fdatasync, rename, folder fsync); the header is parsed
  once, from the file received (large values left on disk), and the SHA-256 that names
  the file goes with it to the recorder, which therefore never reads the file back;
- a batch the recorder cannot record (database down) is retried while the listener
  runs, and whatever is still unrecorded when it stops (or is killed) is recorded by the
  sweep at the next start (:func:`~cxr_orient.dicomnet.recorder.sweep_spool`): every
  ``*.dcm`` under the spool that no row names is recorded.

Statuses returned (docs/dicom.md lists them with their reasons): 0000 stored (an
instance outside the accept policy too: it is recorded as refused, never labelled);
A700 free space under the spool below ``CXR_SPOOL_MIN_FREE_MB``, or the write failed;
C001 larger than the worker accepts (``CXR_MAX_PIXELS``; in practice the association
is aborted before: see above); C210 a dataset whose header cannot be read, or whose
pixel data is incomplete (native: fewer bytes than Rows x Columns x SamplesPerPixel x
BitsAllocated/8 x NumberOfFrames; encapsulated: a fragment cut, no sequence
delimiter), or a malformed Study, Series or SOP Instance UID, so that the sender keeps
it and can send it again (spooled and recorded as a failed instance with the reason,
like a bad file given to ``enqueue``); C211 any other error in the handler. The handler
never raises: the listener does not die of input.

Who may hold a connection or an association, and for how long, is
:mod:`~cxr_orient.dicomnet.admission`'s, applied by the server of
:mod:`~cxr_orient.dicomnet.scp`: idle or slow peers cannot keep a modality out.

Logs carry counts, AE titles, peer addresses and status codes, never UIDs, paths or
other header values (docs/security.md); every refusal is logged and counted
(``cxr_orient_dicom_refused_total`` by reason, on ``CXR_DICOM_METRICS_PORT``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID

from cxr_orient.dicomnet.addresses import AllowedCaller
from cxr_orient.dicomnet.admission import Admission, Limits
from cxr_orient.dicomnet.policy import check_uids
from cxr_orient.dicomnet.receive import received_file
from cxr_orient.dicomnet.receiving import RECEIVING_FOLDER, ReceiveGuard, receive_on_disk
from cxr_orient.dicomnet.recorder import Recorder, sweep_spool
from cxr_orient.dicomnet.scp import application_entity, restart_idle_timer, track_connections
from cxr_orient.dicomnet.spool import adopt_file, free_mb, remove_stale_partials, spool_dir
from cxr_orient.errors import CxrError
from cxr_orient.imaging import read_header
from cxr_orient.imaging.decoders import SUPPORTED_TRANSFER_SYNTAXES
from cxr_orient.imaging.reading import read_dataset
from cxr_orient.imaging.validation import check_pixel_data_complete
from cxr_orient.ingest import Sender
from cxr_orient.intake import max_file_bytes
from cxr_orient.logs import cap_third_party_loggers
from cxr_orient.metrics import listener_refusals, start_listener_exporter
from cxr_orient.settings import AcceptSettings, Settings
from cxr_orient.studies import run_release_loop

__all__ = [
    "STATUS",
    "ListenerConfig",
    "accepted_transfer_syntaxes",
    "caller_allowed",
    "listener_sop_classes",
    "serve_dicom",
]

logger = logging.getLogger(__name__)

#: The C-STORE statuses this SCP returns, by name (docs/dicom.md).
STATUS = {
    "success": 0x0000,
    "out_of_resources": 0xA700,
    "too_large": 0xC001,
    "cannot_read": 0xC210,
    "internal_error": 0xC211,
}

#: Values longer than this stay on disk while a received instance is checked.
DEFER_BYTES = 1 << 16

#: Seconds between two sweeps of stale partial files while the listener runs.
PARTIAL_SWEEP_S = 60.0


def listener_sop_classes(accept: AcceptSettings) -> list[UID]:
    """The storage SOP classes the SCP offers presentation contexts for: those of the
    accept policy (``CXR_ACCEPT_SOP_CLASSES``, one setting for every way in), so that an
    instance of another class is refused at association instead of stored and then
    recorded out of scope; with that rule switched off (empty) every storage SOP class,
    and the policy's other rules decide."""
    if accept.accept_sop_classes:
        return [UID(uid) for uid in accept.accept_sop_classes]
    from pynetdicom import AllStoragePresentationContexts

    return list(
        dict.fromkeys(
            UID(cx.abstract_syntax)
            for cx in AllStoragePresentationContexts
            if cx.abstract_syntax is not None
        )
    )


def accepted_transfer_syntaxes() -> list[UID]:
    """Every syntax the decoder reads, in our order of preference. pynetdicom accepts, of
    the syntaxes a sender proposes in a context, the first in this list: implicit VR
    little endian, which every sender proposes as its fallback, comes last, so that an
    instance is sent in the syntax it is held in (dcmsend converts otherwise)."""
    implicit = UID("1.2.840.10008.1.2")
    return [*sorted(s for s in SUPPORTED_TRANSFER_SYNTAXES if s != implicit), implicit]


def caller_allowed(title: str, host: str, allowed: Sequence[tuple[str, str | None]]) -> bool:
    """Whether a calling AE title from ``host`` may associate: any when ``allowed`` is
    empty, else a matching (title, host-or-None) entry."""
    if not allowed:
        return True
    title = title.strip()
    return any(t == title and (h is None or h == host) for t, h in allowed)


@dataclass(frozen=True)
class ListenerConfig:
    """What the SCP is: address, AE title, who may call, what it stores."""

    ae_title: str
    bind: str
    port: int
    allowed_callers: Sequence[AllowedCaller]
    max_associations: int
    sop_classes: list[UID]
    transfer_syntaxes: list[UID] = field(default_factory=lambda: accepted_transfer_syntaxes())
    #: Per host / per calling AE title / connections awaiting their A-ASSOCIATE-RQ
    #: (``limits.associations`` is ``max_associations``).
    per_host: int = 0
    per_caller: int = 0
    max_pending: int = 16
    acse_timeout_s: float = 10.0
    idle_timeout_s: float = 15.0

    @property
    def limits(self) -> Limits:
        return Limits(
            associations=self.max_associations,
            per_host=self.per_host,
            per_caller=self.per_caller,
            pending=self.max_pending,
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        ae_title: str | None = None,
        bind: str | None = None,
        port: int | None = None,
    ) -> ListenerConfig:
        return cls(
            ae_title=ae_title or settings.dicom.dicom_ae_title,
            bind=bind or settings.dicom.dicom_bind,
            port=settings.dicom.dicom_port if port is None else port,
            allowed_callers=settings.dicom.dicom_allowed_callers,
            max_associations=settings.dicom.dicom_max_associations,
            sop_classes=listener_sop_classes(settings.accept),
            per_host=settings.dicom.dicom_max_associations_per_host,
            per_caller=settings.dicom.dicom_max_associations_per_caller,
            max_pending=settings.dicom.dicom_max_pending,
            acse_timeout_s=settings.dicom.dicom_acse_timeout_s,
            idle_timeout_s=settings.dicom.dicom_idle_timeout_s,
        )


def _sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks (never whole in memory)."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def _status(code: str, comment: str) -> Dataset:
    status = Dataset()
    status.Status = STATUS[code]
    status.ErrorComment = comment[:64]
    return status


class _Handlers:
    """The SCP's event handlers: association check, C-ECHO, C-STORE; the books of who
    holds a connection (:class:`Admission`) and of the dataset being received
    (:class:`ReceiveGuard`)."""

    def __init__(self, config: ListenerConfig, settings: Settings, recorder: Recorder) -> None:
        self.config = config
        self.settings = settings
        self.recorder = recorder
        self.largest = max_file_bytes(settings.intake.max_pixels)
        self.stored = 0
        self.admission = Admission(config.limits, listener_refusals)
        self.guard = ReceiveGuard(self.largest, self._refuse_transfer)

    def _refuse_transfer(self, reason: str, message: str) -> None:
        self.admission.refuse(reason, "%s", message)

    def on_requested(self, event: Any) -> None:
        assoc = event.assoc
        title = str(assoc.requestor.primitive.calling_ae_title).strip()
        host = str(assoc.requestor.address)
        if not caller_allowed(title, host, self.config.allowed_callers):
            self.admission.associating(id(assoc))
            self.admission.refuse(
                "caller_not_allowed",
                "association from %s@%s rejected: "
                "calling AE title not allowed (CXR_DICOM_ALLOWED_CALLERS)",
                title,
                host,
            )
            # As pynetdicom's own rejection does: kill() lets the DUL send the
            # A-ASSOCIATE-RJ before the socket is closed.
            assoc.acse.send_reject(0x01, 0x01, 0x03)
            assoc.kill()
            return
        if self.admission.requested(id(assoc), host, title) is not None:
            # rejected-transient, service-provider (presentation), local limit exceeded.
            assoc.acse.send_reject(0x02, 0x03, 0x02)
            assoc.kill()

    def on_rejected(self, event: Any) -> None:
        """pynetdicom's own rejection: its ceiling on connection threads (admitted +
        pending + a margin) reached, or a request it cannot accept."""
        assoc = event.assoc
        self.admission.refuse(
            "rejected",
            "association from %s@%s rejected by pynetdicom "
            "(too many connections in all, or a malformed request)",
            str(assoc.requestor.ae_title).strip(),
            assoc.requestor.address,
        )

    def on_aborted(self, event: Any) -> None:
        assoc = event.assoc
        if self.guard.cut_off(assoc):
            return  # refused and counted as too_large already
        idle = assoc.dul.idle_timer_expired()
        reason = "idle_timeout" if idle else "aborted"
        self.admission.refuse(
            reason,
            "association from %s@%s aborted%s",
            str(assoc.requestor.ae_title).strip(),
            assoc.requestor.address,
            " (silent for CXR_DICOM_IDLE_TIMEOUT_S)" if idle else "",
        )

    def on_echo(self, event: Any) -> int:
        return STATUS["success"]

    def on_store(self, event: Any) -> int | Dataset:
        try:
            return self._store(event)
        except Exception:
            logger.exception(
                "C-STORE from %s: unexpected error", str(event.assoc.requestor.ae_title).strip()
            )
            return _status("internal_error", "internal error, see the listener's log")
        finally:
            self.guard.taken(event.assoc)
            restart_idle_timer(event.assoc)

    def _store(self, event: Any) -> int | Dataset:
        caller = str(event.assoc.requestor.ae_title).strip()
        if free_mb(self.settings) < self.settings.intake.spool_min_free_mb:
            logger.warning(
                "C-STORE from %s refused (A700): spool free space under CXR_SPOOL_MIN_FREE_MB=%d",
                caller,
                self.settings.intake.spool_min_free_mb,
            )
            listener_refusals("out_of_resources")
            return _status("out_of_resources", "spool disk nearly full")
        # Received onto disk (receive_on_disk): preamble, file meta and the dataset as
        # sent; pynetdicom deletes the file after this handler unless it was adopted.
        received = Path(event.dataset_path)
        size = received.stat().st_size
        if size > self.largest:
            logger.warning(
                "C-STORE from %s refused (C001): %d bytes, more than CXR_MAX_PIXELS allows",
                caller,
                size,
            )
            listener_refusals("too_large")
            return _status("too_large", "instance larger than CXR_MAX_PIXELS allows")
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        shown = Path("c-store")
        try:
            # Parsed from the file, large values left on disk (deferred), pixel data
            # included in the check: an instance cut short is refused now, while the
            # sender can still send it again, not acknowledged and failed later (the
            # check STOW-RS makes).
            dataset = read_dataset(received, stop_before_pixels=False, defer_size=DEFER_BYTES)
            header = read_header(shown, dataset=dataset)
            check_pixel_data_complete(dataset, path=shown)
            # A malformed UID would be recorded failed after a Success: the modality
            # would never learn of it (the rule every way in applies, said now).
            invalid = check_uids(header)
            if invalid is not None:
                raise invalid
        except CxrError as exc:
            # Spooled anyway, so that the failure is recorded with its reason, as ingest
            # records a bad file (the name carries the bytes' hash: a resend is one row).
            spooled = adopt_file(
                received,
                sha256=_sha256(received),
                study_instance_uid="unreadable",
                sop_instance_uid=sop_uid,
                settings=self.settings,
            )
            self.recorder.put(
                received_file(spooled, header=None, error=exc, settings=self.settings)
            )
            logger.warning("C-STORE from %s refused (C210): %s", caller, exc.code)
            listener_refusals(exc.code)
            return _status("cannot_read", f"{exc.code}: unreadable, incomplete or malformed")
        try:
            spooled = adopt_file(
                received,
                sha256=_sha256(received),
                study_instance_uid=header.study_instance_uid,
                sop_instance_uid=header.sop_instance_uid,
                settings=self.settings,
            )
        except OSError as exc:
            logger.error(
                "C-STORE from %s refused (A700): spool write failed: %s",
                caller,
                exc.strerror or type(exc).__name__,
            )
            listener_refusals("spool_write_failed")
            return _status("out_of_resources", "spool write failed")
        # Hashed as received and parsed once: the recorder does not read the file back.
        self.recorder.put(received_file(spooled, header=header, error=None, settings=self.settings))
        self.stored += 1
        return STATUS["success"]


def serve_dicom(
    settings: Settings,
    *,
    send: Sender | None,
    config: ListenerConfig | None = None,
    on_ready: Callable[[str, int], None] | None = None,
    stop: threading.Event | None = None,
    grace_s: float = 30.0,
) -> int:
    """Run the SCP until SIGTERM/SIGINT (or ``stop`` is set): sweep the spool, serve,
    then stop accepting, let open associations finish (up to ``grace_s``), and record
    what is left. Returns the number of instances stored."""
    from pynetdicom import evt

    config = config or ListenerConfig.from_settings(settings)
    cap_third_party_loggers(debugging=logger.isEnabledFor(logging.DEBUG))
    spool_dir(settings).mkdir(parents=True, exist_ok=True)
    sweep_spool(settings, send)
    recorder = Recorder(settings, send)
    recorder.start()
    handlers = _Handlers(config, settings, recorder)
    stop = stop or threading.Event()
    # Received instances are held until their study is quiet (CXR_STUDY_QUIET_S): this
    # process releases them itself, so a study sent here is classified without a beat.
    releaser = None
    if send is not None:
        releaser = threading.Thread(
            target=run_release_loop,
            args=(send, stop, settings.intake),
            name="release-quiet-studies",
            daemon=True,
        )
        releaser.start()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    cleanup = contextlib.ExitStack()
    if settings.dicom.dicom_metrics_port:
        exporter = start_listener_exporter(
            host=settings.dicom.dicom_metrics_host, port=settings.dicom.dicom_metrics_port
        )
        if exporter is not None:
            cleanup.callback(exporter.shutdown)
    cleanup.enter_context(receive_on_disk(spool_dir(settings) / RECEIVING_FOLDER))
    ae = application_entity(
        ae_title=config.ae_title,
        sop_classes=config.sop_classes,
        transfer_syntaxes=config.transfer_syntaxes,
        # admitted + pending + a margin for those being rejected
        thread_ceiling=config.max_associations + config.max_pending + 16,
        acse_timeout_s=config.acse_timeout_s,
        idle_timeout_s=config.idle_timeout_s,
    )
    try:
        server = ae.start_server(
            (config.bind, config.port),
            block=False,
            evt_handlers=[
                (evt.EVT_REQUESTED, handlers.on_requested),
                (evt.EVT_ABORTED, handlers.on_aborted),
                (evt.EVT_REJECTED, handlers.on_rejected),
                (evt.EVT_PDU_RECV, handlers.guard.on_pdu),
                (evt.EVT_C_ECHO, handlers.on_echo),
                (evt.EVT_C_STORE, handlers.on_store),
            ],
        )
    except BaseException:  # the port taken: the metrics port and pynetdicom's globals back
        cleanup.close()
        raise
    track_connections(
        server,
        admission=handlers.admission,
        guard=handlers.guard,
        idle_timeout_s=config.idle_timeout_s,
    )
    host, port = server.server_address[:2]
    logger.info(
        "listening on %s:%d as %s (%d SOP classes, %d transfer syntaxes, at most %d associations)",
        host,
        port,
        config.ae_title,
        len(config.sop_classes),
        len(config.transfer_syntaxes),
        config.max_associations,
    )
    if on_ready is not None:
        on_ready(str(host), int(port))
    try:
        # Partials a killed listener (or another source) left: deleted once stale, while
        # the listener runs, not only at its next start.
        while not stop.wait(PARTIAL_SWEEP_S):
            remove_stale_partials(settings)
    finally:
        logger.info("stopping: no new associations; waiting up to %.0f s for open ones", grace_s)
        server.shutdown()
        deadline = time.monotonic() + grace_s
        while server.active_associations and time.monotonic() < deadline:
            time.sleep(0.1)
        for assoc in server.active_associations:
            assoc.abort()
        recorder.stop(timeout=grace_s)
        if releaser is not None:
            releaser.join(timeout=5)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        cleanup.close()
        logger.info("stopped: %d instances stored, %d recorded", handlers.stored, recorder.recorded)
    return handlers.stored
