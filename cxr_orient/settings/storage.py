"""Where the data lives: the working folder, the database, the broker, and the folders
that default under the working folder (trained checkpoints, the workers' metrics)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from sqlalchemy.engine import make_url

from cxr_orient.settings.base import SettingsGroup

__all__ = ["BROKER_SCHEMES", "StorageSettings", "redact_url"]

#: The Celery broker transports CXR_BROKER_URL may name.
BROKER_SCHEMES = frozenset({"redis", "rediss", "amqp", "pyamqp", "filesystem", "memory"})


class StorageSettings(SettingsGroup):
    """The working folder, the database and the broker."""

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
    model_dir: Path | None = Field(
        default=None,
        description="CXR_MODEL_DIR: where trained checkpoints are written. "
        "Default <CXR_DATA_DIR>/models.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="CXR_METRICS_DIR: folder of the workers' Prometheus multiprocess files "
        "(a subfolder per worker node, emptied when that worker starts). Default "
        "<CXR_DATA_DIR>/metrics.",
    )

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

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
            if scheme not in BROKER_SCHEMES:
                raise ValueError(f"unsupported broker scheme {scheme!r} in CXR_BROKER_URL")
        return value

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
    def effective_model_dir(self) -> Path:
        return (self.model_dir or self.data_dir / "models").expanduser().resolve()

    @property
    def effective_metrics_dir(self) -> Path:
        return (self.metrics_dir or self.data_dir / "metrics").expanduser().resolve()


def redact_url(url: str) -> str:
    """A URL safe to print: the password, if any, replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://***"
