"""Result destinations: sending one Structured Report (or a correction's replacement or
rejection note) by C-STORE (pynetdicom) or STOW-RS (dicomweb-client).

A sender returns when the destination has stored the object (or already had it: a
re-send after a crash carries the same SOPInstanceUID, which a PACS stores once), and
raises otherwise, naming the cause (connection refused, timed out, association rejected
or aborted, the status):

- :class:`~cxr_orient.errors.DestinationUnavailableError` (transient, retried with
  backoff): no connection, association rejected or aborted, a timeout, an
  out-of-resources or processing-failure status (C-STORE 0xA7xx, 0x0110, 0x0213;
  HTTP 408, 429, 5xx);
- :class:`~cxr_orient.errors.DeliveryRefusedError` (for good): the SR storage class not
  accepted, any other failure status (0xA9xx dataset does not match the SOP class,
  0xCxxx cannot understand, 0x0122, 0x0124 ...; HTTP 4xx).
"""

from __future__ import annotations

import copy
import logging
import socket
import time
from typing import Any, Protocol

import requests
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxr_orient.dicomnet.addresses import ResultDestination, parse_result_destination
from cxr_orient.errors import DeliveryRefusedError, DestinationUnavailableError
from cxr_orient.settings import ResultSettings

__all__ = ["CStoreDestination", "Sender", "StowDestination", "connection_failure", "sender_for"]

logger = logging.getLogger(__name__)

#: C-STORE statuses that are warnings (stored, perhaps coerced) or "already stored".
_STORED = {0x0000, 0x0111, 0xB000, 0xB006, 0xB007}
#: Failure statuses worth a retry: out of resources, processing failure, resource limit.
_TRANSIENT = {0x0110, 0x0213}
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class Sender(Protocol):
    def send(self, sr: Dataset) -> None:
        """Deliver ``sr``; raise a DeliveryError subclass if it was not stored."""

    def close(self) -> None:
        """Release what :meth:`send` kept open (an association, HTTP connections)."""


def connection_failure(host: str, port: int, timeout_s: float) -> str | None:
    """Why a TCP connection to ``host:port`` cannot be made ("connection refused",
    "timed out connecting after 5s", "no route to host"...), or None when it can."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except ConnectionRefusedError:
        return "connection refused"
    except TimeoutError:
        return f"timed out connecting after {timeout_s:g}s"
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror or exc}"
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()


def _transient_status(status: int) -> bool:
    return status in _TRANSIENT or (status & 0xFF00) == 0xA700


class CStoreDestination:
    """A C-STORE SCP (``dicom://AET@host:port``), called as CXR_RESULT_CALLING_AE.

    One association serves every :meth:`send` until :meth:`close` (a delivery run sends
    its rows for one destination through one association: measured on the 2-core
    machine, an association per SR made C-STORE 2.3x slower than STOW-RS). It offers,
    for each SOP class sent so far, the object's own transfer syntax (a corrected image
    in JPEG-LS or JPEG 2000 lossless, RLE) and the uncompressed ones; an object whose
    class or syntax the association lacks opens a new one offering it. A compressed
    object whose syntax the peer declines goes uncompressed (every syntax the
    corrections write is lossless: nothing is lost)."""

    def __init__(
        self, destination: ResultDestination, *, calling_ae: str, timeout_s: float
    ) -> None:
        self.destination = destination
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self._assoc: Any = None
        #: SOP class -> the syntaxes offered for it (each its own presentation context).
        self._offered: dict[str, list[str]] = {}

    def _has_context(self, sop_class_uid: str, syntaxes: list[str]) -> bool:
        return (
            self._assoc is not None
            and self._assoc.is_established
            and any(
                c.abstract_syntax == sop_class_uid and c.transfer_syntax[0] in syntaxes
                for c in self._assoc.accepted_contexts
            )
        )

    def _association(self, sop_class_uid: str, syntax: str) -> Any:
        from pynetdicom import AE

        if self._has_context(sop_class_uid, [syntax, *_UNCOMPRESSED]):
            return self._assoc
        offered = self._offered.setdefault(sop_class_uid, [])
        alive = self._assoc is not None and self._assoc.is_established
        new_offer = syntax not in offered or not alive
        if syntax not in offered:
            offered.append(syntax)
        if not new_offer:
            return self._assoc  # offered and declined: the caller says so
        self.close()
        dest = self.destination
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        for sop_class, syntaxes in self._offered.items():
            for compressed in (x for x in syntaxes if x not in _UNCOMPRESSED):
                ae.add_requested_context(sop_class, [compressed])
            ae.add_requested_context(sop_class, list(_UNCOMPRESSED))
        # pynetdicom reports a refused or unreachable port as an aborted association;
        # a plain TCP connect first names the real cause for the outbox row and status.
        cause = connection_failure(dest.host, dest.port, self.timeout_s)
        if cause is not None:
            raise DestinationUnavailableError(f"{dest.url}: {cause}")
        started = time.monotonic()
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title or "ANY-SCP")
        if not assoc.is_established:
            if assoc.is_rejected:
                reason = (
                    f"association rejected (is the calling AE title {self.calling_ae} known to it?)"
                )
            elif time.monotonic() - started >= self.timeout_s * 0.9:
                reason = f"timed out: no association answer within {self.timeout_s:g}s"
            elif assoc.is_aborted:
                reason = "association aborted by the peer"
            else:
                reason = "association not established"
            raise DestinationUnavailableError(f"{dest.url}: {reason}")
        self._assoc = assoc
        return assoc

    def send(self, sr: Dataset) -> None:
        """Store ``sr`` (a report, a corrected image or a rejection note)."""
        dest = self.destination
        meta = getattr(sr, "file_meta", None)
        syntax = str(
            meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
            if meta is not None
            else ExplicitVRLittleEndian
        )
        assoc = self._association(sr.SOPClassUID, syntax)
        if not self._has_context(sr.SOPClassUID, [syntax, *_UNCOMPRESSED]):
            self.close()
            raise DeliveryRefusedError(f"{dest.url}: SOP class {sr.SOPClassUID} not accepted")
        if not self._has_context(sr.SOPClassUID, [syntax]):
            # The peer takes this class only uncompressed: send a lossless copy so.
            sr = copy.deepcopy(sr)
            sr.decompress(generate_instance_uid=False)
        try:
            status = assoc.send_c_store(sr)
        except Exception as exc:  # the association broke under us
            self.close()
            raise DestinationUnavailableError(
                f"{dest.url}: C-STORE failed: {type(exc).__name__}: {exc}"
            ) from exc
        code = getattr(status, "Status", None)
        if code is None:
            self.close()
            raise DestinationUnavailableError(
                f"{dest.url}: no C-STORE response (timeout, abort or invalid response)"
            )
        if code in _STORED:
            return
        comment = getattr(status, "ErrorComment", "") or ""
        message = f"{dest.url}: C-STORE status 0x{code:04X} {comment}".rstrip()
        if _transient_status(code):
            raise DestinationUnavailableError(message)
        raise DeliveryRefusedError(message)

    def close(self) -> None:
        assoc, self._assoc = self._assoc, None
        if assoc is not None and assoc.is_established:
            assoc.release()


class StowDestination:
    """A DICOMweb service root (``dicomweb+http(s)://host:port/path``), STOW-RS; one
    client (and its kept-alive connections) for every :meth:`send` until :meth:`close`."""

    def __init__(self, destination: ResultDestination, *, timeout_s: float) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.destination = destination
        self.timeout_s = timeout_s
        self._session = requests.Session()
        self._client = DICOMwebClient(
            destination.http_url, session=self._session, timeout=timeout_s
        )
        # The outbox retries, with its own backoff; the client's retries (up to 5, with
        # exponential waits) would hold the delivery run for half a minute per row.
        self._client.set_http_retry_params(retry=False)

    def send(self, sr: Dataset) -> None:
        url = self.destination.url
        try:
            response = self._client.store_instances([sr])
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            message = f"{url}: STOW-RS HTTP {code}"
            if code in (408, 429) or code >= 500 or code == 0:
                raise DestinationUnavailableError(message) from exc
            raise DeliveryRefusedError(message) from exc
        except requests.Timeout as exc:
            raise DestinationUnavailableError(
                f"{url}: STOW-RS timed out after {self.timeout_s:g}s"
            ) from exc
        except requests.ConnectionError as exc:
            cause = (
                connection_failure(self.destination.host, self.destination.port, self.timeout_s)
                or "connection lost"
            )
            raise DestinationUnavailableError(f"{url}: STOW-RS {cause}") from exc
        except requests.RequestException as exc:
            raise DestinationUnavailableError(f"{url}: STOW-RS failed: {exc}") from exc
        for failed in (response.get("FailedSOPSequence") or []) if response else []:
            reason = int(failed.get("FailureReason", 0x0110))
            if reason == 0x0111:  # duplicate: stored before
                continue
            message = f"{url}: STOW-RS failure reason 0x{reason:04X}"
            if _transient_status(reason):
                raise DestinationUnavailableError(message)
            raise DeliveryRefusedError(message)

    def close(self) -> None:
        self._session.close()


def sender_for(destination: str, results: ResultSettings) -> Sender:
    """The sender for a canonical destination URL (an outbox row's ``destination``)."""
    parsed = parse_result_destination(destination)
    if parsed.scheme == "dicom":
        return CStoreDestination(
            parsed, calling_ae=results.result_calling_ae, timeout_s=results.outbox_timeout_s
        )
    return StowDestination(parsed, timeout_s=results.outbox_timeout_s)
