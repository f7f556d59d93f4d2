"""How the command line shows things: values, timestamps, ages, tables, CSV and JSON.

Every verb that prints rows or times goes through here, so a column looks the same
wherever it is shown.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

import click


def format_value(value: Any) -> str:
    """A table cell: empty for None, floats to 4 places."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def when(value: datetime | None) -> str:
    """A listed timestamp to the minute, or '-'."""
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def aware(moment: datetime, now: datetime) -> datetime:
    """``moment`` in ``now``'s zone when the database handed it back naive (SQLite keeps
    UTC without a zone)."""
    return moment.replace(tzinfo=now.tzinfo) if moment.tzinfo is None else moment


def print_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """``rows`` as a rich table of ``columns``, at least 160 characters wide."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(format_value(row[c]) for c in columns))
    Console(width=max(160, Console().width)).print(table)


def echo_json(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    click.echo(json.dumps([{k: r[k] for k in columns} for r in rows], indent=2))


def echo_csv(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    click.echo(buffer.getvalue(), nl=False)
