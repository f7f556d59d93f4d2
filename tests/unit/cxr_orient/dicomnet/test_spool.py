"""The spool: durable writes of received bytes, confined, never overwriting other bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_orient.dicomnet.spool import free_mb, safe_uid_name, write_instance
from cxr_orient.settings import Settings

STUDY = "1.2.826.0.1.3680043.8.498.1"
SOP = "1.2.826.0.1.3680043.8.498.2"


def settings_for(root: Path) -> Settings:
    return Settings(ingest_root=root, data_dir=root / "data")


def test_written_under_the_ingest_root_named_by_uid_and_hash(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    spooled = write_instance(
        b"DICM-bytes", study_instance_uid=STUDY, sop_instance_uid=SOP, settings=settings
    )
    assert spooled.written
    assert spooled.path.parent == tmp_path / "spool" / STUDY
    assert spooled.path.name == f"{SOP}.{spooled.sha256[:16]}.dcm"
    assert spooled.path.read_bytes() == b"DICM-bytes"
    assert not [p for p in spooled.path.parent.iterdir() if p.name.startswith(".incoming-")]


def test_same_bytes_written_once_other_bytes_get_their_own_file(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = write_instance(
        b"one", study_instance_uid=STUDY, sop_instance_uid=SOP, settings=settings
    )
    again = write_instance(
        b"one", study_instance_uid=STUDY, sop_instance_uid=SOP, settings=settings
    )
    other = write_instance(
        b"two", study_instance_uid=STUDY, sop_instance_uid=SOP, settings=settings
    )
    assert again.path == first.path and not again.written
    assert other.path != first.path and other.written
    assert first.path.read_bytes() == b"one" and other.path.read_bytes() == b"two"


@pytest.mark.parametrize("uid", ["../../etc", "1.2/../../x", "", "1." * 40, "abc", "1..2"])
def test_a_uid_that_does_not_parse_cannot_name_a_path(tmp_path: Path, uid: str) -> None:
    name = safe_uid_name(uid)
    assert name.startswith("invalid-") and "/" not in name and ".." not in name
    spooled = write_instance(
        b"x", study_instance_uid=uid, sop_instance_uid=uid, settings=settings_for(tmp_path)
    )
    assert spooled.path.resolve().is_relative_to((tmp_path / "spool").resolve())


def test_spool_outside_the_ingest_root_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must lie under CXR_INGEST_ROOT"):
        Settings(ingest_root=tmp_path / "archive", spool_dir=tmp_path / "elsewhere")


def test_free_space_is_reported(tmp_path: Path) -> None:
    assert free_mb(settings_for(tmp_path)) > 0
