"""``cxr-orient user``: the people who log in to the review page."""

from __future__ import annotations

import sys

import click

from cli.formatting import when


@click.group()
def user() -> None:
    """People who log in to the review page (roles: reviewer, auditor, admin)."""


def _password_from(stdin: bool, none: bool) -> str | None:
    if none:
        return None
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


@user.command("create")
@click.argument("username")
@click.option(
    "--role",
    type=click.Choice(["reviewer", "auditor", "admin"]),
    default="reviewer",
    show_default=True,
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of stdin (scripts) instead of a prompt.",
)
@click.option(
    "--no-password",
    is_flag=True,
    help="No password: single sign-on only (CXR_TRUSTED_USER_HEADER).",
)
def user_create(username: str, role: str, password_stdin: bool, no_password: bool) -> None:
    """Create user USERNAME (asks for a password of at least 12 characters)."""
    from cxr_orient.users import UserError, create_user
    from db.session import session_scope

    password = _password_from(password_stdin, no_password)
    try:
        with session_scope() as session:
            made = create_user(session, username=username, role=role, password=password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {made.username} ({made.role.value}) created")


@user.command("list")
def user_list() -> None:
    """Every user: name, role, password set or not, last login, disabled."""
    from cxr_orient.users import list_users
    from db.session import session_scope

    with session_scope() as session:
        for info in list_users(session):
            click.echo(
                f"{info.username:32s} {info.role.value:9s} "
                f"{'password' if info.has_password else 'sso-only':9s} "
                f"last login {when(info.last_login_at)}"
                f"{'  DISABLED ' + when(info.disabled_at) if info.disabled_at else ''}"
            )


@user.command("disable")
@click.argument("username")
def user_disable(username: str) -> None:
    """Disable USERNAME: no more logins, its sessions end; its labels keep its name."""
    from cxr_orient.users import UserError, disable_user
    from db.session import session_scope

    try:
        with session_scope() as session:
            disable_user(session, username=username)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"disabled {username}")


@user.command("set-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read it from the first line of stdin.")
@click.option("--no-password", is_flag=True, help="Remove it (single sign-on only).")
def user_set_password(username: str, password_stdin: bool, no_password: bool) -> None:
    """Set USERNAME's password; the user's open sessions end."""
    from cxr_orient.users import UserError, set_password
    from db.session import session_scope

    password = _password_from(password_stdin, no_password)
    try:
        with session_scope() as session:
            set_password(session, username=username, password=password)
    except UserError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {username} {'removed' if password is None else 'set'}")
