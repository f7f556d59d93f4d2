"""The HTTP service in the test process (Starlette's TestClient on the real app): health,
bearer tokens, STOW-RS answers part by part, on SQLite and the filesystem broker."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom import Dataset

from cxr_orient.dicomnet.multipart import Part
from cxr_orient.dicomnet.stow import (
    CANNOT_UNDERSTAND,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    http_status,
    spool_part,
)
from cxr_orient.settings import get_settings
from cxr_orient.tokens import create_token, revoke_token
from db import crud
from db.session import session_scope
from service import create_app
from tests.utils.dicom_factory import make_dicom
from tests.utils.embedded import Embedded, embedded_setup

STUDY = "1.2.826.0.1.3680043.8.498.900"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.901"
BOUNDARY = "stow-test-boundary"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass
class Service:
    client: TestClient
    token: str
    setup: Embedded
    made: Path

    def dicom(self, sop: str, study: str = STUDY) -> bytes:
        pixels = (np.arange(48 * 40, dtype=np.uint16).reshape(48, 40) * 3) % 4096
        return make_dicom(
            self.made / f"{sop}.dcm",
            pixels,
            study_uid=study,
            sop_uid=sop,
            patient_id="PHI-PATIENT-4711",
        ).read_bytes()

    def stow(
        self, *parts: bytes, study: str | None = STUDY, token: str | None = "", **kwargs: Any
    ) -> httpx.Response:
        headers = {"Content-Type": CONTENT_TYPE}
        token = self.token if token == "" else token
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        url = "/dicom-web/studies" + (f"/{study}" if study else "")
        content = kwargs.pop("content", None) or multipart(*parts)
        return self.client.post(url, content=content, headers=headers, **kwargs)


def multipart(*parts: bytes) -> bytes:
    out = b""
    for data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


@pytest.fixture
def service(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Service]:
    setup = embedded_setup(tmp_path, configure, monkeypatch)
    # Sent at once: holding a study until it is quiet is cxr_orient.studies' (test_studies).
    configure(study_quiet_s=0)
    with session_scope() as session:
        token = create_token(session, name="pacs", scopes=["stow"])
    made = tmp_path / "made"
    made.mkdir()
    with TestClient(create_app()) as client:
        yield Service(client, token, setup, made)


def _failures(body: dict[str, Any]) -> list[tuple[str, int]]:
    ds = Dataset.from_json(body)
    return [
        (item.ReferencedSOPInstanceUID, int(item.FailureReason))
        for item in ds.get("FailedSOPSequence", [])
    ]


def _stored(body: dict[str, Any]) -> list[str]:
    ds = Dataset.from_json(body)
    return [item.ReferencedSOPInstanceUID for item in ds.get("ReferencedSOPSequence", [])]


def test_health_and_readiness(service: Service) -> None:
    assert service.client.get("/healthz").json() == {"status": "ok"}
    ready = service.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "database": "ok",
        "broker": "ok",
        "workers": "none ready",
        "workers_ready": 0,
    }


@pytest.mark.parametrize(
    "authorization",
    [None, "Basic cGFjczpwYWNz", "Bearer ", "Bearer cxr_not-a-token"],
    ids=["none", "basic", "empty", "unknown"],
)
def test_stow_without_a_valid_token_is_401_with_a_challenge(
    service: Service, authorization: str | None
) -> None:
    headers = {"Content-Type": CONTENT_TYPE}
    if authorization:
        headers["Authorization"] = authorization
    answer = service.client.post("/dicom-web/studies", content=multipart(b"x"), headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith('Bearer realm="cxr-orient"')
    with session_scope() as session:
        assert sum(crud.status_counts(session).values()) == 0


def test_a_revoked_token_is_401(service: Service) -> None:
    with session_scope() as session:
        revoke_token(session, name="pacs")
    answer = service.stow(service.dicom("1.2.3.1"))
    assert answer.status_code == 401
    assert 'error="invalid_token"' in answer.headers["www-authenticate"]


def test_a_study_is_stored_recorded_and_queued(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first, second = service.dicom("1.2.3.1"), service.dicom("1.2.3.2")
    raw = multipart(first, second)
    # Streamed in small chunks, as a chunked upload arrives.
    chunks = (raw[i : i + 1000] for i in range(0, len(raw), 1000))
    answer = service.stow(content=chunks)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    body = answer.json()
    assert _stored(body) == ["1.2.3.1", "1.2.3.2"] and _failures(body) == []
    with session_scope() as session:
        rows = [
            crud.find_instance_by_uid(session, sop_instance_uid=u) for u in ("1.2.3.1", "1.2.3.2")
        ]
    assert all(r is not None and r.status == "queued" for r in rows)
    spool = get_settings().intake.effective_spool_dir / STUDY
    assert sorted(Path(r.file_path).parent for r in rows if r) == [spool, spool]
    assert sorted(m.args[0] for m in service.setup.messages()) == sorted(r.id for r in rows if r)
    # The server side's log (the test client's own httpx lines name the URL it sent to).
    logged = "\n".join(
        r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))
    )
    assert service.token not in logged and STUDY not in logged and "PHI-PATIENT" not in logged
    assert "pacs" in logged
    # Sent again: the same instances, stored as far as the sender is concerned; not queued
    # again.
    again = service.stow(first, second)
    assert again.status_code == 200
    assert len(service.setup.messages()) == 2


def test_bad_parts_fail_alone_202(service: Service) -> None:
    good = service.dicom("1.2.3.10")
    truncated = service.dicom("1.2.3.11")[:-500]
    wrong_study = service.dicom("1.2.3.12", study=OTHER_STUDY)
    answer = service.stow(good, b"this is not DICOM", truncated, wrong_study)
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert _stored(body) == ["1.2.3.10"]
    assert _failures(body) == [
        ("", CANNOT_UNDERSTAND),
        ("1.2.3.11", CANNOT_UNDERSTAND),
        ("1.2.3.12", PROCESSING_FAILURE),
    ]
    with session_scope() as session:
        assert crud.status_counts(session)["queued"] == 1
    assert not (get_settings().intake.effective_spool_dir / OTHER_STUDY).exists()


def test_no_part_stored_is_409(service: Service) -> None:
    answer = service.stow(b"junk", service.dicom("1.2.3.20", study=OTHER_STUDY))
    assert answer.status_code == 409
    assert len(_failures(answer.json())) == 2


def test_without_a_study_in_the_url_any_study_is_taken(service: Service) -> None:
    answer = service.stow(
        service.dicom("1.2.3.30"), service.dicom("1.2.3.31", OTHER_STUDY), study=None
    )
    assert answer.status_code == 200


def test_bodies_that_are_not_stow_requests(
    service: Service, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = {"Authorization": f"Bearer {service.token}"}
    wrong_type = service.client.post(
        "/dicom-web/studies", content=b"x", headers={**auth, "Content-Type": "application/dicom"}
    )
    assert wrong_type.status_code == 415
    empty = service.client.post(
        "/dicom-web/studies", content=b"", headers={**auth, "Content-Type": CONTENT_TYPE}
    )
    assert empty.status_code == 400
    monkeypatch.setenv("CXR_STOW_MAX_REQUEST_MB", "1")
    get_settings.cache_clear()
    too_big = service.stow(b"x" * (1 << 20) + b"y")
    assert too_big.status_code == 413


def test_parts_too_large_or_cut_off_fail_with_their_reasons(service: Service) -> None:
    settings = get_settings()
    too_large = spool_part(
        Part(index=0, too_large=True, size=10**9), study_instance_uid=None, settings=settings
    )
    cut = spool_part(Part(index=1, incomplete=True), study_instance_uid=None, settings=settings)
    other_type = spool_part(
        Part(index=2, headers={"content-type": "image/jpeg"}, data=b"x"),
        study_instance_uid=None,
        settings=settings,
    )
    assert (too_large.failure_reason, too_large.code) == (OUT_OF_RESOURCES, "too_large")
    assert (cut.failure_reason, cut.code) == (CANNOT_UNDERSTAND, "incomplete")
    assert (other_type.failure_reason, other_type.code) == (
        CANNOT_UNDERSTAND,
        "unsupported_media_type",
    )
    assert http_status([too_large, cut]) == 409


def test_not_ready_when_the_database_is_unreachable(
    service: Service, configure: Callable[..., None]
) -> None:
    configure(database_url="postgresql+psycopg://cxr@127.0.0.1:1/nowhere")
    ready = service.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["database"] == "unreachable"
    assert service.client.get("/healthz").status_code == 200
    stow = service.stow(service.dicom("1.2.3.40"))
    assert stow.status_code == 503, stow.text


def test_the_purge_is_a_beat_task() -> None:
    import worker.tasks  # noqa: F401  (registers the tasks)
    from worker.celery import PURGE_SPOOL, app, make_app

    assert PURGE_SPOOL in app.tasks
    schedule = make_app().conf.beat_schedule
    assert [e["task"] for e in schedule.values()].count(PURGE_SPOOL) == 1


def _failed_rows() -> list[crud.Instance]:
    from sqlalchemy import select

    from db.models import Instance, InstanceStatus

    with session_scope() as session:
        rows = list(
            session.scalars(
                select(Instance)
                .where(Instance.status == InstanceStatus.failed)
                .order_by(Instance.id)
            )
        )
        session.expunge_all()
    return rows


def test_parts_refused_before_spooling_are_recorded_as_failed_rows(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As ``listen`` records a dataset it cannot read (C210), a refused STOW-RS part is a
    failed row with its code and reason, not only a line of the response."""
    import hashlib
    import re

    good = service.dicom("1.2.3.40")
    not_dicom = b"this is not DICOM"
    truncated = service.dicom("1.2.3.41")[:-500]
    wrong_study = service.dicom("1.2.3.42", study=OTHER_STUDY)
    answer = service.stow(good, not_dicom, truncated, wrong_study)
    assert answer.status_code == 202, answer.text
    rows = _failed_rows()
    assert len(rows) == 3, [(r.error_code, r.error_message) for r in rows]
    by_hash = {r.file_sha256: r for r in rows}
    for index, data in ((1, not_dicom), (2, truncated), (3, wrong_study)):
        row = by_hash[hashlib.sha256(data).hexdigest()]
        assert row.sop_instance_uid is None and row.finished_at is not None
        assert str(row.error_message).startswith(f"STOW-RS part {index} refused")
        # The bytes as received are kept in the spool, where the row says.
        assert Path(row.file_path).read_bytes() == data
        assert Path(row.file_path).is_relative_to(get_settings().intake.effective_spool_dir)
    assert by_hash[hashlib.sha256(wrong_study).hexdigest()].error_code == "wrong_study"
    assert by_hash[hashlib.sha256(truncated).hexdigest()].error_code == "truncated"
    assert "PHI-PATIENT" not in " ".join(str(r.error_message) for r in rows)

    # The same request again: the same rows, none added.
    assert service.stow(good, not_dicom, truncated, wrong_study).status_code == 202
    assert len(_failed_rows()) == 3

    # A part whose bytes are not kept (the request goes over its limit mid-stream) is
    # recorded too, under a name of its request and part.
    monkeypatch.setenv("CXR_STOW_MAX_REQUEST_MB", "1")
    get_settings.cache_clear()
    raw = multipart(service.dicom("1.2.3.43"), b"x" * (1 << 20))
    answer = service.stow(content=(raw[i : i + 4096] for i in range(0, len(raw), 4096)))
    assert answer.status_code == 413
    (cut,) = [r for r in _failed_rows() if r.error_code == "request_too_large"]
    assert re.fullmatch(r"stow-rs://[0-9a-f]{32}/part/[0-9]+", cut.file_path), cut.file_path
    assert "CXR_STOW_MAX_REQUEST_MB" in str(cut.error_message)
