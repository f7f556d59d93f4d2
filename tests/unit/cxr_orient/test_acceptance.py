"""Acceptance plans on a real database (SQLite and PostgreSQL): the device recorded at
ingest, a plan drawn from the answers and stored, a decision through the plan's queue
as the same labels row the review page makes, and the report with its figures, the
projection section for answers of a model with and without a PA/AP head, and the
go/no-go."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

import cxr_orient
from cxr_orient.acceptance import (
    NO_PROJECTION,
    AcceptanceError,
    PlanTargets,
    create_plan,
    parse_requirement,
    record_acceptance_label,
    report_for_plan,
    write_report,
)
from cxr_orient.ingest import enqueue_paths
from cxr_orient.settings import get_settings
from db import crud
from db.models import Instance
from db.session import session_scope
from tests.utils.embedded import Embedded, embedded_setup
from tests.utils.review import active_version, answered_instance
from worker.dispatch import send_instances

SAMPLES = Path(cxr_orient.__file__).resolve().parent / "samples"
#: (model's label, header view, header agrees, review reason, manufacturer) per film.
FILMS = [
    ("frontal", "PA", True, None, "Acme"),
    ("frontal", "PA", True, None, "Acme"),
    ("frontal", "LL", False, None, None),  # header says lateral: header wrong
    ("frontal", "PA", True, "low_confidence", "Acme"),  # truly lateral: header, model wrong
    ("lateral", "LL", True, None, "Philips"),
    ("lateral", "LL", True, None, "Philips"),
    ("lateral", "PA", False, None, "Philips"),  # header wrong, model right
    ("frontal", None, None, "unusual_image", None),  # truly not a chest film: caught
]
#: What the reviewers say of each film (decision keys of the plan's page).
TRUTH = [
    "frontal_pa",
    "frontal_ap",
    "frontal_pa",
    "lateral",
    "lateral",
    "lateral",
    "lateral",
    "not_chest",
]


def test_ingest_records_the_device_from_the_header(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded: Embedded = embedded_setup(tmp_path, configure, monkeypatch)
    shutil.copy(SAMPLES / "rg1" / "RG1_J2KI.dcm", embedded.root / "rg1.dcm")
    shutil.copy(SAMPLES / "study1" / "frontal.dcm", embedded.root / "frontal.dcm")
    report = enqueue_paths([embedded.root], send=send_instances, settings=get_settings())
    with session_scope() as session:
        devices = {
            (i.manufacturer, i.manufacturer_model)
            for i in (crud.get_instance(session, instance_id=n) for n in report.queued)
            if i
        }
    assert devices == {
        ("Philips Medical Systems", "Cassette Holder Type 9840 500 70201"),
        (None, None),
    }


@pytest.fixture
def answered(migrated_db: str, tmp_path: Path) -> list[int]:
    with session_scope() as session:
        version = active_version(session)
        ids = []
        for n, (label, view, agrees, reason, maker) in enumerate(FILMS, start=1):
            made = answered_instance(
                session,
                root=tmp_path,
                version=version,
                index=n,
                label=label,
                header_view=view,
                header_agrees=agrees,
                needs_review=reason is not None,
                review_reason=reason,
                confidence=0.6 if reason else 0.99,
            )
            row = session.get(Instance, made)
            assert row is not None
            row.manufacturer = maker
            ids.append(made)
    return ids


def _plan(name: str, **targets: object) -> int:
    with session_scope() as session:
        goals = PlanTargets(**targets)  # type: ignore[arg-type]
        return create_plan(session, name=name, actor="qa", seed=11, targets=goals).plan_id


def test_a_plan_is_stored_with_every_stratum(answered: list[int]) -> None:
    plan_id = _plan("site-a", core_size=2, per_stratum=1)
    with session_scope() as session:
        items = crud.acceptance_items(session, plan_id=plan_id)
        plan = crud.get_acceptance_plan(session, plan_id=plan_id)
        assert plan is not None and plan.seed == 11 and plan.population == len(FILMS)
        design = plan.design
    assert sum(i.core for i in items) == 2
    assert set(design["strata_population"]) == {
        "class:frontal",
        "class:lateral",
        "header:disagrees",
        "low_confidence",
        "unusual",
        "modality:DX",
        "device:Acme",
        "device:Philips",
        "device:unknown",
    }
    for stratum in design["strata_population"]:
        assert any(stratum in i.strata for i in items), stratum
    # The same seed on the same answers draws the same films.
    again = _plan("site-a-again", core_size=2, per_stratum=1)
    with session_scope() as session:
        assert [i.instance_id for i in crud.acceptance_items(session, plan_id=again)] == [
            i.instance_id for i in items
        ]
        with pytest.raises(AcceptanceError, match="exists already"):
            create_plan(session, name="site-a", actor="qa", targets=PlanTargets())


def _label_all(plan_id: int, ids: list[int]) -> None:
    with session_scope() as session:
        for instance_id, decision in zip(ids, TRUTH, strict=True):
            record_acceptance_label(
                session,
                plan_id=plan_id,
                instance_id=instance_id,
                decision=decision,
                annotator="rita",
            )


def test_decisions_are_review_labels_and_the_report_measures_them(
    answered: list[int], tmp_path: Path
) -> None:
    plan_id = _plan("site-b")  # per class 101 films wanted: the whole (small) site
    with session_scope() as session:
        with pytest.raises(AcceptanceError, match="choose from"):
            record_acceptance_label(
                session,
                plan_id=plan_id,
                instance_id=answered[0],
                decision="maybe",
                annotator="rita",
            )
        unlabelled = report_for_plan(
            session, plan_id=plan_id, requirements=[parse_requirement("lateral_recall_lb>=0.1")]
        )
    assert unlabelled["decision"] == "no-go"
    assert "8 of 8 films not labelled yet" in unlabelled["reasons"]

    # A first, wrong decision on film 4, then the right one: the newest counts.
    with session_scope() as session:
        record_acceptance_label(
            session, plan_id=plan_id, instance_id=answered[3], decision="frontal", annotator="rita"
        )
    _label_all(plan_id, answered)
    with session_scope() as session:
        labels = crud.latest_labels(session)
        made = report_for_plan(
            session,
            plan_id=plan_id,
            requirements=[
                parse_requirement("lateral_recall_lb>=0.15"),
                parse_requirement("header_wrong_rate<=0.5"),
                parse_requirement("projection_accuracy_lb>=0.5"),
            ],
        )
    # The same rows the review page writes (retraining reads them).
    assert {(i.id, g.label.value, g.source, g.annotator) for i, _, g in labels} == {
        (n, t.split("_")[0] if t != "not_chest" else "not_chest", "review", "rita")
        for n, t in zip(answered, TRUTH, strict=True)
    }

    assert made["items"] == made["core_items"] == made["labelled"] == 8
    lateral, frontal = made["per_class"]["lateral"], made["per_class"]["frontal"]
    assert (lateral["recall"]["x"], lateral["recall"]["n"]) == (3, 4)
    assert (lateral["precision"]["x"], lateral["precision"]["n"]) == (3, 3)
    assert (frontal["recall"]["x"], frontal["recall"]["n"]) == (3, 3)
    assert (frontal["precision"]["x"], frontal["precision"]["n"]) == (3, 4)
    assert lateral["recall"]["low"] == pytest.approx(0.194120, abs=1e-5)  # binom.test(3, 4)
    assert made["confusion_core"]["lateral"] == {"frontal": 1, "lateral": 3}
    assert made["confusion_core"]["not_chest"] == {"frontal": 1, "lateral": 0}
    # Headers: the 7 view-labelled films all name a view; 3 name the wrong one (films 3,
    # 4 and 7: the model missed film 4's lateral along with its header).
    assert (made["headers"]["wrong"]["x"], made["headers"]["wrong"]["n"]) == (3, 7)
    assert made["headers"]["without_view"] == 0
    assert made["headers"]["model_right_when_disagreeing"]["x"] == 2
    assert (made["unusual"]["caught"]["x"], made["unusual"]["caught"]["n"]) == (1, 1)
    assert made["projection"] == {"measured": False, "note": NO_PROJECTION, "reviewed_frontals": 3}
    assert made["review_load"]["labelled"] == 8
    assert made["review_load"]["reviewers"] == {"rita": 8}
    assert [r["passed"] for r in made["requirements"]] == [True, True, False]
    assert made["decision"] == "no-go"
    assert made["reasons"] == ["projection_accuracy_lb>=0.5: projection_accuracy_lb not measured"]

    json_path, html_path = write_report(made, tmp_path / "out")
    html = html_path.read_text()
    assert NO_PROJECTION in html and "<svg" in html and 'class="decision no-go"' in html
    assert '"decision": "no-go"' in json_path.read_text()


def test_the_projection_is_measured_when_the_answers_carry_it(answered: list[int]) -> None:
    """Answers of a model with a PA/AP head carry p_ap on every frontal (and a projection
    where it is sure enough); the report measures PA/AP on them. (Without the head, all
    null: not measured, the test above.)"""
    with session_scope() as session:
        # The model says PA for films 1 and 2 (the reviewers: PA, AP) and abstains on 3.
        for n, projection, p_ap in zip(
            answered[:3], ("PA", "PA", None), (0.1, 0.15, 0.5), strict=True
        ):
            session.execute(
                text(
                    "UPDATE predictions SET projection = :projection, "
                    "p_ap = :p_ap WHERE instance_id = :n"
                ),
                {"n": n, "projection": projection, "p_ap": p_ap},
            )
    plan_id = _plan("site-c")
    _label_all(plan_id, answered)
    with session_scope() as session:
        made = report_for_plan(
            session, plan_id=plan_id, requirements=[parse_requirement("projection_accuracy>=0.5")]
        )
    projection = made["projection"]
    assert projection["measured"] and projection["without_projection"] == 1
    assert (projection["accuracy"]["x"], projection["accuracy"]["n"]) == (1, 2)
    assert made["requirements"][0]["passed"]
    assert made["decision"] == "go"


def test_the_verbs_say_what_is_wrong(migrated_db: str, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli.main import main

    runner = CliRunner()
    empty = runner.invoke(main, ["acceptance", "plan", "site"])
    assert empty.exit_code == 1 and "no answered films" in empty.output
    unknown = runner.invoke(main, ["acceptance", "report", "nowhere"])
    assert unknown.exit_code == 1 and "no acceptance plan named 'nowhere'" in unknown.output
    bad = runner.invoke(main, ["acceptance", "report", "nowhere", "--require", "recall=1"])
    assert bad.exit_code == 1 and "NAME>=VALUE" in bad.output
    with session_scope() as session:
        version = active_version(session)
        answered_instance(session, root=tmp_path, version=version, index=1)
    made = runner.invoke(
        main,
        [
            "acceptance",
            "plan",
            "site",
            "--seed",
            "4",
            "--lower-bound",
            "0.99",
            "--expected",
            "0.98",
        ],
    )
    assert made.exit_code == 1 and "must be below the expected" in made.output
    made = runner.invoke(main, ["acceptance", "plan", "site", "--seed", "4"])
    assert made.exit_code == 0, made.output
    assert "seed 4" in made.output and "101 per class needed" in made.output
    listed = runner.invoke(main, ["acceptance", "list"])
    assert "site" in listed.output
    reported = runner.invoke(
        main, ["acceptance", "report", "site", "--out", str(tmp_path / "out"), "--exit-status"]
    )
    assert reported.exit_code == 1 and "decision: undecided" in reported.output
    assert (tmp_path / "out" / "report.html").is_file()
