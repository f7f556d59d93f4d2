"""How much every process logs."""

from __future__ import annotations

from pydantic import Field, field_validator

from cxr_orient.settings.base import SettingsGroup

__all__ = ["LogSettings"]


class LogSettings(SettingsGroup):
    """The log level every entry point applies (``cxr_orient.logs``)."""

    log_level: str = Field(
        default="INFO",
        description="CXR_LOG_LEVEL: DEBUG, INFO, WARNING, ERROR or CRITICAL. Default INFO.",
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError(f"unknown log level {value!r}")
        return upper
