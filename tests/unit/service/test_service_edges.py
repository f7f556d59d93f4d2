"""The service's edges as rules: the client's address (service/clients.py), every integer
a route takes from its URL bounded to what the database holds (service.deps.DbInt), the
body limits of each route (service/limits.py). Over TCP: tests/integration/
test_http_security.py."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from annotated_types import Interval
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from cxr_orient.settings import Settings
from service.app import create_app
from service.clients import forwarded_client
from service.deps import MAX_DB_INT
from service.limits import limits_for

PROXIES = [ipaddress.ip_network("10.0.0.5"), ipaddress.ip_network("10.1.0.0/16")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", ["10.0.0.5"], "127.0.0.1"),  # not a proxy: the header is not read
        ("192.0.2.7", ["198.51.100.1"], "192.0.2.7"),
        ("10.0.0.5", [], "10.0.0.5"),  # a proxy without the header: itself
        ("10.0.0.5", ["198.51.100.1"], "198.51.100.1"),
        ("10.0.0.5", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # what the client wrote left
        ("10.0.0.5", ["6.6.6.6", "198.51.100.1"], "198.51.100.1"),  # two header lines
        ("10.0.0.5", ["198.51.100.1, 10.1.2.3"], "198.51.100.1"),  # a second proxy skipped
        ("10.0.0.5", ["10.1.2.3, 10.1.2.4"], "10.1.2.3"),  # proxies all the way: the leftmost
        ("10.0.0.5", ["198.51.100.1, not-an-address"], "10.0.0.5"),  # garbage stops the walk
        ("10.0.0.5", ["2001:db8::1"], "2001:db8::1"),
        ("::ffff:10.0.0.5", ["198.51.100.1"], "198.51.100.1"),  # dual-stack socket
    ],
    ids=[
        "untrusted-peer",
        "untrusted-other",
        "proxy-alone",
        "proxy",
        "forged-left",
        "two-lines",
        "chain",
        "all-proxies",
        "garbage",
        "ipv6",
        "ipv4-mapped",
    ],
)
def test_forwarded_client(peer: str, forwarded: list[str], client: str) -> None:
    assert forwarded_client(peer, forwarded, PROXIES) == client


def test_every_integer_of_a_url_is_bounded_to_the_database(
    configure: Callable[..., None], tmp_path: Path
) -> None:
    """A new route taking ``int`` from its path or query fails here until it uses DbInt."""
    configure(data_dir=tmp_path)
    unbounded = []
    for route in create_app().routes:
        if not isinstance(route, APIRoute):
            continue
        for param in (*route.dependant.path_params, *route.dependant.query_params):
            if param.field_info.annotation is not int:
                continue
            bounds = [m for m in param.field_info.metadata if isinstance(m, Interval)]
            upper = bounds[0].le if bounds else None
            if not isinstance(upper, int) or upper > MAX_DB_INT:
                unbounded.append(f"{route.path} {param.name}")
    assert unbounded == []


def test_the_limits_of_each_route() -> None:
    settings = Settings(
        stow_max_request_mb=10, http_max_body_kb=8, http_body_timeout_s=5, stow_body_timeout_s=60
    )
    assert limits_for("/dicom-web/studies", settings).max_bytes == 10 << 20
    assert limits_for("/dicom-web/studies/1.2", settings).timeout_s == 60
    for path in ("/login", "/api/v1/review/items/1/label", "/admin/users", "/"):
        limits = limits_for(path, settings)
        assert (limits.kind, limits.max_bytes, limits.timeout_s) == ("form", 8 << 10, 5)


def test_an_unforeseen_error_is_500_and_logged_without_its_message(
    configure: Callable[..., None], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A database error's message quotes its parameters (what someone typed): the last
    resort (service.edge) logs the type and the frames only."""
    configure(data_dir=tmp_path)
    app = create_app()

    @app.get("/boom")
    def boom(typed: str) -> None:
        raise ValueError(f"value {typed!r} refused")  # as a driver quotes a parameter

    with TestClient(app, raise_server_exceptions=True) as client:
        answer = client.get("/boom?typed=SECRETTYPED")
    assert answer.status_code == 500 and "SECRETTYPED" not in answer.text
    assert "ValueError" in caplog.text and "in boom" in caplog.text, "type and frames"
    assert "SECRETTYPED" not in caplog.text
