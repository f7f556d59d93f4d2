"""The lease keeper of a pool process (worker.leases), on SQLite and PostgreSQL: it renews
the claims it holds, re-queues and re-sends claims whose worker stopped renewing them,
and tells the pipeline when its own claim was taken over."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import update

from cxr_orient.settings import get_settings
from db import crud
from db.models import Instance, InstanceStatus, utcnow
from db.session import session_scope
from worker.leases import LeaseKeeper


def _claimed(uid: str, token: str) -> int:
    with session_scope() as session:
        study = crud.get_or_create_study(session, study_instance_uid="1.2.9", patient_id="P")
        row, _ = crud.add_instance(
            session,
            study=study,
            sop_instance_uid=uid,
            series_instance_uid=None,
            file_path=f"/x/{uid}.dcm",
            file_sha256="0" * 64,
            file_size=1,
            modality="CR",
            transfer_syntax_uid=None,
            header_view_position="PA",
        )
        row_id = row.id
    with session_scope() as session:
        assert crud.claim_for_processing(session, instance_id=row_id, lease_s=20, claim_token=token)
    return row_id


def _lapse(*ids: int) -> None:
    with session_scope() as session:
        session.execute(
            update(Instance)
            .where(Instance.id.in_(ids))
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def _row(instance_id: int) -> Instance:
    with session_scope() as session:
        row = crud.get_instance(session, instance_id=instance_id)
        assert row is not None
        return row


def test_keeper_renews_its_own_and_reaps_the_dead_workers(migrated_db: str) -> None:
    sent: list[int] = []

    def send(ids: Sequence[int]) -> int:
        sent.extend(ids)
        return len(ids)

    keeper = LeaseKeeper(get_settings().worker, send)
    mine = _claimed("9.1", "m" * 32)
    dead = _claimed("9.2", "d" * 32)
    with keeper.holding("m" * 32):
        _lapse(mine, dead)  # both late: this process was slow, the other one died
        keeper.tick()
        assert _row(mine).status == InstanceStatus.processing
        renewed_until = _row(mine).lease_expires_at
        assert renewed_until is not None  # SQLite gives it back naive (UTC)
        assert renewed_until.replace(tzinfo=None) > (utcnow() + timedelta(seconds=15)).replace(
            tzinfo=None
        )
        assert not keeper.lost("m" * 32)
        assert _row(dead).status == InstanceStatus.queued and sent == [dead]
        keeper.tick()
        assert sent == [dead], "a lapsed claim is re-sent once"


def test_keeper_reports_a_claim_taken_over(migrated_db: str) -> None:
    keeper = LeaseKeeper(get_settings().worker, None)
    mine = _claimed("9.3", "m" * 32)
    with keeper.holding("m" * 32):
        _lapse(mine)
        other = LeaseKeeper(get_settings().worker, None)  # another worker's reaper got there first
        assert other.reap() == 1
        with session_scope() as session:
            assert crud.claim_for_processing(
                session, instance_id=mine, lease_s=20, claim_token="o" * 32
            )
        keeper.tick()
        assert keeper.lost("m" * 32)
        assert _row(mine).claim_token == "o" * 32
    assert not keeper.lost("m" * 32)


def test_work_a_broker_lost_is_taken_for_resending_once(migrated_db: str) -> None:
    """db.crud.take_queued_for_resend, what the broker watch calls: queued rows from
    before the loss are taken once (two workers noticing at once share them), a claimed
    row and a row queued after the cut-off are left alone."""
    with session_scope() as session:
        study = crud.get_or_create_study(session, study_instance_uid="1.2.9", patient_id="P")
        ids = []
        for uid in ("8.1", "8.2", "8.3"):
            row, _ = crud.add_instance(
                session,
                study=study,
                sop_instance_uid=uid,
                series_instance_uid=None,
                file_path=f"/x/{uid}.dcm",
                file_sha256="0" * 64,
                file_size=1,
                modality="CR",
                transfer_syntax_uid=None,
                header_view_position="PA",
            )
            ids.append(row.id)
    claimed = _claimed("8.4", "c" * 32)
    with session_scope() as session:
        session.execute(
            update(Instance)
            .where(Instance.id.in_([*ids[:2], claimed]))
            .values(updated_at=utcnow() - timedelta(seconds=60))
        )
    cutoff = utcnow() - timedelta(seconds=10)
    with session_scope() as session:
        first = crud.take_queued_for_resend(session, queued_before=cutoff)
    with session_scope() as session:
        second = crud.take_queued_for_resend(session, queued_before=cutoff)
    assert first == sorted(ids[:2]), "the two queued before the cut-off, not the claimed one"
    assert second == [], "taken once"
