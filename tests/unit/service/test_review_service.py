"""The review page in the test process (Starlette's TestClient on the real app, SQLite,
real DICOM files): login and its rate limit, CSRF refusal, roles, the trusted proxy
header, the queue and its filters, decisions as labels, the JSON API, no PHI."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from cxr_orient.review import REVIEW_SOURCE
from cxr_orient.tokens import create_token
from cxr_orient.users import create_user, disable_user, set_password
from db import crud
from db.models import GroundTruthLabel, LabelValue, utcnow
from db.session import session_scope
from service import create_app
from tests.utils.embedded import embedded_setup
from tests.utils.review import PATIENT_ID, UID_ROOT, active_version, answered_instance

PASSWORD = "correct horse battery"


@dataclass
class Site:
    client: TestClient
    ids: dict[str, int]
    root: Path

    def login(
        self, username: str, password: str = PASSWORD, client: TestClient | None = None
    ) -> httpx.Response:
        client = client or self.client
        form = client.get("/login")
        return client.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": csrf_of(form.text)},
            follow_redirects=False,
        )


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@pytest.fixture
def site(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Site]:
    setup = embedded_setup(tmp_path, configure, monkeypatch)
    ids: dict[str, int] = {}
    with session_scope() as session:
        version = active_version(session)
        ids["low"] = answered_instance(session, root=setup.root, version=version, index=1)
        ids["confident"] = answered_instance(
            session, root=setup.root, version=version, index=2, confidence=0.99, needs_review=False
        )
        ids["disagree"] = answered_instance(
            session, root=setup.root, version=version, index=3, label="lateral", header_agrees=False
        )
        ids["unusual"] = answered_instance(
            session, root=setup.root, version=version, index=4, review_reason="unusual_image"
        )
        for name, role in (("rita", "reviewer"), ("audrey", "auditor"), ("ada", "admin")):
            create_user(session, username=name, role=role, password=PASSWORD)
    with TestClient(create_app(), base_url="http://testserver") as client:
        yield Site(client, ids, setup.root)


def test_pages_need_a_login(site: Site) -> None:
    for path in ("/review", "/audit", "/admin/users", f"/review/items/{site.ids['low']}"):
        answer = site.client.get(path, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login")
    assert site.client.get("/api/v1/review/queue").status_code == 401


def test_login_sets_a_hardened_session_cookie(site: Site) -> None:
    answer = site.login("rita")
    assert answer.status_code == 303 and answer.headers["location"] == "/review"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert PASSWORD not in cookie


def test_a_wrong_password_is_refused_and_rate_limited(
    site: Site, configure: Callable[..., None]
) -> None:
    for _ in range(5):
        assert site.login("rita", "wrong password!!").status_code == 401
    # The sixth is refused before the password is looked at: even the right one.
    answer = site.login("rita")
    assert answer.status_code == 429
    assert "too many" in answer.text
    # Another user from the same address is not limited by rita's failures.
    assert site.login("audrey").status_code == 303
    with session_scope() as session:
        assert (
            crud.count_login_failures(
                session,
                username="rita",
                address="testclient",
                since=utcnow() - timedelta(seconds=3600),
            )
            == 5
        )


def test_an_unknown_user_gets_the_same_answer_as_a_wrong_password(site: Site) -> None:
    unknown = site.login("nobody")
    wrong = site.login("rita", "wrong password!!")
    assert unknown.status_code == wrong.status_code == 401
    assert "wrong username or password" in unknown.text and "wrong username" in wrong.text


def test_a_form_without_its_csrf_token_is_refused(site: Site) -> None:
    form = site.client.get("/login")
    assert csrf_of(form.text)
    refused = site.client.post(
        "/login", data={"username": "rita", "password": PASSWORD}, follow_redirects=False
    )
    assert refused.status_code == 403
    assert site.login("rita").status_code == 303
    item = site.ids["low"]
    for token in (None, "forged"):
        data = {"decision": "frontal", "filter": "flagged"}
        if token:
            data["csrf_token"] = token
        answer = site.client.post(f"/review/items/{item}/label", data=data, follow_redirects=False)
        assert answer.status_code == 403
    # The JSON API from a browser session needs the header too.
    assert (
        site.client.post(
            f"/api/v1/review/items/{item}/label", json={"decision": "frontal"}
        ).status_code
        == 403
    )
    with session_scope() as session:
        assert crud.labels_of(session, instance_id=item) == []


def test_roles(site: Site) -> None:
    site.login("rita")
    assert site.client.get("/review").status_code == 200
    assert site.client.get("/admin/users").status_code == 403
    assert site.client.get("/audit").status_code == 403
    assert site.client.get("/api/v1/audit/versions").status_code == 403
    other = TestClient(site.client.app)
    site.login("audrey", client=other)
    assert other.get("/audit").status_code == 200
    assert other.get("/review").status_code == 403
    assert other.get("/admin/users").status_code == 403
    admin = TestClient(site.client.app)
    site.login("ada", client=admin)
    for path in ("/review", "/audit", "/admin/users"):
        assert admin.get(path).status_code == 200


def test_a_disabled_user_or_a_new_password_ends_the_session(site: Site) -> None:
    site.login("rita")
    assert site.client.get("/review").status_code == 200
    with session_scope() as session:
        set_password(session, username="rita", password="another long password")
    assert site.client.get("/review", follow_redirects=False).status_code == 303
    site.login("rita", "another long password")
    assert site.client.get("/review").status_code == 200
    with session_scope() as session:
        disable_user(session, username="rita")
    assert site.client.get("/review", follow_redirects=False).status_code == 303
    assert site.login("rita", "another long password").status_code == 401


def test_the_queue_filters_and_shows_no_identifiers(site: Site) -> None:
    site.login("rita")
    page = site.client.get("/review")
    shown = [int(i) for i in re.findall(r'data-instance="(\d+)"', page.text)]
    assert shown == sorted([site.ids["low"], site.ids["disagree"], site.ids["unusual"]])
    disagree = site.client.get("/review?filter=disagree").text
    assert re.findall(r'data-instance="(\d+)"', disagree) == [str(site.ids["disagree"])]
    unusual = site.client.get("/review?filter=out_of_scope").text
    assert re.findall(r'data-instance="(\d+)"', unusual) == [str(site.ids["unusual"])]
    item = site.client.get(f"/review/items/{site.ids['low']}")
    for text in (page.text, item.text):
        assert PATIENT_ID not in text and UID_ROOT not in text
    assert item.headers["x-frame-options"] == "DENY"


def test_images_come_from_the_stored_file_or_say_why_not(site: Site) -> None:
    site.login("rita")
    item = site.ids["low"]
    model = site.client.get(f"/api/v1/review/items/{item}/images/model.png")
    large = site.client.get(f"/api/v1/review/items/{item}/images/large.png")
    assert model.headers["content-type"] == "image/png"
    from io import BytesIO

    from PIL import Image

    assert Image.open(BytesIO(model.content)).size == (256, 256)
    assert max(Image.open(BytesIO(large.content)).size) == 768
    assert "x-image-unavailable" not in model.headers
    with session_scope() as session:
        row = crud.get_instance(session, instance_id=site.ids["disagree"])
        assert row is not None
        Path(row.file_path).unlink()
    gone = site.client.get(f"/api/v1/review/items/{site.ids['disagree']}/images/model.png")
    assert gone.status_code == 200 and gone.headers["x-image-unavailable"]


def test_a_decision_is_a_review_label_and_the_page_moves_on(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    site.login("rita")
    first = site.ids["low"]
    page = site.client.get(f"/review/items/{first}")
    answer = site.client.post(
        f"/review/items/{first}/label",
        follow_redirects=False,
        data={"decision": "lateral", "filter": "flagged", "csrf_token": csrf_of(page.text)},
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/review/items/{site.ids['disagree']}?filter=flagged"
    with session_scope() as session:
        labels = crud.labels_of(session, instance_id=first)
        assert [(g.label, g.source, g.annotator) for g in labels] == [
            (LabelValue.lateral, REVIEW_SOURCE, "rita")
        ]
    queue = site.client.get("/review").text
    assert f'data-instance="{first}"' not in queue
    assert PATIENT_ID not in caplog.text and UID_ROOT not in caplog.text


def test_the_projection_is_shown_and_a_reviewer_can_set_it(site: Site) -> None:
    """The model's AP on a film whose header says PA is on the page with its p_ap; the
    reviewer's Frontal PA is stored as the label's projection, by form and by API."""
    with session_scope() as session:
        version = crud.find_model_version(session, name="m1")
        assert version is not None
        said_ap = answered_instance(
            session,
            root=site.root,
            version=version,
            index=9,
            projection="AP",
            p_ap=0.91,
            projection_agrees=False,
        )
    site.login("rita")
    page = site.client.get(f"/review/items/{said_ap}")
    shown = re.search(r'<td id="projection">(.*?)</td>', page.text)
    assert shown and "AP (p_ap 0.91)" in shown.group(1) and "header disagrees" in shown.group(1)
    assert 'id="decide-frontal-pa"' in page.text and 'id="decide-frontal-ap"' in page.text
    answer = site.client.post(
        f"/review/items/{said_ap}/label",
        follow_redirects=False,
        data={
            "decision": "frontal",
            "projection": "PA",
            "filter": "flagged",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert answer.status_code == 303, answer.text
    refused = site.client.post(
        f"/review/items/{said_ap}/label",
        follow_redirects=False,
        data={
            "decision": "lateral",
            "projection": "PA",
            "filter": "flagged",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert refused.status_code == 400
    item = site.client.get(f"/api/v1/review/items/{said_ap}").json()
    assert (item["projection"], item["p_ap"], item["projection_agrees"]) == ("AP", 0.91, False)
    made = site.client.post(
        f"/api/v1/review/items/{said_ap}/label",
        json={"decision": "frontal", "projection": "AP"},
        headers={"X-CSRF-Token": csrf_of(page.text)},
    )
    assert made.status_code == 201, made.text
    assert made.json()["projection"] == "AP"
    with session_scope() as session:
        assert [(g.label, g.projection) for g in crud.labels_of(session, instance_id=said_ap)] == [
            (LabelValue.frontal, "PA"),
            (LabelValue.frontal, "AP"),
        ]


def test_the_api_with_a_token(site: Site) -> None:
    with session_scope() as session:
        token = create_token(session, name="qa-script", scopes=["review"])
        stow_only = create_token(session, name="pacs", scopes=["stow"])
    client = TestClient(site.client.app)
    client.headers["Authorization"] = f"Bearer {token}"
    queue = client.get("/api/v1/review/queue?limit=2").json()
    assert [i["instance_id"] for i in queue["items"]] == sorted(
        [site.ids["low"], site.ids["disagree"]]
    )
    assert queue["next_after"] == queue["items"][-1]["instance_id"]
    made = client.post(
        f"/api/v1/review/items/{site.ids['unusual']}/label", json={"decision": "not_chest"}
    )
    assert made.status_code == 201, made.text
    assert made.json()["annotator"] == "token:qa-script"
    assert (
        client.post(
            f"/api/v1/review/items/{site.ids['unusual']}/label", json={"decision": "sideways"}
        ).status_code
        == 422
    )
    assert client.get("/api/v1/audit/rates").status_code == 403
    client.headers["Authorization"] = f"Bearer {stow_only}"
    assert client.get("/api/v1/review/queue").status_code == 403
    schema = client.get("/openapi.json").json()
    assert "/api/v1/review/items/{instance_id}/label" in schema["paths"]
    assert "/review" not in schema["paths"] and "/login" not in schema["paths"]


def test_the_trusted_proxy_header(site: Site, configure: Callable[..., None]) -> None:
    configure(trusted_user_header="X-Remote-User", trusted_proxies="127.0.0.0/8")
    app = create_app()
    from_proxy = TestClient(app, client=("127.0.0.1", 50000))
    assert from_proxy.get("/review", headers={"X-Remote-User": "rita"}).status_code == 200
    assert from_proxy.get("/admin/users", headers={"X-Remote-User": "rita"}).status_code == 403
    unknown = from_proxy.get(
        "/review", headers={"X-Remote-User": "mallory"}, follow_redirects=False
    )
    assert unknown.status_code == 303
    elsewhere = TestClient(app, client=("192.0.2.7", 50000))
    spoofed = elsewhere.get("/review", headers={"X-Remote-User": "rita"}, follow_redirects=False)
    assert spoofed.status_code == 303 and spoofed.headers["location"].startswith("/login")


def test_the_audit_pages(site: Site) -> None:
    site.login("audrey")
    overview = site.client.get("/audit")
    assert overview.status_code == 200
    assert "<svg" in overview.text and "m1" in overview.text
    found = site.client.post(
        "/audit/studies",
        follow_redirects=False,
        data={"study_instance_uid": f"{UID_ROOT}.9{1}", "csrf_token": csrf_of(overview.text)},
    )
    assert found.status_code == 303
    location = found.headers["location"]
    assert re.fullmatch(r"/audit/studies/\d+", location)
    study = site.client.get(location)
    assert "current" in study.text and PATIENT_ID not in study.text
    versions = site.client.get("/api/v1/audit/versions").json()
    assert versions[0]["answers"] == 4 and versions[0]["needs_review"] == 3
    assert versions[0]["header_disagrees"] == 1


def test_admin_adds_and_disables_users(site: Site) -> None:
    site.login("ada")
    page = site.client.get("/admin/users")
    made = site.client.post(
        "/admin/users",
        data={
            "username": "rob",
            "role": "reviewer",
            "password": "a long enough secret",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert made.status_code == 200 and "added rob" in made.text
    with session_scope() as session:
        rob = crud.find_user(session, username="rob")
        assert rob is not None and rob.password_hash is not None
        assert rob.password_hash.startswith("$argon2id$")
        rob_id = rob.id
    gone = site.client.post(
        f"/admin/users/{rob_id}/disable",
        data={"csrf_token": csrf_of(made.text)},
        follow_redirects=False,
    )
    assert gone.status_code == 303
    with session_scope() as session:
        assert session.get(GroundTruthLabel, 1) is None
        again = crud.find_user(session, username="rob")
        assert again is not None and again.disabled_at is not None
