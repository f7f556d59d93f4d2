"""A malformed Study, Series or SOP Instance UID (PS3.5 9.1) is refused whatever the way
in, by the one check (cxr_orient.dicomnet.policy.check_uids, applied by
cxr_orient.ingest.header_record): here the real listener, sent to by dcmtk's dcmsend.
STOW-RS: tests/integration/test_http_security.py; enqueue:
tests/unit/cxr_orient/dicomnet/test_policy.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from db import crud
from db.session import session_scope
from tests.utils.dicom_factory import make_dicom, synthetic_pixels
from tests.utils.dicomnode import dcmsend, running_listener
from tests.utils.worker import worker_env

pytestmark = pytest.mark.integration

BAD = "../../../../tmp/x"


def test_the_listener_refuses_a_malformed_uid_and_records_a_failed_row(
    tmp_path: Path, configure: Callable[..., None]
) -> None:
    from tests.utils.env import migrate_from_template

    values = dict(
        database_url=f"sqlite:///{tmp_path / 'cxr.db'}",
        ingest_root=tmp_path,
        data_dir=tmp_path / "data",
        study_quiet_s=3600,
    )
    configure(**values)
    migrate_from_template(str(values["database_url"]))
    env = worker_env(**values)
    sources = tmp_path / "src"
    sources.mkdir()
    good = make_dicom(
        sources / "good.dcm",
        synthetic_pixels((64, 64)),
        study_uid="1.2.826.0.1.3680043.10.99.1",
        sop_uid="1.2.826.0.1.3680043.10.99.1.1",
    )
    bad = make_dicom(
        sources / "bad.dcm",
        synthetic_pixels((64, 64)),
        study_uid="1.2.826.0.1.3680043.10.99.2",
        sop_uid="1.2.826.0.1.3680043.10.99.2.1",
    )
    ds = pydicom.dcmread(bad)
    ds.StudyInstanceUID = BAD
    ds.save_as(bad)

    with running_listener(env, tmp_path / "listen.log") as listener:
        sent = dcmsend(listener.port, [good, bad])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with session_scope() as session:
                found = {r.file_path: r for r in crud.results(session)}
            if len(found) >= 2:
                break
            time.sleep(0.25)
        log = listener.log()
    out = sent.stdout + sent.stderr
    # Refused at C-STORE time, so the modality knows (before: Success, then a failed row).
    assert "C-STORE Response (Error: CannotUnderstand)" in out, out
    assert out.count("C-STORE Response (Success)") == 1, out
    assert len(found) == 2, found
    statuses = sorted((r.status, (r.error or "").split(":")[0]) for r in found.values())
    assert statuses == [("failed", "invalid_uid"), ("waiting", "")], statuses
    with session_scope() as session:
        assert crud.find_study_id(session, study_instance_uid=BAD) is None
    assert "tmp/x" not in log
