"""The settings of every process (CLI, workers, the service, the listener, training),
read from ``CXR_<FIELD>`` environment variables or a ``.env`` file in the working
directory, grouped by concern.

``Settings`` is a bundle of groups, each a typed, frozen model read from the
environment once (``cxr_orient.settings.base.SettingsGroup``): ``storage`` (data folder,
database, broker), ``intake`` (ingest root, spool, image size, UID conflicts, study
hold), ``accept`` (the accept policy), ``worker`` (queue, batches, leases, time limits),
``decode`` (threads, the card), ``inference`` (the model in service, review rules),
``training``, ``dicom`` (the listener), ``results`` (SRs back to PACS, the outbox),
``corrections`` (IOCM corrections: destinations, rules), ``http`` (`cxr-orient serve`)
and ``logs``. A field's name is its variable without the prefix (``worker.batch_size``
is ``CXR_BATCH_SIZE``); no two groups share a name. Lists are typed lists, written
comma-separated in the environment and parsed once, on load, by the parser of their
domain (AE titles and result destinations:
``cxr_orient.dicomnet.addresses``).

Read at the edges only: ``get_settings()`` is called by the processes' entry modules
(``cli/``, ``worker/celery.py``, ``worker/tasks.py``, ``worker/signals.py``,
``service/deps.py`` and ``service/app.py``, the release recipes' main, the bench) and
the database engine of ``db.session``; everything else is handed the group (or the groups) it needs.
``tests/unit/test_architecture.py`` fails when another module calls it.

**Where a new setting goes**: in the group of its concern, as a ``Field`` whose
description starts with its variable and says its default (docs/configuration.md is
generated from them: ``python -m tests.unit.cxr_orient.test_settings``). A new concern with
several settings (for example a projection (PA/AP) rule, or IOCM corrections'
``CXR_CORRECTION_*``, in ``corrections.py``) is a new module here with its own
``SettingsGroup`` subclass, added to ``GROUPS`` and as a field of ``Settings``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cxr_orient.settings.accept import CHEST_RADIOGRAPH_SOP_CLASSES, AcceptSettings
from cxr_orient.settings.base import SettingsGroup
from cxr_orient.settings.corrections import CORRECTION_FAULTS, CorrectionSettings
from cxr_orient.settings.decode import DecodeSettings
from cxr_orient.settings.dicom import DicomSettings
from cxr_orient.settings.http import HttpSettings
from cxr_orient.settings.inference import SHIPPED_MODEL, InferenceSettings
from cxr_orient.settings.intake import IntakeSettings
from cxr_orient.settings.logs import LogSettings
from cxr_orient.settings.results import ResultSettings
from cxr_orient.settings.storage import StorageSettings, redact_url
from cxr_orient.settings.training import TrainingSettings
from cxr_orient.settings.worker import DB_RETRY_MAX_WAIT_S, WorkerSettings

__all__ = [
    "CHEST_RADIOGRAPH_SOP_CLASSES",
    "CORRECTION_FAULTS",
    "DB_RETRY_MAX_WAIT_S",
    "GROUPS",
    "SHIPPED_MODEL",
    "AcceptSettings",
    "CorrectionSettings",
    "DecodeSettings",
    "DicomSettings",
    "HttpSettings",
    "InferenceSettings",
    "IntakeSettings",
    "LogSettings",
    "ResultSettings",
    "Settings",
    "SettingsGroup",
    "StorageSettings",
    "TrainingSettings",
    "WorkerSettings",
    "field_groups",
    "get_settings",
    "redact_url",
    "reset_settings_cache",
]

#: Each group of ``Settings``, by its attribute name, in the order the docs list them.
GROUPS: dict[str, type[SettingsGroup]] = {
    "storage": StorageSettings,
    "intake": IntakeSettings,
    "accept": AcceptSettings,
    "worker": WorkerSettings,
    "decode": DecodeSettings,
    "inference": InferenceSettings,
    "training": TrainingSettings,
    "dicom": DicomSettings,
    "results": ResultSettings,
    "corrections": CorrectionSettings,
    "http": HttpSettings,
    "logs": LogSettings,
}


def field_groups() -> dict[str, str]:
    """Each setting's field name (its variable without ``CXR_``) and its group."""
    return {name: group for group, model in GROUPS.items() for name in model.model_fields}


class Settings(BaseModel):
    """Every group, read from the environment. ``Settings(batch_size=4)`` (tests, the
    demo) gives fields by their flat names, routed to their groups; ``_env_file=None``
    reads no ``.env``. An unknown name is an error."""

    model_config = ConfigDict(frozen=True)

    storage: StorageSettings = Field(default_factory=StorageSettings)
    intake: IntakeSettings = Field(default_factory=IntakeSettings)
    accept: AcceptSettings = Field(default_factory=AcceptSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    decode: DecodeSettings = Field(default_factory=DecodeSettings)
    inference: InferenceSettings = Field(default_factory=InferenceSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    results: ResultSettings = Field(default_factory=ResultSettings)
    corrections: CorrectionSettings = Field(default_factory=CorrectionSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    logs: LogSettings = Field(default_factory=LogSettings)

    @model_validator(mode="before")
    @classmethod
    def _read_groups(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        given = dict(data)
        source = {"_env_file": given.pop("_env_file")} if "_env_file" in given else {}
        owners = field_groups()
        flat = {k: given.pop(k) for k in list(given) if k not in GROUPS}
        unknown = sorted(set(flat) - set(owners))
        if unknown:
            raise ValueError(f"no such setting: {', '.join(unknown)}")
        for group, model in GROUPS.items():
            if group not in given:
                values = {k: v for k, v in flat.items() if owners[k] == group}
                given[group] = model(**source, **values)
        return given


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment (at the edges only)."""
    return Settings()


def reset_settings_cache() -> None:
    """Forget the cached settings so the next call re-reads the environment (tests)."""
    get_settings.cache_clear()
