"""One settings object for every process: CLI, workers, training.

Every field is read from an environment variable named ``CXR_<FIELD>`` (for
example ``CXR_DATABASE_URL``), or from a ``.env`` file in the working
directory. Defaults give an embedded setup that needs no server: an SQLite
file and a filesystem broker under ``CXR_DATA_DIR``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

#: CR Image Storage; Digital X-Ray Image Storage for presentation, for processing.
CHEST_RADIOGRAPH_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1.1",
)

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: Checkpoint shipped with the source tree, used when nothing else is active.
SHIPPED_MODEL = Path(__file__).resolve().parent / "shipped" / "compact-invariant-64-v4.keras"


#: How long the worker waits for the database to come back before giving a batch up
#: (worker.pipeline.with_db_retry); the soft time limit's default rides it out.
DB_RETRY_MAX_WAIT_S = 300.0
#: The time budget per image in a batch: ten times the slowest decode measured (JPEG-LS,
#: ~100 ms at 2-3k px on the 2-core CI box, docs/performance.md).
SLOWEST_IMAGE_S = 1.0
#: Between the soft limit and the kill: time to record the unfinished images as timeouts.
SOFT_LIMIT_GRACE_S = 60.0


_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash


def check_ae_title(value: str, *, name: str) -> str:
    """An AE title as DICOM allows it (1-16 printable characters, no backslash, not all
    spaces), stripped; else ValueError naming the setting."""
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(stripped):
        raise ValueError(f"{name}: {value!r} is not an AE title (1-16 printable "
                         "characters, no backslash)")
    return stripped


@dataclass(frozen=True)
class ResultDestination:
    """One entry of CXR_RESULT_DESTINATIONS: a C-STORE SCP or a STOW-RS endpoint."""

    #: ``dicom``, ``dicomweb+http`` or ``dicomweb+https``.
    scheme: str
    host: str
    port: int
    #: The called AE title (``dicom`` only).
    ae_title: str | None = None
    #: The path of the DICOMweb service root (``dicomweb+*`` only), e.g. ``/dicom-web``.
    path: str = ""

    @property
    def url(self) -> str:
        """The canonical spelling: what the outbox records as the destination."""
        if self.scheme == "dicom":
            return f"dicom://{self.ae_title}@{self.host}:{self.port}"
        return f"{self.scheme}://{self.host}:{self.port}{self.path}"

    @property
    def http_url(self) -> str:
        """The DICOMweb service root as an http(s) URL (``dicomweb+*`` only)."""
        return f"{self.scheme.removeprefix('dicomweb+')}://{self.host}:{self.port}{self.path}"


def parse_result_destination(text: str) -> ResultDestination:
    """``dicom://AET@host:port`` or ``dicomweb+http(s)://host:port/path``; ValueError
    saying what is wrong otherwise."""
    where = f"CXR_RESULT_DESTINATIONS entry {text!r}"
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    if parts.scheme not in {"dicom", "dicomweb+http", "dicomweb+https"}:
        raise ValueError(f"{where}: scheme must be dicom://, dicomweb+http:// or "
                         "dicomweb+https://")
    if not parts.hostname:
        raise ValueError(f"{where}: no host")
    if parts.query or parts.fragment or parts.password:
        raise ValueError(f"{where}: no query, fragment or password allowed")
    if parts.scheme == "dicom":
        if port is None:
            raise ValueError(f"{where}: a dicom:// destination needs a port")
        if parts.path not in ("", "/"):
            raise ValueError(f"{where}: a dicom:// destination has no path")
        if not parts.username:
            raise ValueError(f"{where}: the called AE title is missing (dicom://AET@host:port)")
        return ResultDestination("dicom", parts.hostname, port,
                                 ae_title=check_ae_title(parts.username, name=where))
    if parts.username:
        raise ValueError(f"{where}: no user in a DICOMweb URL")
    default_port = 443 if parts.scheme == "dicomweb+https" else 80
    return ResultDestination(parts.scheme, parts.hostname, port or default_port,
                             path=parts.path.rstrip("/"))


class Settings(BaseSettings):
    """Runtime configuration. Field docs name the variable and the default."""

    model_config = SettingsConfigDict(
        env_prefix="CXR_", env_file=".env", extra="ignore", validate_default=True
    )

    data_dir: Path = Field(
        default=Path("cxr-orient-data"),
        description="CXR_DATA_DIR: working folder for the embedded database, the filesystem "
        "broker and reports. Default ./cxr-orient-data (relative to the working directory).",
    )
    database_url: SecretStr | None = Field(
        default=None,
        description="CXR_DATABASE_URL: SQLAlchemy URL, e.g. "
        "postgresql+psycopg://cxr@db/cxr. Default sqlite:///<CXR_DATA_DIR>/cxr-orient.db.",
    )
    broker_url: SecretStr | None = Field(
        default=None,
        description="CXR_BROKER_URL: Celery broker, e.g. redis://127.0.0.1:6379/0. "
        "Default: kombu's filesystem transport under <CXR_DATA_DIR>/broker (no server).",
    )
    queue_name: str = Field(
        default="cxr-orient", description="CXR_QUEUE_NAME: Celery queue. Default cxr-orient."
    )
    model_path: Path | None = Field(
        default=None,
        description="CXR_MODEL_PATH: .keras checkpoint registered and activated when the "
        "database has no active model. Default: the shipped checkpoint (compact-invariant-64-v4).",
    )
    model_dir: Path | None = Field(
        default=None,
        description="CXR_MODEL_DIR: where trained checkpoints are written. "
        "Default <CXR_DATA_DIR>/models.",
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="CXR_BATCH_SIZE: most images per inference batch. Default 32.",
    )
    batch_max_wait_ms: int = Field(
        default=200,
        ge=0,
        le=60_000,
        description="CXR_BATCH_MAX_WAIT_MS: longest wait for a batch to fill. Default 200.",
    )
    prefetch_batches: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="CXR_PREFETCH_BATCHES: messages a worker takes from the broker ahead, in "
        "batches per pool process (CXR_PREFETCH_BATCHES x CXR_BATCH_SIZE x concurrency); "
        "0: unlimited, the workers running share a backlog out as it arrives. A bound "
        "(e.g. 2) leaves a backlog in the broker for workers started later. Default 0.",
    )
    decode_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="CXR_DECODE_THREADS: decoder threads per worker pool process; 0 means "
        "one per CPU core. Default 1, because celery starts one pool process per core and "
        "decoding in one while another predicts measured fastest (docs/performance.md).",
    )
    decode_device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="CXR_DECODE_DEVICE: where a worker pool process decodes JPEG 2000, "
        "HTJ2K and JPEG baseline files. 'auto' and 'gpu' use the card (NVIDIA "
        "nvImageCodec and CuPy, when installed: the extra '.[gpu-decode]'; one call per "
        "batch, every other syntax on the CPU threads meanwhile); 'cpu' never does. "
        "Without the libraries, or without a card, decoding stays on the CPU ('gpu' says "
        "so in the log). Default 'auto'.",
    )
    card_syntaxes: str = Field(
        default="htj2k-lossless,htj2k-lossy,jpeg-baseline,jpeg-lossless,native",
        description="CXR_CARD_SYNTAXES: which transfer syntaxes a pool process that decodes "
        "on the card hands to it, a comma-separated list of htj2k-lossless, htj2k-lossy, "
        "j2k-lossless, j2k-lossy, jpeg-baseline, jpeg-lossless (process 14, SV1 and the "
        "other predictors) and native (uncompressed little endian: the stored values go "
        "to the card as read, the windowing and the resize are done there); the rest is "
        "decoded on the CPU. The default leaves classic JPEG 2000 on the CPU, which "
        "decodes it at reduced resolution faster than the card decodes it in full "
        "(docs/performance.md). Empty: nothing on the card. Default: every name but "
        "j2k-lossless and j2k-lossy.",
    )
    inference: Literal["local", "served"] = Field(
        default="local",
        description="CXR_INFERENCE: where a worker's pool processes run the model. "
        "'local': each loads it and predicts its own batches (the prefork layout). "
        "'served': the worker starts one inference process per card (or one on a CPU "
        "host) that loads the model and predicts for every pool process, which only "
        "read, decode and record (worker/serving.py): the pool processes start without "
        "loading the model, and decoding overlaps inference from the first batch. "
        "Default 'local'.",
    )
    mixed_precision: Literal["off", "bfloat16"] = Field(
        default="off",
        description="CXR_MIXED_PRECISION: 'bfloat16' runs the model's layers in bfloat16 "
        "(weights and the softmax stay float32) on GPU workers: 31,000-33,600 images/s "
        "against 28,900-30,100 on an H100 at batch 2048, same labels, probabilities within "
        "1e-4. Slower on CPUs without bfloat16 units. Default 'off'.",
    )
    ingest_root: Path = Field(
        default_factory=Path.cwd,
        description="CXR_INGEST_ROOT: only files under this folder are read. "
        "Default: the working directory.",
    )
    spool_dir: Path | None = Field(
        default=None,
        description="CXR_SPOOL_DIR: where instances received over the network (C-STORE, "
        "STOW-RS, DICOMweb pull) are written before they are recorded; must lie under "
        "CXR_INGEST_ROOT. Default: <CXR_INGEST_ROOT>/spool.",
    )
    spool_keep_days: int = Field(
        default=0,
        ge=0,
        le=36_500,
        description="CXR_SPOOL_KEEP_DAYS: days a received file (under the spool) is kept after "
        "its instance finished; 0 deletes it at the next purge once classified. Files of "
        "instances awaiting review, labelled, not finished, or with a result not yet "
        "delivered are kept whatever this says; files outside the spool are never "
        "deleted (docs/security.md). Default 0.",
    )
    http_host: str = Field(
        default="127.0.0.1",
        description="CXR_HTTP_HOST: address `cxr-orient serve` listens on (review page, "
        "STOW-RS, health). Default 127.0.0.1.",
    )
    http_port: int = Field(
        default=8080, ge=1, le=65_535,
        description="CXR_HTTP_PORT: TCP port of `cxr-orient serve`. Default 8080.",
    )
    stow_max_request_mb: int = Field(
        default=2048,
        ge=1,
        description="CXR_STOW_MAX_REQUEST_MB: largest STOW-RS request body, in MiB (each part "
        "is also bounded by the worker's largest file, from CXR_MAX_PIXELS); a larger "
        "request is answered 413. Default 2048.",
    )
    http_max_body_kb: int = Field(
        default=64, ge=1,
        description="CXR_HTTP_MAX_BODY_KB: largest request body of every route but STOW-RS "
        "(the login, review and admin forms, the JSON API), in KiB; a larger one is "
        "answered 413 before it is parsed (Content-Length checked first, a chunked body "
        "counted as it arrives). Default 64.",
    )
    http_header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="CXR_HTTP_HEADER_TIMEOUT_S: seconds a connection may take to send a "
        "request's line and headers (from connecting, or from the previous answer); a "
        "slower one is answered 408 and closed. Default 10.",
    )
    http_body_timeout_s: float = Field(
        default=30.0, gt=0,
        description="CXR_HTTP_BODY_TIMEOUT_S: seconds a request body of every route but "
        "STOW-RS may take to arrive whole once its headers are in; a slower one is "
        "answered 408 and closed. Default 30.",
    )
    stow_body_timeout_s: float = Field(
        default=900.0, gt=0,
        description="CXR_STOW_BODY_TIMEOUT_S: the same deadline for a STOW-RS request body "
        "(up to CXR_STOW_MAX_REQUEST_MB). Default 900.",
    )
    http_max_connections: int = Field(
        default=256, ge=1,
        description="CXR_HTTP_MAX_CONNECTIONS: open connections `cxr-orient serve` holds at "
        "once; one more is answered 503 and closed at once (logged). Default 256.",
    )
    http_max_connections_per_client: int = Field(
        default=32, ge=1,
        description="CXR_HTTP_MAX_CONNECTIONS_PER_CLIENT: open connections one peer address "
        "may hold (the addresses of CXR_TRUSTED_PROXIES excepted: every client behind them "
        "shares them); one more is answered 503 and closed at once (logged), so one peer "
        "cannot take every connection. Default 32.",
    )
    session_key: SecretStr | None = Field(
        default=None,
        description="CXR_SESSION_KEY: the key that signs the review page's session "
        "cookies (at least 32 characters). Default unset: a random key is made once and "
        "kept in <CXR_DATA_DIR>/session-key (mode 0600); set it when several `serve` "
        "processes must accept each other's cookies. Changing it logs everybody out.",
    )
    session_cookie_secure: bool = Field(
        default=False,
        description="CXR_SESSION_COOKIE_SECURE: mark the session cookie Secure (sent over "
        "HTTPS only). Turn on behind a TLS-terminating proxy. Default false (the default "
        "listen address is 127.0.0.1, plain HTTP).",
    )
    session_max_age_s: int = Field(
        default=12 * 3600, ge=60,
        description="CXR_SESSION_MAX_AGE_S: how long a login lasts, in seconds. Default "
        "43200 (12 hours).",
    )
    login_max_failures: int = Field(
        default=5, ge=1,
        description="CXR_LOGIN_MAX_FAILURES: failed logins allowed per username and client "
        "address within CXR_LOGIN_WINDOW_S; further attempts are answered 429 without "
        "checking the password. Counted in the database (shared by every serve process). "
        "Default 5.",
    )
    login_window_s: int = Field(
        default=900, ge=1,
        description="CXR_LOGIN_WINDOW_S: the rate limit's window, in seconds. Default 900.",
    )
    trusted_user_header: str | None = Field(
        default=None,
        description="CXR_TRUSTED_USER_HEADER: for single sign-on behind a reverse proxy, the "
        "request header naming the logged-in user (e.g. X-Remote-User); the user must exist "
        "(`cxr-orient user create --no-password`) and its role applies. Believed only from "
        "CXR_TRUSTED_PROXIES. Default unset (off).",
    )
    trusted_proxies: str = Field(
        default="",
        description="CXR_TRUSTED_PROXIES: comma-separated addresses or networks "
        "(10.0.0.5, 10.1.0.0/16) of the reverse proxies in front of `cxr-orient serve`: "
        "only a connection from one of them has its CXR_TRUSTED_USER_HEADER believed and "
        "its X-Forwarded-For read (walked from the right, skipping these proxies) for the "
        "client's address that rate limits and logs use. Default empty: the socket's "
        "peer is the client.",
    )
    dicom_ae_title: str = Field(
        default="CXR_ORIENT",
        min_length=1,
        max_length=16,
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
    dicom_allowed_callers: str = Field(
        default="",
        description="CXR_DICOM_ALLOWED_CALLERS: comma-separated calling AE titles allowed to "
        "associate, each optionally AET@host (host: an IP address, matched exactly); any "
        "other caller is rejected at association (A-ASSOCIATE-RJ, calling AE title not "
        "recognised). Empty: any caller. Default empty.",
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
        default=9809, ge=0, le=65_535,
        description="CXR_DICOM_METRICS_PORT: TCP port of the Prometheus exporter of "
        "`cxr-orient listen` (GET /metrics: refused connections and associations by "
        "reason); 0 turns it off. Default 9809.",
    )
    spool_min_free_mb: int = Field(
        default=1024,
        ge=0,
        description="CXR_SPOOL_MIN_FREE_MB: network sources refuse an instance (C-STORE "
        "status A700, out of resources) while the file system holding the spool has less "
        "free space than this, in MiB. Default 1024.",
    )
    max_pixels: int = Field(
        default=60_000_000,
        ge=1,
        description="CXR_MAX_PIXELS: images with more pixels (rows x columns) are refused "
        "before decoding. Default 60,000,000.",
    )
    uid_conflict_policy: Literal["keep_first", "replace"] = Field(
        default="keep_first",
        description="CXR_UID_CONFLICT_POLICY: what enqueue does with a file whose "
        "SOPInstanceUID is known but whose bytes differ (a uid_conflicts row either way): "
        "'keep_first' does not queue it; 'replace' makes it the instance's file and "
        "classifies it again, keeping the earlier answers. A file naming another study "
        "is never moved there (kept first). Default 'keep_first'.",
    )
    accept_modalities: str = Field(
        default="CR,DX",
        description="CXR_ACCEPT_MODALITIES: the accept policy's Modality rule, a "
        "comma-separated list (case-insensitive); an instance of another Modality, or "
        "without one, is recorded out_of_scope and never labelled. Empty: any Modality. "
        "Default CR,DX.",
    )
    accept_sop_classes: str = Field(
        default=",".join(CHEST_RADIOGRAPH_SOP_CLASSES),
        description="CXR_ACCEPT_SOP_CLASSES: the accept policy's SOP Class rule, a "
        "comma-separated list of SOP Class UIDs (SOPClassUID, else the file meta's "
        "MediaStorageSOPClassUID); others are out_of_scope. `cxr-orient listen` offers "
        "presentation contexts for these classes only (others are refused at association); "
        "empty: any class, and listen offers every storage SOP class. Default: CR Image "
        "Storage and Digital X-Ray Image Storage for presentation and for processing "
        "(1.2.840.10008.5.1.4.1.1.1, .1.1.1.1, .1.1.1.1.1).",
    )
    accept_body_parts: str = Field(
        default="CHEST,THORAX",
        description="CXR_ACCEPT_BODY_PARTS: the accept policy's BodyPartExamined rule, a "
        "comma-separated list (case-insensitive); another body part is out_of_scope; an "
        "absent one is governed by CXR_ACCEPT_MISSING_BODY_PART. Empty: any. "
        "Default CHEST,THORAX.",
    )
    accept_missing_body_part: bool = Field(
        default=True,
        description="CXR_ACCEPT_MISSING_BODY_PART: whether an instance without "
        "BodyPartExamined passes the body-part rule (it is Type 3 in CR and DX, often "
        "absent on chest films). Default true.",
    )
    refuse_image_types: str = Field(
        default="DERIVED\\SECONDARY",
        description="CXR_REFUSE_IMAGE_TYPES: the accept policy's ImageType rule, a "
        "comma-separated list of patterns, each backslash-separated values that must all "
        "be in ImageType (case-insensitive) for the instance to be out_of_scope. Empty: no "
        "ImageType rule. Default DERIVED\\SECONDARY (screenshots, secondary captures and "
        "re-saved annotated copies; an acquired film, also a processed DERIVED\\PRIMARY "
        "one, passes).",
    )
    study_quiet_s: float = Field(
        default=10.0,
        ge=0,
        le=86_400,
        description="CXR_STUDY_QUIET_S: instances received over the network (C-STORE, "
        "STOW-RS, pull) are held ('waiting') until no instance of their study arrived for "
        "this many seconds, then queued together; 0 queues each at once. Folder enqueue "
        "never holds. Default 10.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="CXR_MAX_ATTEMPTS: an instance whose processing is interrupted this many "
        "times is failed. Default 3.",
    )
    processing_timeout_s: int = Field(
        default=600,
        ge=10,
        description="CXR_PROCESSING_TIMEOUT_S: the Redis visibility timeout: a message "
        "delivered to a worker that never acknowledged it (the worker died) is delivered "
        "again after this long. It no longer decides when stalled work is retried (the "
        "claim leases do: CXR_LEASE_S); keep it above the longest time a message can wait "
        "in a worker before its batch is written. Default 600.",
    )
    lease_s: float = Field(
        default=20.0,
        ge=2.0,
        le=3600.0,
        description="CXR_LEASE_S: a worker's claim on the instances of its batch is a lease "
        "of this many seconds, renewed every CXR_LEASE_RENEW_S while the batch runs; a claim "
        "not renewed for this long (its worker died, or lost the database) is re-queued and "
        "its worker's results are not recorded. Dead workers' work is retried within "
        "CXR_LEASE_S + CXR_LEASE_RENEW_S. Default 20.",
    )
    lease_renew_s: float = Field(
        default=5.0,
        gt=0.0,
        description="CXR_LEASE_RENEW_S: how often each pool process renews the leases it holds "
        "and re-queues lapsed ones (its own reaper). Below CXR_LEASE_S / 2. Default 5.",
    )
    broker_watch_s: float = Field(
        default=5.0,
        ge=0.0,
        le=300.0,
        description="CXR_BROKER_WATCH_S: how often each worker's main process looks at the "
        "Redis broker for lost messages: a restarted broker (a new run_id) or an empty one "
        "(queue and unacknowledged set) while the database has instances queued for longer "
        "than 3 x this gets those instances sent again (compare-and-set: once, whichever "
        "worker looks first). 0 turns it off (the beat's reaper and `cxr-orient requeue` "
        "remain). Default 5.",
    )
    review_threshold: float | None = Field(
        default=None,
        ge=0.5,
        le=1.0,
        description="CXR_REVIEW_THRESHOLD: confidence under which an answer is flagged for "
        "review. Default: the threshold recorded with the model version.",
    )
    projection_threshold: float | None = Field(
        default=None,
        ge=0.5,
        le=1.0,
        description="CXR_PROJECTION_THRESHOLD: confidence max(p_ap, 1 - p_ap) a frontal's "
        "PA/AP answer must reach to be stated (models with a PA/AP head); under it the "
        "projection is left empty. Raise it to state fewer, surer projections (1.0: "
        "none, p_ap still recorded). Default: the model card's projection_threshold "
        "(0.81 for compact-invariant-64-v4; see docs/model-card.md).",
    )
    unusual_image_action: Literal["review", "refuse"] = Field(
        default="review",
        description="CXR_UNUSUAL_IMAGE_ACTION: what happens to an image the model finds "
        "unlike any chest radiograph it was trained on (score above the model's "
        "unusual_threshold; models with the unusual-image head only): 'review' answers it "
        "and flags it needs_review with reason unusual_image; 'refuse' gives no answer and "
        "fails the instance with error code unusual_image (its score in the message). "
        "Default 'review'.",
    )
    imagenet_weights_dir: Path | None = Field(
        default=None,
        description="CXR_IMAGENET_WEIGHTS_DIR: local folder of keras.applications ImageNet "
        "weight files for transfer learning. Nothing is downloaded. Default unset.",
    )
    retrain_schedule: str | None = Field(
        default=None,
        description="CXR_RETRAIN_SCHEDULE: crontab expression (5 fields, UTC) for the nightly "
        "retrain run by celery beat, e.g. '15 2 * * *'; an alternative to the cron line in "
        "docs/operations.md. Default unset (no beat-driven retrain).",
    )
    retrain_min_new_labels: int = Field(
        default=50, ge=1,
        description="CXR_RETRAIN_MIN_NEW_LABELS: a scheduled retrain with fewer new labels "
        "exits without training. Default 50.",
    )
    result_destinations: str = Field(
        default="",
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
        default=5.0, ge=0.5, le=3600,
        description="CXR_OUTBOX_INTERVAL_S: how often every worker delivers the outbox, "
        "from a thread of its main process (no beat needed; it also runs after each "
        "recorded batch, and on beat when a worker runs one). Default 5.",
    )
    outbox_batch: int = Field(
        default=50, ge=1, le=10_000,
        description="CXR_OUTBOX_BATCH: most SRs sent by one delivery run. Default 50.",
    )
    outbox_backoff_s: float = Field(
        default=5.0, ge=0.1, le=3600,
        description="CXR_OUTBOX_BACKOFF_S: wait before the first retry of a failed "
        "send; doubled after each further failure, up to CXR_OUTBOX_BACKOFF_MAX_S. "
        "Default 5.",
    )
    outbox_backoff_max_s: float = Field(
        default=600.0, ge=0.1, le=86_400,
        description="CXR_OUTBOX_BACKOFF_MAX_S: the longest wait between two attempts. "
        "Default 600. A destination that is down is retried for ever at this pace.",
    )
    outbox_timeout_s: float = Field(
        default=30.0, ge=1, le=3600,
        description="CXR_OUTBOX_TIMEOUT_S: network timeout of one send (connect, "
        "association, response). Default 30.",
    )
    outbox_lease_s: float = Field(
        default=300.0, ge=10, le=86_400,
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
    task_soft_time_limit_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="CXR_TASK_SOFT_TIME_LIMIT_S: seconds a classification batch may run "
        "before it is stopped: the images it had not finished are recorded 'timeout' and "
        "sent again (at most CXR_MAX_ATTEMPTS tries, then failed 'timeout'); a read that "
        "hangs (stalled NFS) ends this way instead of holding its pool process. 0 turns it "
        "off. Default: 300 + CXR_BATCH_SIZE seconds (332 at batch 32): the 300 s a batch "
        "rides out a database outage for, plus 1 s per image, ten times the slowest "
        "decode measured (docs/operations.md, 'Time limits').",
    )
    task_time_limit_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="CXR_TASK_TIME_LIMIT_S: seconds after which a task's pool process is "
        "killed and replaced (its batch is re-sent by the reaper). 0 turns it off. "
        "Default: the soft limit + 60 s.",
    )
    task_events: bool = Field(
        default=True,
        description="CXR_TASK_EVENTS: workers send task events and senders 'task-sent' "
        "events, so Flower (celery -A worker flower) shows workers and tasks. Default "
        "true; false saves one event message per task.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="CXR_METRICS_DIR: folder of the workers' Prometheus multiprocess files "
        "(a subfolder per worker node, emptied when that worker starts). Default "
        "<CXR_DATA_DIR>/metrics.",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="CXR_WORKER_METRICS_HOST: address a worker's metrics exporter listens "
        "on. Default 127.0.0.1.",
    )
    worker_metrics_port: int = Field(
        default=9808, ge=0, le=65_535,
        description="CXR_WORKER_METRICS_PORT: TCP port of a worker's Prometheus exporter "
        "(GET /metrics, served by the worker's main process for all its pool processes); "
        "0 turns it off. Give each worker on a host its own port. Default 9808.",
    )
    metrics_token: SecretStr | None = Field(
        default=None,
        description="CXR_METRICS_TOKEN: when set, the service's GET /metrics wants "
        "'Authorization: Bearer <this>'. Default unset: /metrics is open, like /healthz "
        "(the service binds 127.0.0.1 by default).",
    )
    log_level: str = Field(
        default="INFO",
        description="CXR_LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL. Default INFO.",
    )

    @field_validator("retrain_schedule")
    @classmethod
    def _five_field_crontab(cls, value: str | None) -> str | None:
        if value is not None and len(value.split()) != 5:
            raise ValueError("CXR_RETRAIN_SCHEDULE must be a 5-field crontab expression")
        return value

    @field_validator("card_syntaxes")
    @classmethod
    def _card_syntax_names(cls, value: str) -> str:
        from cxr_orient.imaging.gpu.plan import CARD_SYNTAX_NAMES

        names = [v.strip().lower() for v in value.split(",") if v.strip()]
        unknown = sorted(set(names) - set(CARD_SYNTAX_NAMES))
        if unknown:
            raise ValueError(f"CXR_CARD_SYNTAXES: unknown {', '.join(unknown)} (choose from "
                             f"{', '.join(CARD_SYNTAX_NAMES)})")
        return ",".join(dict.fromkeys(names))

    @field_validator("accept_modalities", "accept_body_parts")
    @classmethod
    def _upper_list(cls, value: str) -> str:
        return ",".join(v.strip().upper() for v in value.split(",") if v.strip())

    @field_validator("accept_sop_classes")
    @classmethod
    def _uid_list(cls, value: str) -> str:
        uids = [v.strip() for v in value.split(",") if v.strip()]
        for uid in uids:
            if len(uid) > 64 or not all(part.isdigit() for part in uid.split(".")):
                raise ValueError(f"CXR_ACCEPT_SOP_CLASSES: {uid!r} is not a DICOM UID")
        return ",".join(uids)

    @field_validator("refuse_image_types")
    @classmethod
    def _image_type_patterns(cls, value: str) -> str:
        patterns = []
        for pattern in value.split(","):
            values = [v.strip().upper() for v in pattern.split("\\")]
            if any(not v for v in values) and pattern.strip():
                raise ValueError(f"CXR_REFUSE_IMAGE_TYPES: empty value in {pattern!r}")
            if pattern.strip():
                patterns.append("\\".join(values))
        return ",".join(patterns)
    @field_validator("result_destinations")
    @classmethod
    def _parsable_destinations(cls, value: str) -> str:
        urls = [parse_result_destination(e).url for e in value.split(",") if e.strip()]
        if len(set(urls)) != len(urls):
            raise ValueError("CXR_RESULT_DESTINATIONS names a destination twice")
        return ",".join(urls)

    @field_validator("result_calling_ae")
    @classmethod
    def _calling_ae_title(cls, value: str) -> str:
        return check_ae_title(value, name="CXR_RESULT_CALLING_AE")
    @field_validator("dicom_ae_title")
    @classmethod
    def _valid_ae_title(cls, value: str) -> str:
        title = value.strip()
        if not title or "\\" in title or not title.isprintable() or not title.isascii():
            raise ValueError("CXR_DICOM_AE_TITLE must be 1-16 printable ASCII characters, "
                             "no backslash")
        return title

    @property
    def dicom_allowed_caller_list(self) -> list[tuple[str, str | None]]:
        """CXR_DICOM_ALLOWED_CALLERS as (AE title, host or None) pairs."""
        out: list[tuple[str, str | None]] = []
        for item in self.dicom_allowed_callers.split(","):
            item = item.strip()
            if item:
                title, _, host = item.partition("@")
                out.append((title.strip(), host.strip() or None))
        return out

    @field_validator("session_key")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("CXR_SESSION_KEY must be at least 32 characters")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        items = [v.strip() for v in value.split(",") if v.strip()]
        for item in items:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"CXR_TRUSTED_PROXIES: {item!r} is not an address or "
                                 "network") from exc
        return ",".join(items)

    @property
    def trusted_proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(v, strict=False)
                for v in self.trusted_proxies.split(",") if v]

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return upper

    @field_validator("database_url")
    @classmethod
    def _parsable_database_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                make_url(value.get_secret_value())
            except Exception as exc:  # SQLAlchemy raises ArgumentError
                raise ValueError("CXR_DATABASE_URL is not a valid SQLAlchemy URL") from exc
        return value

    @field_validator("broker_url")
    @classmethod
    def _known_broker_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            scheme = value.get_secret_value().split("://", 1)[0]
            if scheme not in {"redis", "rediss", "amqp", "pyamqp", "filesystem", "memory"}:
                raise ValueError(f"unsupported broker scheme {scheme!r} in CXR_BROKER_URL")
        return value

    @model_validator(mode="after")
    def _soft_limit_below_hard(self) -> Settings:
        soft, hard = self.effective_task_soft_time_limit_s, self.effective_task_time_limit_s
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(
                f"CXR_TASK_SOFT_TIME_LIMIT_S ({soft:g}) must be below CXR_TASK_TIME_LIMIT_S "
                f"({hard:g}): the soft limit records the unfinished images, the hard one kills")
        return self

    @model_validator(mode="after")
    def _lease_renewed_in_time(self) -> Settings:
        if self.lease_renew_s * 2 > self.lease_s:
            raise ValueError(
                f"CXR_LEASE_RENEW_S ({self.lease_renew_s:g}) must be at most half of "
                f"CXR_LEASE_S ({self.lease_s:g}): a live worker's lease would lapse between "
                "two renewals")
        return self

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.data_dir = self.data_dir.expanduser().resolve()
        self.ingest_root = self.ingest_root.expanduser().resolve()
        if self.spool_dir is not None:
            self.spool_dir = self.spool_dir.expanduser().resolve()
            if not self.spool_dir.is_relative_to(self.ingest_root):
                raise ValueError(
                    f"CXR_SPOOL_DIR {self.spool_dir} must lie under CXR_INGEST_ROOT "
                    f"{self.ingest_root}: workers read only files under the ingest root")
        return self

    @property
    def result_destination_list(self) -> list[ResultDestination]:
        """CXR_RESULT_DESTINATIONS parsed, in the order given."""
        return [parse_result_destination(e) for e in self.result_destinations.split(",")
                if e.strip()]

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'cxr-orient.db'}"

    @property
    def effective_broker_url(self) -> str:
        if self.broker_url is not None:
            return self.broker_url.get_secret_value()
        return "filesystem://"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.broker_url is None

    @property
    def broker_folder(self) -> Path:
        return self.data_dir / "broker"

    @property
    def effective_spool_dir(self) -> Path:
        return (self.spool_dir or self.ingest_root / "spool").expanduser().resolve()

    @property
    def study_release_interval_s(self) -> float:
        """How often held studies are swept: a quarter of CXR_STUDY_QUIET_S, between 1 and
        5 seconds (a quiet study is released at most that late; each sweep is one UPDATE
        through the status index, and one beat message)."""
        return min(5.0, max(1.0, self.study_quiet_s / 4))

    @property
    def effective_metrics_dir(self) -> Path:
        return (self.metrics_dir or self.data_dir / "metrics").expanduser().resolve()

    @property
    def effective_task_soft_time_limit_s(self) -> float | None:
        """CXR_TASK_SOFT_TIME_LIMIT_S, its default computed; None when off."""
        if self.task_soft_time_limit_s is None:
            return DB_RETRY_MAX_WAIT_S + self.batch_size * SLOWEST_IMAGE_S
        return self.task_soft_time_limit_s or None

    @property
    def effective_task_time_limit_s(self) -> float | None:
        """CXR_TASK_TIME_LIMIT_S, its default computed; None when off."""
        if self.task_time_limit_s is None:
            soft = self.effective_task_soft_time_limit_s
            return None if soft is None else soft + SOFT_LIMIT_GRACE_S
        return self.task_time_limit_s or None

    @property
    def effective_model_dir(self) -> Path:
        return (self.model_dir or self.data_dir / "models").expanduser().resolve()

    @property
    def bootstrap_model_path(self) -> Path:
        return (self.model_path or SHIPPED_MODEL).expanduser().resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings so the next call re-reads the environment (tests)."""
    get_settings.cache_clear()


def redact_url(url: str) -> str:
    """A URL safe to print: the password, if any, replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"
