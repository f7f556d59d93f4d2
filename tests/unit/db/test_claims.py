"""db.crud.claim_instances: a batch claimed in one UPDATE ... RETURNING, on SQLite and the
real PostgreSQL, exclusive when workers claim the same rows at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from db import crud
from db.models import InstanceStatus
from db.session import get_engine, session_scope


def _add(count: int, *, first: int = 0) -> list[int]:
    with session_scope() as session:
        study = crud.get_or_create_study(session, study_instance_uid="1.2.9", patient_id="P")
        return [
            crud.add_instance(
                session,
                study=study,
                sop_instance_uid=f"1.2.9.{first + n}",
                series_instance_uid=None,
                file_path=f"/x/{first + n}.dcm",
                file_sha256=f"{first + n:064x}",
                file_size=1,
                modality="CR",
                transfer_syntax_uid=None,
                header_view_position="LL" if n % 2 else None,
            )[0].id
            for n in range(count)
        ]


@contextmanager
def _statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_a_batch_is_claimed_in_one_statement_in_the_order_asked(migrated_db: str) -> None:
    ids = _add(3)
    asked = [ids[2], ids[0], ids[2], ids[1]]
    with session_scope() as session, _statements() as seen:
        claim = crud.claim_instances(
            session, instance_ids=asked, lease_s=20, claim_token="a" * 32, claimed_by="node:1"
        )
    assert seen == ["UPDATE"]  # nothing skipped: no second statement
    assert [c.instance_id for c in claim.claimed] == [ids[2], ids[0], ids[1]]
    assert claim.skipped == [] and claim.unknown == []
    first = claim.claimed[1]
    assert (
        first.file_path,
        first.file_sha256,
        first.header_view,
        first.attempts,
        first.file_purged_at,
        first.target_version_id,
    ) == ("/x/0.dcm", f"{0:064x}", None, 1, None, None)
    assert claim.claimed[0].header_view is None and claim.claimed[2].header_view == "LL"
    with session_scope() as session:
        row = crud.get_instance(session, instance_id=ids[0])
        assert row is not None and row.status == InstanceStatus.processing
        assert row.claim_token == "a" * 32 and row.claimed_by == "node:1"


def test_finished_rows_live_leases_and_unknown_ids_are_skipped(migrated_db: str) -> None:
    queued, held, failed = _add(3)
    with session_scope() as session:
        assert crud.claim_for_processing(
            session, instance_id=held, lease_s=20, claim_token="b" * 32
        )
        assert crud.mark_failed(session, instance_id=failed, error_code="x", error_message="x")
    with session_scope() as session:
        claim = crud.claim_instances(
            session, instance_ids=[failed, 10**9, held, queued], lease_s=20, claim_token="a" * 32
        )
    assert [c.instance_id for c in claim.claimed] == [queued]
    assert claim.skipped == [failed, 10**9, held]
    assert claim.unknown == [10**9]
    with session_scope() as session:  # retried under its own token: the claim holds
        again = crud.claim_instances(
            session, instance_ids=[queued], lease_s=20, claim_token="a" * 32
        )
    assert [(c.instance_id, c.attempts) for c in again.claimed] == [(queued, 2)]


def test_workers_claiming_the_same_rows_at_once_each_get_distinct_rows(migrated_db: str) -> None:
    ids = _add(60)
    tokens = [f"{n}" * 32 for n in range(4)]
    got: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(tokens))

    def claim(token: str, order: list[int]) -> None:
        try:
            start.wait()
            with session_scope() as session:
                taken = crud.claim_instances(
                    session, instance_ids=order, lease_s=60, claim_token=token
                )
            got[token] = [c.instance_id for c in taken.claimed]
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    orders = [ids, ids[::-1], ids[20:] + ids[:20], ids[::2] + ids[1::2]]
    threads = [
        threading.Thread(target=claim, args=(t, o)) for t, o in zip(tokens, orders, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    claimed = [i for token in tokens for i in got[token]]
    assert sorted(claimed) == sorted(ids)  # every row once: no row twice, none lost
    with session_scope() as session:
        for token in tokens:
            assert crud.held_instance_ids(session, claim_token=token, instance_ids=ids) == sorted(
                got[token]
            )
