"""Rows for tests, made through db.crud like production code makes them."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from db import crud
from db.models import ModelVersion


def register_version(session: Session, name: str = "m1", **overrides: Any) -> ModelVersion:
    """A registered (candidate) model version with plausible defaults."""
    values: dict[str, Any] = {
        "architecture": "compact",
        "file_path": f"/var/lib/cxr-orient/models/{name}.keras",
        "sha256": "a" * 64,
        "input_size": 256,
        "labels": ["frontal", "lateral"],
        "temperature": 1.0,
        "review_threshold": 0.9,
        "metrics": {},
        "training": {},
        "actor": "test",
        "reason": f"register {name}",
        **overrides,
    }
    return crud.register_model_version(session, name=name, **values)
