"""``cxr-orient corrections``: corrected images and rejection notes back to PACS (IHE
IOCM, CXR_CORRECTION_DESTINATIONS): the audit list, a correction an operator confirms,
and the reversal of one (a rejection note of its replacement)."""

from __future__ import annotations

import click

from cli.formatting import echo_json, print_table
from cxr_orient.settings import get_settings

COLUMNS = (
    "id",
    "action",
    "instance_id",
    "faults",
    "rotation",
    "mirrored",
    "view",
    "decided_via",
    "decided_by",
    "decided_at",
    "reverses_id",
    "pending",
    "sent",
    "failed",
    "delivered_at",
)


@click.group()
def corrections() -> None:
    """Corrections back to PACS: a corrected replacement and a rejection note of the
    original (docs/dicom.md; how to turn them on safely: docs/operations.md)."""


@corrections.command("list")
@click.option(
    "--instance", "instance_id", type=int, default=None, help="Only this instance's corrections."
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.option(
    "--uids", is_flag=True, help="Add the original's, the replacement's and the note's UIDs."
)
def corrections_list(instance_id: int | None, fmt: str, uids: bool) -> None:
    """Every correction and reversal, newest first: what, why, who or which rule, when,
    and its delivery (delivered_at: when its last outbox row was sent)."""
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        rows = [r.__dict__ for r in crud.correction_rows(session, instance_id=instance_id)]
    columns = COLUMNS + (
        ("original_sop_instance_uid", "replacement_sop_instance_uid", "rejection_note_uid")
        if uids
        else ()
    )
    (echo_json if fmt == "json" else print_table)(rows, columns)


@corrections.command("send")
@click.argument("instance_id", type=int)
@click.option(
    "--by",
    "decided_by",
    required=True,
    help="Who confirmed the fault (recorded, and written in the objects).",
)
def corrections_send(instance_id: int, decided_by: str) -> None:
    """Correct INSTANCE_ID from its current answer, as confirmed by --by (what the review
    page's key does, without the label)."""
    from cxr_orient.dicomnet.corrections.decisions import correct_instance
    from cxr_orient.errors import CorrectionError
    from db.session import session_scope

    try:
        with session_scope() as session:
            found = correct_instance(
                session,
                instance_id=instance_id,
                via="cli",
                decided_by=decided_by,
                corrections=get_settings().corrections,
            )
    except CorrectionError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"correction {found} recorded; the workers' outbox sends it")


@corrections.command("reverse")
@click.argument("correction_id", type=int)
@click.option("--by", "decided_by", required=True, help="Who reverses it (recorded).")
@click.option("--reason", required=True, help="Why (recorded, and written in the note).")
def corrections_reverse(correction_id: int, decided_by: str, reason: str) -> None:
    """Undo correction CORRECTION_ID: a rejection note of its replacement goes where the
    correction went. The original stays rejected in an IOCM archive until the archive's
    own restore (docs/operations.md)."""
    from cxr_orient.dicomnet.corrections.decisions import reverse_correction
    from cxr_orient.errors import CorrectionError
    from db.session import session_scope

    try:
        with session_scope() as session:
            found = reverse_correction(
                session, correction_id=correction_id, decided_by=decided_by, reason=reason
            )
    except CorrectionError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"reversal {found} of correction {correction_id} recorded; the workers' "
        "outbox sends its rejection note"
    )
