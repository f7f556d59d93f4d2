"""Results back to PACS: where each answer goes as a Structured Report, and how the
outbox sends, retries and leases."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from cxr_orient.dicomnet.addresses import (
    ResultDestination,
    check_ae_title,
    parse_result_destination,
)
from cxr_orient.settings.base import CommaList, SettingsGroup, from_text

__all__ = ["ResultSettings"]


class ResultSettings(SettingsGroup):
    """The destinations and the outbox's pace."""

    result_destinations: CommaList[
        Annotated[ResultDestination, from_text(parse_result_destination)]
    ] = Field(
        default=[],
        description="CXR_RESULT_DESTINATIONS: where each answer goes back as a DICOM "
        "Structured Report, comma-separated: dicom://AET@host:port (C-STORE) and "
        "dicomweb+http://host:port/path or dicomweb+https://... (STOW-RS to the service "
        "root, e.g. /dicom-web). Checked at startup. Default empty (answers stay in SQL).",
    )
    result_calling_ae: str = Field(
        default="CXR_ORIENT",
        description="CXR_RESULT_CALLING_AE: our AE title when sending SRs by C-STORE. "
        "Default CXR_ORIENT.",
    )
    outbox_interval_s: float = Field(
        default=5.0,
        ge=0.5,
        le=3600,
        description="CXR_OUTBOX_INTERVAL_S: how often every worker delivers the outbox, "
        "from a thread of its main process (no beat needed; it also runs after each "
        "recorded batch, and on beat when a worker runs one). Default 5.",
    )
    outbox_batch: int = Field(
        default=50,
        ge=1,
        le=10_000,
        description="CXR_OUTBOX_BATCH: most SRs sent by one delivery run. Default 50.",
    )
    outbox_backoff_s: float = Field(
        default=5.0,
        ge=0.1,
        le=3600,
        description="CXR_OUTBOX_BACKOFF_S: wait before the first retry of a failed "
        "send; doubled after each further failure, up to CXR_OUTBOX_BACKOFF_MAX_S. "
        "Default 5.",
    )
    outbox_backoff_max_s: float = Field(
        default=600.0,
        ge=0.1,
        le=86_400,
        description="CXR_OUTBOX_BACKOFF_MAX_S: the longest wait between two attempts. "
        "Default 600. A destination that is down is retried for ever at this pace.",
    )
    outbox_timeout_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="CXR_OUTBOX_TIMEOUT_S: network timeout of one send (connect, "
        "association, response). Default 30.",
    )
    outbox_lease_s: float = Field(
        default=300.0,
        ge=10,
        le=86_400,
        description="CXR_OUTBOX_LEASE_S: a claimed row whose sender died without "
        "recording the outcome is due again after this long (re-sent with the same "
        "SOPInstanceUID). Must exceed the time one delivery run takes. Default 300.",
    )
    outbox_queue: str | None = Field(
        default=None,
        description="CXR_OUTBOX_QUEUE: Celery queue for the outbox delivery task, so that a "
        "slow or black-holed destination never holds a classification pool process; "
        "start a worker for it with -Q <this queue> (or add it to a worker's -Q list). "
        "Default unset: the classification queue CXR_QUEUE_NAME.",
    )

    @field_validator("result_destinations")
    @classmethod
    def _each_once(cls, value: list[ResultDestination]) -> list[ResultDestination]:
        urls = [d.url for d in value]
        if len(set(urls)) != len(urls):
            raise ValueError("CXR_RESULT_DESTINATIONS names a destination twice")
        return value

    @field_validator("result_calling_ae")
    @classmethod
    def _calling_ae_title(cls, value: str) -> str:
        return check_ae_title(value, name="CXR_RESULT_CALLING_AE")

    @property
    def destination_urls(self) -> list[str]:
        """The destinations' canonical URLs, in the order given (what the outbox records)."""
        return [d.url for d in self.result_destinations]
