"""Retraining end to end on real radiographs with labels in a real database."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from cxr_orient.settings import get_settings
from tests.utils.dicom_factory import COVID_CXR, make_dicom, sop_instance_uid

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        grey = image.convert("L")
        grey.thumbnail((512, 512))
        return np.rint(np.asarray(grey, dtype=np.float64) / 255 * 4095).astype(np.uint16)


def _labelled_corpus(root: Path, n_frontal: int, n_lateral: int) -> list[tuple[Path, str]]:
    """Real films wrapped into DICOM, one patient each, with patient ids chosen so the
    fixed evaluation split holds both classes."""
    from training.lifecycle import in_eval_split

    wanted = {"frontal": n_frontal, "lateral": n_lateral}
    files = {c: sorted((COVID_CXR / c).glob("*.jpg"))[: wanted[c]] for c in wanted}
    eval_ids = (f"P{i}" for i in range(10_000) if in_eval_split(f"db:P{i}"))
    train_ids = (f"P{i}" for i in range(10_000) if not in_eval_split(f"db:P{i}"))
    out = []
    for label, paths in files.items():
        for n, src in enumerate(paths):
            patient = next(eval_ids) if n % 4 == 0 else next(train_ids)
            path = root / f"{label}-{n:03d}.dcm"
            make_dicom(
                path,
                _pixels(src),
                patient_id=patient,
                view_position=None,
                study_uid=f"1.2.826.0.1.3680043.10.9.{int(label == 'lateral')}.{n}",
            )
            out.append((path, label))
    return out


@pytest.mark.skipif(not COVID_CXR.is_dir(), reason="needs ../shared/data/covid-cxr")
def test_retrain_gates_promotes_and_refuses_a_worse_model(
    migrated_db: str, configure: Callable[..., None], tmp_path: Path
) -> None:
    from cxr_orient.architectures import build_model
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.labels import import_labels
    from cxr_orient.modelstore import ModelCard, save_checkpoint
    from cxr_orient.registry import current_model, register_checkpoint
    from db import crud
    from db.models import ModelEvent, ModelVersion
    from db.session import session_scope
    from training.lifecycle import challenge_version, retrain
    from worker.pipeline import classify_instances

    corpus = tmp_path / "archive"
    corpus.mkdir()
    files = _labelled_corpus(corpus, n_frontal=40, n_lateral=24)
    configure(
        database_url=migrated_db,
        ingest_root=corpus,
        data_dir=tmp_path / "data",
        model_dir=tmp_path / "models",
        model_path=_untrained_checkpoint(tmp_path, build_model, ModelCard, save_checkpoint),
    )
    report = enqueue_paths([corpus], send=None, settings=get_settings())
    assert len(report.queued) == len(files)
    rows = [
        {"sop_instance_uid": sop_instance_uid(path), "label": label, "source": "test"}
        for path, label in files
    ]
    with session_scope() as session:
        assert import_labels(session, rows) == len(files)

    # The first active model always answers frontal: the candidate must beat it.
    skipped = retrain(get_settings(), min_new_labels=len(files) + 1)
    assert skipped.status == "skipped" and "new label" in skipped.message
    result = retrain(get_settings(), min_new_labels=10, epochs=8)
    assert result.status == "promoted", result.message
    with session_scope() as session:
        active = crud.active_model_version(session)
        assert active is not None and active.name == result.candidate
        assert active.training["highest_label_id"] >= len(files)
        event = session.scalars(
            select(ModelEvent).where(ModelEvent.action == "promote").order_by(ModelEvent.id.desc())
        ).first()
        assert event is not None and event.details["active"] is not None
        assert set(event.details["candidate"]) == {"balanced_accuracy", "lateral_recall", "ece"}
    # No new labels since: the next night does nothing.
    assert retrain(get_settings(), min_new_labels=1).status == "skipped"

    # A deliberately worse model (untrained again) is refused and recorded.
    worse = _untrained_checkpoint(
        tmp_path / "worse", build_model, ModelCard, save_checkpoint, name="worse"
    )
    with session_scope() as session:
        register_checkpoint(session, Path(worse), actor="test", reason="worse")
    decision = challenge_version("worse", actor="test", settings=get_settings())
    assert not decision.promote
    with session_scope() as session:
        worse_row = crud.find_model_version(session, name="worse")
        assert worse_row is not None and worse_row.state == "rejected"
        active = crud.active_model_version(session)
        assert active is not None and active.name == result.candidate
        assert (
            session.scalar(
                select(ModelEvent.action)
                .where(ModelEvent.model_version_id == worse_row.id)
                .order_by(ModelEvent.id.desc())
            )
            == "reject"
        )

    # Workers pick the promoted version up between batches, and say which made each answer.
    new_file = corpus / "new.dcm"
    make_dicom(
        new_file, _pixels(sorted((COVID_CXR / "lateral").glob("*.jpg"))[-1]), patient_id="NEW"
    )
    new = enqueue_paths([new_file], send=None, settings=get_settings())
    assert current_model(get_settings().inference).name == result.candidate
    outcome = classify_instances(new.queued, settings=get_settings())
    assert outcome.done == new.queued and outcome.model_version == result.candidate
    with session_scope() as session:
        assert session.scalar(select(ModelVersion.name).where(ModelVersion.is_active)) == (
            result.candidate
        )


@pytest.mark.skipif(not COVID_CXR.is_dir(), reason="needs ../shared/data/covid-cxr")
def test_an_existing_database_adopts_the_new_shipped_model_through_the_gate(
    migrated_db: str, configure: Callable[..., None], tmp_path: Path
) -> None:
    """A database serving v3 with labels of its own: ``register v4 --challenge`` puts v4
    in service through the gate (the same view figures on the database's evaluation
    split, two more heads), recorded with both sets of figures."""
    from click.testing import CliRunner

    from cli.main import main
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.labels import import_labels
    from cxr_orient.registry import ensure_active_model
    from cxr_orient.settings import SHIPPED_MODEL
    from db import crud
    from db.models import ModelEvent
    from db.session import session_scope

    previous = SHIPPED_MODEL.parent / "compact-invariant-64-v3.keras"
    assert SHIPPED_MODEL.stem == "compact-invariant-64-v4"
    corpus = tmp_path / "archive"
    corpus.mkdir()
    files = _labelled_corpus(corpus, n_frontal=12, n_lateral=8)
    configure(
        database_url=migrated_db,
        ingest_root=corpus,
        data_dir=tmp_path / "data",
        model_path=previous,
    )
    enqueue_paths([corpus], send=None, settings=get_settings())
    with session_scope() as session:
        assert ensure_active_model(session, get_settings().inference).name == previous.stem
        import_labels(
            session,
            [
                {"sop_instance_uid": sop_instance_uid(path), "label": label, "source": "test"}
                for path, label in files
            ],
        )

    out = CliRunner().invoke(
        main,
        [
            "register",
            str(SHIPPED_MODEL),
            "--challenge",
            "--reason",
            "release 0.5",
            "--actor",
            "it-admin",
        ],
    )
    assert out.exit_code == 0, out.output
    with session_scope() as session:
        active = crud.active_model_version(session)
        assert active is not None and active.name == SHIPPED_MODEL.stem
        event = session.scalars(
            select(ModelEvent).where(
                ModelEvent.model_version_id == active.id, ModelEvent.action == "promote"
            )
        ).one()
    assert "adds the PA/AP, chest-or-not head(s)" in event.reason, event.reason
    assert event.details["candidate"] == event.details["active"]  # the same view figures
    assert event.details["active_version"] == previous.stem


def _untrained_checkpoint(
    folder: Path, build_model, ModelCard, save_checkpoint, name: str = "untrained"
) -> str:
    """A deliberately bad model: untrained, its output biased to say 'frontal' always."""
    model = build_model("compact")
    head = model.get_layer("view")
    kernel, _ = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.array([4.0, -4.0])])
    card = ModelCard(name=name, architecture="compact", input_size=256)
    return str(save_checkpoint(model, card, folder))


def test_an_existing_database_adopts_a_new_shipped_model_by_register_and_promote(
    migrated_db: str,
    configure: Callable[..., None],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database serving the previous release's model keeps it until a human moves it."""
    from click.testing import CliRunner

    from cli.main import main
    from cxr_orient.registry import ensure_active_model
    from cxr_orient.settings import SHIPPED_MODEL
    from db import crud
    from db.models import ModelEvent, ModelVersion
    from db.session import session_scope

    # The previous release's model is what the database serves; this release ships another.
    previous = SHIPPED_MODEL.parent / "compact-invariant-64-v3.keras"
    old, new = previous.stem, SHIPPED_MODEL.stem
    assert old != new
    configure(database_url=migrated_db, data_dir=tmp_path / "data", model_path=previous)
    with session_scope() as session:
        assert ensure_active_model(session, get_settings().inference).name == old
    # The new release: CXR_MODEL_PATH unset, the shipped default is the new model.
    monkeypatch.delenv("CXR_MODEL_PATH")
    configure()
    with session_scope() as session:
        # not swapped behind anyone
        assert ensure_active_model(session, get_settings().inference).name == old

    runner = CliRunner()
    out = runner.invoke(
        main, ["register", str(SHIPPED_MODEL), "--reason", "release 0.3", "--actor", "it-admin"]
    )
    assert out.exit_code == 0, out.output
    assert f"registered {new} (candidate)" in out.output
    out = runner.invoke(main, ["promote", new, "--reason", "release 0.3", "--actor", "it-admin"])
    assert out.exit_code == 0, out.output
    with session_scope() as session:
        active = crud.active_model_version(session)
        assert active is not None and active.name == new
        assert active.architecture == "compact_invariant_64_heads3"
        events = session.execute(
            select(ModelVersion.name, ModelEvent.action, ModelEvent.actor)
            .join(ModelVersion, ModelVersion.id == ModelEvent.model_version_id)
            .order_by(ModelEvent.id)
        ).all()
    assert [tuple(e) for e in events][-2:] == [
        (new, "register", "it-admin"),
        (new, "promote", "it-admin"),
    ]

    out = runner.invoke(main, ["rollback", "--reason", "check", "--actor", "it-admin"])
    assert out.exit_code == 0 and f"rolled back to {old}" in out.output, out.output

    # Another file under a registered name is refused, and says so.
    impostor = tmp_path / "impostor"
    impostor.mkdir()
    for suffix in (".keras", ".json"):
        data = SHIPPED_MODEL.with_suffix(suffix).read_bytes()
        (impostor / f"{old}{suffix}").write_bytes(
            data + b"\n" if suffix == ".keras" else data.replace(new.encode(), old.encode())
        )
    card = json.loads((impostor / f"{old}.json").read_text())
    card["sha256"] = ""
    (impostor / f"{old}.json").write_text(json.dumps(card))
    out = runner.invoke(main, ["register", str(impostor / f"{old}.keras"), "--reason", "x"])
    assert out.exit_code != 0 and "already registered with another file" in out.output
