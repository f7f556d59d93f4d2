"""One settings object for every process: CLI, workers, training.

Every field is read from an environment variable named ``CXR_<FIELD>`` (for
example ``CXR_DATABASE_URL``), or from a ``.env`` file in the working
directory. Defaults give an embedded setup that needs no server: an SQLite
file and a filesystem broker under ``CXR_DATA_DIR``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

_REPO_ROOT = Path(__file__).resolve().parent.parent
#: Checkpoint shipped with the source tree, used when nothing else is active.
SHIPPED_MODEL = Path(__file__).resolve().parent / "shipped" / "compact-invariant-64-v2.keras"


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
        "database has no active model. Default: the shipped checkpoint (compact-invariant-64-v2).",
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
    decode_threads: int = Field(
        default=1,
        ge=0,
        le=256,
        description="CXR_DECODE_THREADS: decoder threads per worker pool process; 0 means "
        "one per CPU core. Default 1, because celery starts one pool process per core and "
        "decoding in one while another predicts measured fastest (docs/performance.md).",
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
        "`cxr-orient listen` accepts; more are rejected (transient, local limit "
        "exceeded). Default 8.",
    )
    dicom_sop_classes: str = Field(
        default="1.2.840.10008.5.1.4.1.1.1,1.2.840.10008.5.1.4.1.1.1.1,"
        "1.2.840.10008.5.1.4.1.1.1.1.1",
        description="CXR_DICOM_SOP_CLASSES: comma-separated storage SOP class UIDs (or "
        "pydicom keywords such as ComputedRadiographyImageStorage) `cxr-orient listen` "
        "offers presentation contexts for; others are refused at association. Default: CR, "
        "DX for presentation, DX for processing.",
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
        description="CXR_PROCESSING_TIMEOUT_S: an instance in 'processing' for longer is "
        "considered stuck and requeued. Default 600.",
    )
    review_threshold: float | None = Field(
        default=None,
        ge=0.5,
        le=1.0,
        description="CXR_REVIEW_THRESHOLD: confidence under which an answer is flagged for "
        "review. Default: the threshold recorded with the model version.",
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
