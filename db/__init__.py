"""The audit database: models, sessions, migrations and access functions."""

from db.models import (
    Base,
    GroundTruthLabel,
    Instance,
    InstanceStatus,
    ModelEvent,
    ModelVersion,
    OrientationLabel,
    Prediction,
    Study,
)
from db.session import dispose_engines, get_engine, session_scope

__all__ = [
    "Base",
    "GroundTruthLabel",
    "Instance",
    "InstanceStatus",
    "ModelEvent",
    "ModelVersion",
    "OrientationLabel",
    "Prediction",
    "Study",
    "dispose_engines",
    "get_engine",
    "session_scope",
]
