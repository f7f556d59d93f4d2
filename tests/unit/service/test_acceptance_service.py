"""The acceptance pages in the test process (Starlette's TestClient on the real app,
SQLite, real DICOM files): who may open them, the blind item page, a decision through
the plan's queue (CSRF-checked) as a review label with PA/AP, and the refusals."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cxr_orient.acceptance import PlanTargets, create_plan
from cxr_orient.users import create_user
from db import crud
from db.session import session_scope
from service import create_app
from tests.utils.embedded import embedded_setup
from tests.utils.review import PATIENT_ID, active_version, answered_instance

PASSWORD = "acceptance page password"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@dataclass
class Plan:
    client: TestClient
    plan_id: int
    ids: list[int]

    def login(self, username: str) -> None:
        form = self.client.get("/login")
        self.client.post(
            "/login",
            data={"username": username, "password": PASSWORD, "csrf_token": csrf_of(form.text)},
        )


@pytest.fixture
def plan(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Plan]:
    setup = embedded_setup(tmp_path, configure, monkeypatch)
    with session_scope() as session:
        version = active_version(session)
        ids = [
            answered_instance(
                session,
                root=setup.root,
                version=version,
                index=n,
                label="lateral" if n == 2 else "frontal",
                confidence=0.97,
                needs_review=False,
            )
            for n in (1, 2, 3)
        ]
        for name, role in (("rita", "reviewer"), ("audrey", "auditor")):
            create_user(session, username=name, role=role, password=PASSWORD)
        plan_id = create_plan(
            session, name="site", actor="qa", seed=1, targets=PlanTargets()
        ).plan_id
    with TestClient(create_app(), base_url="http://testserver") as client:
        yield Plan(client, plan_id, ids)


def test_only_reviewers_open_the_plans(plan: Plan) -> None:
    assert plan.client.get("/review/acceptance", follow_redirects=False).status_code == 303
    plan.login("audrey")
    assert plan.client.get("/review/acceptance").status_code == 403


def test_a_decision_is_a_review_label_with_its_projection(plan: Plan) -> None:
    plan.login("rita")
    listed = plan.client.get("/review/acceptance")
    assert listed.status_code == 200 and 'href="/review/acceptance/1"' in listed.text
    queue = plan.client.get(f"/review/acceptance/{plan.plan_id}")
    assert "0 of 3 films labelled" in queue.text
    first = plan.ids[0]
    page = plan.client.get(f"/review/acceptance/{plan.plan_id}/items/{first}")
    assert page.status_code == 200
    # Blind: neither the model's answer nor the header's view, and no patient identifier.
    assert "model-answer" not in page.text and "header-view" not in page.text
    assert "0.97" not in page.text and PATIENT_ID not in page.text
    token = csrf_of(page.text)
    url = f"/review/acceptance/{plan.plan_id}/items/{first}/label"
    refused = plan.client.post(url, data={"decision": "frontal_ap"}, follow_redirects=False)
    assert refused.status_code == 403  # no CSRF token
    bad = plan.client.post(url, data={"decision": "sideways", "csrf_token": token})
    assert bad.status_code == 400
    done = plan.client.post(
        url, data={"decision": "frontal_ap", "csrf_token": token}, follow_redirects=False
    )
    assert done.status_code == 303
    assert done.headers["location"] == f"/review/acceptance/{plan.plan_id}/items/{plan.ids[1]}"
    outside = plan.client.post(
        f"/review/acceptance/{plan.plan_id}/items/999999/label",
        data={"decision": "lateral", "csrf_token": token},
    )
    assert outside.status_code == 400
    assert plan.client.get(f"/review/acceptance/{plan.plan_id + 1}").status_code == 404
    with session_scope() as session:
        labels = crud.labels_of(session, instance_id=first)
        items = crud.acceptance_items(session, plan_id=plan.plan_id)
    assert [(g.label.value, g.source, g.annotator) for g in labels] == [
        ("frontal", "review", "rita")
    ]
    assert [(i.label, i.projection, i.annotator) for i in items if i.instance_id == first] == [
        ("frontal", "AP", "rita")
    ]
    assert "1 of 3 films labelled" in plan.client.get(f"/review/acceptance/{plan.plan_id}").text
