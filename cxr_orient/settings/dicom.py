"""The DICOM listener (`cxr-orient listen`): its address and AE title, who may call,
and what one peer or one connection may hold."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from cxr_orient.dicomnet.addresses import AllowedCaller, check_ae_title, parse_allowed_caller
from cxr_orient.settings.base import CommaList, SettingsGroup, from_text

__all__ = ["DicomSettings"]


class DicomSettings(SettingsGroup):
    """The listener's address, callers and limits."""

    dicom_ae_title: str = Field(
        default="CXR_ORIENT",
        description="CXR_DICOM_AE_TITLE: the AE title `cxr-orient listen` answers to "
        "(1-16 characters, no backslash). Default CXR_ORIENT.",
    )
    dicom_port: int = Field(
        default=11112,
        ge=0,
        le=65535,
        description="CXR_DICOM_PORT: TCP port of `cxr-orient listen`. Default 11112.",
    )
    dicom_bind: str = Field(
        default="127.0.0.1",
        description="CXR_DICOM_BIND: address `cxr-orient listen` binds to; 0.0.0.0 for "
        "every interface. Default 127.0.0.1 (this machine only).",
    )
    dicom_allowed_callers: CommaList[Annotated[AllowedCaller, from_text(parse_allowed_caller)]] = (
        Field(
            default=[],
            description="CXR_DICOM_ALLOWED_CALLERS: comma-separated calling AE titles allowed to "
            "associate, each optionally AET@host (host: an IP address, matched exactly); any "
            "other caller is rejected at association (A-ASSOCIATE-RJ, calling AE title not "
            "recognised). Empty: any caller. Default empty.",
        )
    )
    dicom_max_associations: int = Field(
        default=8,
        ge=1,
        le=256,
        description="CXR_DICOM_MAX_ASSOCIATIONS: most simultaneous associations "
        "`cxr-orient listen` accepts, counted from each one's A-ASSOCIATE-RQ (a bare "
        "connection does not count); more are rejected (transient, local limit "
        "exceeded). Default 8.",
    )
    dicom_max_associations_per_host: int = Field(
        default=6,
        ge=0,
        le=256,
        description="CXR_DICOM_MAX_ASSOCIATIONS_PER_HOST: most simultaneous associations "
        "from one peer address; more are rejected like those over "
        "CXR_DICOM_MAX_ASSOCIATIONS. 0: no per-host limit. Default 6.",
    )
    dicom_max_associations_per_caller: int = Field(
        default=4,
        ge=0,
        le=256,
        description="CXR_DICOM_MAX_ASSOCIATIONS_PER_CALLER: most simultaneous associations "
        "of one calling AE title; more are rejected like those over "
        "CXR_DICOM_MAX_ASSOCIATIONS. 0: no per-caller limit. Default 4.",
    )
    dicom_max_pending: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="CXR_DICOM_MAX_PENDING: most TCP connections to `cxr-orient listen` "
        "that have not yet sent their A-ASSOCIATE-RQ; with one more, the oldest of them is "
        "closed. Default 16.",
    )
    dicom_acse_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="CXR_DICOM_ACSE_TIMEOUT_S: seconds a connection to `cxr-orient listen` "
        "has to send its A-ASSOCIATE-RQ (and an association's release to complete) before "
        "it is closed. Default 10.",
    )
    dicom_idle_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="CXR_DICOM_IDLE_TIMEOUT_S: seconds an association may stay silent (no "
        "PDU) before `cxr-orient listen` aborts it, and the most one PDU may take to arrive "
        "(at most 4 MiB: raise it for senders with large PDUs on links under ~300 KB/s). "
        "Default 15.",
    )
    dicom_metrics_host: str = Field(
        default="127.0.0.1",
        description="CXR_DICOM_METRICS_HOST: address the Prometheus exporter of `cxr-orient "
        "listen` listens on. Default 127.0.0.1.",
    )
    dicom_metrics_port: int = Field(
        default=9809,
        ge=0,
        le=65_535,
        description="CXR_DICOM_METRICS_PORT: TCP port of the Prometheus exporter of "
        "`cxr-orient listen` (GET /metrics: refused connections and associations by "
        "reason); 0 turns it off. Default 9809.",
    )

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title(cls, value: str) -> str:
        return check_ae_title(value, name="CXR_DICOM_AE_TITLE")
