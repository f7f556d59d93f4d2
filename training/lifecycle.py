"""Model lifecycle: retrain on labels from the database, and challenge the model in service.

A candidate (retrained here, or registered from elsewhere) is evaluated beside the active
model on the fixed evaluation split and promoted only when :func:`training.gate.gate`
says it wins; every decision is recorded in ``model_events`` with the figures behind it.
Human promotion and rollback are :func:`cxr_orient.registry.promote` and
:func:`~cxr_orient.registry.rollback`.

The retrain's candidate is a view network trained on the labels or, while the model in
service has a PA/AP or chest-or-not head, that model with the head(s) refitted: PA/AP on
the labelled frontals' projections (:mod:`training.head_refit`), chest-or-not on the
films reviewers labelled ``not_chest`` (:mod:`training.scope_refit`, from
:data:`~training.scope_refit.MIN_NOT_CHEST` of them outside the evaluation split): a
view network would lose the heads, and the gate refuses a candidate that lacks one the
model in service has.

The evaluation split is fixed: a patient belongs to it when a salted hash of
its identifier falls under ``EVAL_FRACTION``. Membership depends on nothing
but the patient, so it never moves as labels accumulate, and every candidate
and the model in service are compared on the same patients.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text
from sqlalchemy.orm import Session

from cxr_orient import LABELS
from cxr_orient.dicomnet.retention import ensure_not_purged
from cxr_orient.errors import CxrError, ModelError
from cxr_orient.imaging import MODEL_INPUT_SIZE
from cxr_orient.intake import load_checked_image
from cxr_orient.settings import InferenceSettings, IntakeSettings, Settings
from db import crud
from db.models import VIEW_LABELS, ModelVersion, OrientationLabel
from db.session import get_engine, session_scope
from training.gate import GateDecision, gate, heads_of
from training.projection import ProjectionSet
from training.scope_refit import ScopeSet

logger = logging.getLogger(__name__)

EVAL_SALT = "cxr-orient/fixed-eval/v1"
EVAL_FRACTION = 0.2
_ADVISORY_LOCK_KEY = 0x0C0F_0A11
#: The retrain's default ``architecture``: refit the PA/AP head of the model in service
#: when it has one, else train :data:`DEFAULT_RETRAIN_NETWORK`.
AUTO = "auto"
DEFAULT_RETRAIN_NETWORK = "compact_invariant_64"


def in_eval_split(patient_key: str, *, fraction: float = EVAL_FRACTION) -> bool:
    digest = hashlib.sha256(f"{EVAL_SALT}:{patient_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


# --- the training set -------------------------------------------------------------------


@dataclass
class LabelledSet:
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    highest_label_id: int = 0
    #: Instances whose latest label says they are no chest radiograph (decoded or not):
    #: never trained on as a view, only by the chest-or-not head's refit.
    not_chest: int = 0
    #: A frontal's ``PA`` or ``AP`` when the labeller said which (``labels.projection``).
    projections: list[str | None] = field(default_factory=list)
    #: The decoded not-chest films, their files and patients (index-aligned).
    not_chest_images: list[np.ndarray] = field(default_factory=list)
    not_chest_files: list[str] = field(default_factory=list)
    not_chest_patients: list[str] = field(default_factory=list)


def labelled_images_from_db(session: Session, intake: IntakeSettings) -> LabelledSet:
    """Decode the image behind every labelled instance, checked against its hash.

    A file that is missing, purged from the spool, outside the ingest root, changed or
    undecodable is reported in ``problems`` and not used. Films labelled ``not_chest``
    go to ``not_chest_*`` (the chest-or-not head's), never to the view's lists.
    """
    out = LabelledSet()
    for instance, study, label in crud.latest_labels(session):
        out.highest_label_id = max(out.highest_label_id, label.id)
        is_view = label.label in VIEW_LABELS
        if not is_view:  # "not a chest radiograph" (a reviewer's)
            out.not_chest += 1
        try:
            ensure_not_purged(instance)
            image = load_checked_image(
                instance.file_path,
                expected_sha256=instance.file_sha256,
                intake=intake,
                size=MODEL_INPUT_SIZE,
            )
        except CxrError as exc:
            out.problems.append(f"{instance.sop_instance_uid}: {exc.code}: {exc}")
            continue
        patient = (
            study.patient_id
            if study and study.patient_id
            else study.study_instance_uid
            if study
            else str(instance.sop_instance_uid)
        )
        if not is_view:
            out.not_chest_images.append(image)
            out.not_chest_files.append(instance.file_path)
            out.not_chest_patients.append(f"db:{patient}")
            continue
        out.images.append(image)
        out.labels.append(LABELS.index(OrientationLabel(label.label).value))
        out.files.append(instance.file_path)
        out.patients.append(f"db:{patient}")
        out.projections.append(label.projection if label.label == "frontal" else None)
    return out


# --- challenge: candidate vs active on the same patients ---------------------------------


def challenge(
    session: Session,
    *,
    candidate: ModelVersion,
    test: Any,
    actor: str,
    inference: InferenceSettings,
    seed: int = 0,
    candidate_metrics: Mapping[str, Any] | None = None,
    projection_test: ProjectionSet | None = None,
    scope_test: ScopeSet | None = None,
) -> GateDecision:
    """Evaluate ``candidate`` and the active model on ``test`` (the fixed evaluation
    split), record the decision with both sets of figures, and promote on a win.

    With ``projection_test`` (the split's frontals whose projection is labelled) and a
    PA/AP head on both models, their PA/AP answers there are compared too, as the
    service gives them (``CXR_PROJECTION_THRESHOLD``, when set, for both). With
    ``scope_test`` (the split's view-labelled chest films and not_chest-labelled films)
    and the chest-or-not head on both, which of them each flags as unusual is compared
    too."""
    from cxr_orient.registry import ensure_active_model, load_version
    from training.evaluate import evaluate
    from training.projection import predicted_projection_figures
    from training.scope_refit import predicted_scope_figures

    serving = ensure_active_model(session, inference)
    if serving.id == candidate.id:
        raise ModelError(f"{candidate.name!r} is already the active model")

    def figures(version: ModelVersion) -> dict[str, Any]:
        return evaluate(
            load_version(version, inference).classifier,
            test.images,
            test.labels,
            groups=test.patients,
            resamples=200,
            seed=seed,
        )

    def projection(version: ModelVersion) -> dict[str, Any] | None:
        if projection_test is None or not len(projection_test):
            return None
        return predicted_projection_figures(
            load_version(version, inference).classifier, projection_test
        )

    def scope(version: ModelVersion) -> dict[str, Any] | None:
        if scope_test is None or not len(scope_test):
            return None
        return predicted_scope_figures(load_version(version, inference).classifier, scope_test)

    serving_heads, candidate_heads = (
        heads_of(serving.architecture),
        heads_of(candidate.architecture),
    )
    decision = gate(
        candidate_metrics or figures(candidate),
        figures(serving),
        lost_heads=sorted(serving_heads - candidate_heads),
        gained_heads=sorted(candidate_heads - serving_heads),
        candidate_projection=projection(candidate),
        active_projection=projection(serving),
        candidate_scope=scope(candidate),
        active_scope=scope(serving),
    )
    details = {
        "candidate": decision.candidate,
        "active": decision.active,
        "candidate_projection": decision.candidate_projection,
        "active_projection": decision.active_projection,
        "candidate_scope": decision.candidate_scope,
        "active_scope": decision.active_scope,
        "active_version": serving.name,
        "eval_images": len(test),
        "eval_patients": len(set(test.patients)),
        "reasons": decision.reasons,
    }
    reason = "; ".join(decision.reasons)
    if decision.promote:
        crud.activate_model_version(
            session,
            version=candidate,
            actor=actor,
            reason=reason,
            action="promote",
            details=details,
        )
    else:
        crud.reject_model_version(
            session, version=candidate, actor=actor, reason=reason, details=details
        )
    logger.info(
        "gate: %s %s (%s)", candidate.name, "promoted" if decision.promote else "rejected", reason
    )
    return decision


def eval_split_from_db(
    session: Session, intake: IntakeSettings
) -> tuple[Any, ProjectionSet, ScopeSet]:
    """The labelled images of the fixed evaluation split's patients, from the database;
    those of them that are frontals with a labelled projection; and the split's chest
    films with its films labelled not_chest (for the chest-or-not head)."""
    from training.data import LabelledImages
    from training.head_refit import projection_set
    from training.scope_refit import scope_set

    collected = labelled_images_from_db(session, intake)
    keep = [i for i, p in enumerate(collected.patients) if in_eval_split(p)]
    if not keep:
        raise ModelError("no labelled image belongs to the fixed evaluation split yet")
    images = [collected.images[i] for i in keep]
    patients = [collected.patients[i] for i in keep]
    non = [i for i, p in enumerate(collected.not_chest_patients) if in_eval_split(p)]
    return (
        LabelledImages(
            images=np.stack(images),
            labels=np.asarray([collected.labels[i] for i in keep], dtype=np.int64),
            files=[collected.files[i] for i in keep],
            patients=patients,
        ),
        projection_set(images, [collected.projections[i] for i in keep], patients),
        scope_set(
            images,
            patients,
            [collected.not_chest_images[i] for i in non],
            [collected.not_chest_patients[i] for i in non],
        ),
    )


def challenge_version(name: str, *, actor: str, settings: Settings) -> GateDecision:
    """Gate a registered candidate against the active model (e.g. one trained elsewhere)."""
    with session_scope() as session:
        candidate = crud.find_model_version(session, name=name)
        if candidate is None:
            raise ModelError(f"no model version named {name!r}")
        test, projection_test, scope_test = eval_split_from_db(session, settings.intake)
        return challenge(
            session,
            candidate=candidate,
            test=test,
            actor=actor,
            inference=settings.inference,
            projection_test=projection_test,
            scope_test=scope_test,
        )


# --- retrain ------------------------------------------------------------------------------


@dataclass
class RetrainResult:
    status: str  # "skipped", "promoted", "rejected"
    message: str
    candidate: str | None = None
    decision: GateDecision | None = None
    problems: list[str] = field(default_factory=list)


@contextmanager
def retrain_lock(data_dir: Path) -> Iterator[bool]:
    """Held while a retrain runs: a file lock on this host and, on PostgreSQL, an
    advisory lock, so two retrains never run at once anywhere."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "retrain.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        engine = get_engine()
        if engine.dialect.name != "postgresql":
            yield True
            return
        with engine.connect() as conn:
            got = conn.execute(
                text("SELECT pg_try_advisory_lock(:k)"), {"k": _ADVISORY_LOCK_KEY}
            ).scalar_one()
            try:
                yield bool(got)
            finally:
                if got:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_LOCK_KEY})
                    conn.commit()


def retrain(
    settings: Settings,
    *,
    min_new_labels: int = 50,
    extra_dir: Path | None = None,
    manifest: Path | None = None,
    architecture: str = AUTO,
    epochs: int = 200,
    min_epochs: int | None = None,
    seed: int = 0,
    actor: str = "retrain",
) -> RetrainResult:
    """Make a candidate from every label so far, gate it against the active model on
    the fixed evaluation split, and promote it only if it wins.

    ``architecture`` :data:`AUTO` (the default): when the model in service has a PA/AP
    or chest-or-not head, the candidate is that model with the heads the labels can
    refit refitted (:func:`training.head_refit.refit_plan`: PA/AP on the labelled
    frontals, chest-or-not on the films labelled not_chest; nothing else changes, so it
    keeps every head); otherwise a ``compact_invariant_64`` view network is trained. A
    network name trains that network; ``refit-projection`` asks for the refit.

    The view network's recipe is the shipped model's: ``epochs`` of cosine-decayed
    learning rate, and early stopping only from ``min_epochs`` (default 70 % of
    ``epochs``). Stopped early while the rate is still high, a run ends on a weak model:
    with 40 epochs and early stopping from epoch 10, a retrain on the 614 covid-cxr
    films here stopped at epoch 24 with balanced accuracy 0.875 and was (rightly)
    refused by the gate.
    """
    with retrain_lock(settings.storage.data_dir) as acquired:
        if not acquired:
            return RetrainResult("skipped", "another retrain is running")
        return _retrain_locked(
            settings,
            min_new_labels=min_new_labels,
            extra_dir=extra_dir,
            manifest=manifest,
            architecture=architecture,
            epochs=epochs,
            min_epochs=int(0.7 * epochs) if min_epochs is None else min_epochs,
            seed=seed,
            actor=actor,
        )


@dataclass
class _Collected:
    """Every labelled film the retrain may use: the database's and the folder's."""

    images: list[np.ndarray]
    labels: list[int]
    files: list[str]
    patients: list[str]
    projections: list[str | None]


def _with_folder(
    collected: LabelledSet, extra_dir: Path | None, manifest: Path | None
) -> _Collected:
    from training.data import load_labelled_folder
    from training.projection import read_projection_manifest

    out = _Collected(
        list(collected.images),
        list(collected.labels),
        list(collected.files),
        list(collected.patients),
        list(collected.projections),
    )
    if extra_dir is not None:
        folder = load_labelled_folder(extra_dir, manifest=manifest)
        said = read_projection_manifest(manifest) if manifest is not None else {}
        out.images += list(folder.images)
        out.labels += [int(v) for v in folder.labels]
        out.files += folder.files
        out.patients += [f"folder:{p}" for p in folder.patients]
        out.projections += [
            said.get(f) if LABELS[int(v)] == "frontal" else None
            for f, v in zip(folder.files, folder.labels, strict=True)
        ]
    return out


def _retrain_locked(
    settings: Settings,
    *,
    min_new_labels: int,
    extra_dir: Path | None,
    manifest: Path | None,
    architecture: str,
    epochs: int,
    min_epochs: int,
    seed: int,
    actor: str,
) -> RetrainResult:
    from cxr_orient.registry import ensure_active_model, register_checkpoint
    from training.data import LabelledImages
    from training.head_refit import REFIT_PROJECTION, has_projection_head
    from training.scope_refit import has_scope_head

    with session_scope() as session:
        serving = ensure_active_model(session, settings.inference)
        serving_path, serving_sha256 = Path(serving.file_path), serving.sha256
        serving_architecture, serving_name = serving.architecture, serving.name
        # Labels already seen by any earlier candidate (promoted or not) are not new:
        # a rejected candidate must not make every night retrain on the same data.
        seen = crud.highest_trained_label_id(session)
        new_labels = crud.count_labels_after(session, label_id=seen)
        if new_labels < min_new_labels:
            return RetrainResult(
                "skipped",
                f"{new_labels} new label(s) since the last training run "
                f"(need {min_new_labels}); nothing to do",
            )
        collected = labelled_images_from_db(session, settings.intake)
    for problem in collected.problems:
        logger.warning("not trained on: %s", problem)
    refittable = has_projection_head(serving_architecture) or has_scope_head(serving_architecture)
    if architecture == AUTO:
        architecture = REFIT_PROJECTION if refittable else DEFAULT_RETRAIN_NETWORK
    if architecture == REFIT_PROJECTION and not refittable:
        return RetrainResult(
            "skipped",
            f"the model in service ({serving_architecture}) has no PA/AP or chest-or-not "
            "head to refit",
        )

    films = _with_folder(collected, extra_dir, manifest)
    if len(films.images) < 10 or len(set(films.labels)) < 2:
        return RetrainResult(
            "skipped",
            f"only {len(films.images)} usable labelled images (both classes needed)",
            problems=collected.problems,
        )
    data = LabelledImages(
        images=np.stack(films.images),
        labels=np.asarray(films.labels, dtype=np.int64),
        files=films.files,
        patients=films.patients,
    )
    eval_mask = np.array([in_eval_split(p) for p in films.patients])
    test = data.subset(np.flatnonzero(eval_mask))
    if len(set(test.labels.tolist())) < 2:
        return RetrainResult(
            "skipped",
            "the fixed evaluation split does not yet hold both classes; label more patients",
            problems=collected.problems,
        )
    extra_training = {
        "labels_used": len(collected.labels),
        "highest_label_id": collected.highest_label_id,
        "split_seed": seed,
        "eval_salt": EVAL_SALT,
        "extra_dir": str(extra_dir) if extra_dir else None,
        "images_not_trained_on": len(collected.problems),
    }
    out_dir = settings.storage.effective_model_dir
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    candidate_metrics: dict[str, Any] | None = None
    scope_test: ScopeSet | None = None
    if architecture == REFIT_PROJECTION:
        from training.head_refit import refit_candidate, refit_name, refit_plan

        plan = refit_plan(
            films.images,
            films.projections,
            films.patients,
            collected.not_chest_images,
            collected.not_chest_patients,
            architecture=serving_architecture,
            in_eval=in_eval_split,
            seed=seed,
        )
        if plan.projection is None and plan.scope is None:
            return RetrainResult(
                "skipped",
                "nothing to refit: " + "; ".join(plan.reasons),
                problems=collected.problems,
            )
        for reason in plan.reasons:
            logger.info("retrain: %s", reason)
        what = "-".join(
            part
            for part, done in (("pa-ap", plan.projection), ("scope", plan.scope))
            if done is not None
        )
        name = refit_name(serving_name, stamp, what=what)
        refit = refit_candidate(
            serving_path,
            base_sha256=serving_sha256,
            projection=plan.projection,
            scope=plan.scope,
            name=name,
            out_dir=out_dir,
            seed=seed,
            extra_training={
                **extra_training,
                "projection_labels_used": plan.projection_labels,
                "not_chest_labels": collected.not_chest,
                "not_chest_films_used": plan.not_chest_films,
                "refitted": what,
                "not_refitted": plan.reasons,
            },
        )
        checkpoint, projection_test, scope_test = refit.checkpoint, plan.held_out, plan.scope_test
    else:
        from training.candidate import train_and_evaluate
        from training.data import Split, grouped_stratified_split

        rest = np.flatnonzero(~eval_mask)
        inner = grouped_stratified_split(
            data.labels[rest],
            [films.patients[i] for i in rest],
            fractions=(0.85, 0.15, 0.0),
            seed=seed,
        )
        split = Split(train=rest[inner.train], val=rest[inner.val], test=np.flatnonzero(eval_mask))
        name = f"{architecture}-{stamp}"
        run = train_and_evaluate(
            data,
            split,
            name=name,
            out_dir=out_dir,
            report_dir=out_dir / f"{name}-report",
            architecture=architecture,
            epochs=epochs,
            min_epochs=min_epochs,
            seed=seed,
            resamples=200,
            imagenet_weights_dir=settings.training.imagenet_weights_dir,
            extra_training=extra_training,
        )
        checkpoint, candidate_metrics, projection_test = run.checkpoint, run.test_metrics, None
    with session_scope() as session:
        candidate = register_checkpoint(
            session, checkpoint, actor=actor, reason="nightly retrain candidate"
        )
        decision = challenge(
            session,
            candidate=candidate,
            test=test,
            actor=actor,
            inference=settings.inference,
            seed=seed,
            candidate_metrics=candidate_metrics,
            projection_test=projection_test,
            scope_test=scope_test,
        )
    status = "promoted" if decision.promote else "rejected"
    return RetrainResult(
        status,
        f"{name} {status}: {'; '.join(decision.reasons)}",
        candidate=name,
        decision=decision,
        problems=collected.problems,
    )
