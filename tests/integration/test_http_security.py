"""Issue 19, the HTTP service's findings, against the real `cxr-orient serve` (uvicorn on
a TCP port, PostgreSQL): httpx for what a browser or a script sends, raw sockets for what
only an attacker sends (a lying Content-Length, a chunked flood, a trickled body, headers
never finished). Each test failed on the service as it was; the figures it measures are
printed (`pytest -s`) and quoted in docs/security.md.

One server for the module (starting one costs seconds on a shared box), with short
deadlines and a small connection cap so that the slow-request tests finish quickly.
"""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from db.models import Instance, Study, User
from db.session import make_engine
from tests.utils.env import temporary_pg_database
from tests.utils.services import serving
from tests.utils.worker import REPO, run_cli, worker_env

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 48
MAX_PER_CLIENT = 16
HUGE = "99999999999999999999"  # over int64
MARK = "TYPEDMARK"  # typed into fields: must never reach the log
SAMPLE = REPO / "cxr_orient" / "samples" / "study1" / "frontal.dcm"
SAMPLE_2 = REPO / "cxr_orient" / "samples" / "study2" / "frontal.dcm"


@dataclass
class Server:
    base: str
    port: int
    log: Path
    database_url: str
    stow_token: str
    review_token: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _user(env: dict[str, str], name: str, role: str, password: str | None) -> None:
    args = ["user", "create", name, "--role", role]
    args += ["--password-stdin"] if password else ["--no-password"]
    made = subprocess.run(
        [sys.executable, "-m", "cli", *args],
        input=(password or "") + "\n",
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr


def _token(env: dict[str, str], name: str, scope: str) -> str:
    made = run_cli("token", "create", name, "--scope", scope, env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from tests.utils.env import migrate_from_template

    tmp = tmp_path_factory.mktemp("http-security")
    with temporary_pg_database() as url:
        migrate_from_template(url)
        env = worker_env(
            database_url=url,
            ingest_root=tmp,
            data_dir=tmp / "data",
            trusted_user_header="X-Remote-User",
            trusted_proxies="10.0.0.5",
            http_header_timeout_s=HEADER_TIMEOUT_S,
            http_body_timeout_s=BODY_TIMEOUT_S,
            stow_body_timeout_s=BODY_TIMEOUT_S,
            http_max_connections=MAX_CONNECTIONS,
            http_max_connections_per_client=MAX_PER_CLIENT,
            study_quiet_s=3600,
        )
        env.pop("CXR_BROKER_URL", None)
        _user(env, "carol", "admin", None)  # single sign-on only
        _user(env, "alice", "reviewer", PASSWORD)
        _user(env, "audrey", "auditor", PASSWORD)
        stow, review = _token(env, "pacs", "stow"), _token(env, "script", "review")
        log = tmp / "serve.log"
        with serving(env, log) as base:
            yield Server(base, int(base.rsplit(":", 1)[1]), log, url, stow, review)


def _csrf(client: httpx.Client, base: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get(f"{base}/login").text)
    assert found is not None
    return found.group(1)


def _log_in(
    client: httpx.Client,
    base: str,
    name: str,
    password: str = PASSWORD,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.post(
        f"{base}/login",
        headers=headers,
        data={"username": name, "password": password, "csrf_token": _csrf(client, base)},
    )


def _status_line(sock: socket.socket, timeout: float) -> int | None:
    """The status of the answer on ``sock``; None: closed without one. Raises
    TimeoutError when nothing comes within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1 ") else None


# --- High: single sign-on cannot be forged with X-Forwarded-For ----------------------


def test_forwarded_for_from_this_host_does_not_forge_single_sign_on(server: Server) -> None:
    forged = {"X-Remote-User": "carol", "X-Forwarded-For": "10.0.0.5", "Accept": "text/html"}
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        page = client.get(f"{server.base}/admin/users", headers=forged)
        assert page.status_code == 303, f"forged SSO got {page.status_code}"
        assert page.headers["location"].startswith("/login")
        made = client.post(
            f"{server.base}/admin/users",
            headers=forged,
            data={
                "username": "eve",
                "role": "admin",
                "password": PASSWORD,
                "csrf_token": _csrf(client, server.base),
            },
        )
        assert made.status_code == 303 and made.headers["location"].startswith("/login")
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            names = set(conn.scalars(select(User.username)))
    finally:
        engine.dispose()
    assert "eve" not in names
    assert "X-Remote-User header from an untrusted address ignored (127.0.0.1)" in (
        server.log_text()
    )


# --- Medium: the login rate limit holds whatever X-Forwarded-For says ------------------


def test_login_rate_limit_is_not_reset_by_a_rotating_forwarded_for(server: Server) -> None:
    statuses = []
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        for i in range(40):
            answer = _log_in(
                client,
                server.base,
                "target",
                "wrong password " + str(i),
                headers={"X-Forwarded-For": f"203.0.113.{i}"},
            )
            statuses.append(answer.status_code)
    print(
        f"40 wrong passwords, rotating X-Forwarded-For: {statuses.count(401)} x 401, "
        f"{statuses.count(429)} x 429"
    )
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}


# --- Medium: bodies bounded before parsing, slow requests cut --------------------------


def test_a_declared_huge_form_is_refused_before_its_body(server: Server) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 629145600\r\n\r\n--b\r\n"
        )  # 600 MB announced
        status = _status_line(sock, timeout=10)
    elapsed = time.monotonic() - started
    print(f"600 MB Content-Length to /login: HTTP {status} after {elapsed:.3f} s, no body read")
    assert status == 413
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
            b"Content-Length: 3221225472\r\n\r\n"
        )  # 3 GiB > CXR_STOW_MAX_REQUEST_MB
        assert _status_line(sock, timeout=10) == 413


def test_a_chunked_flood_is_cut_at_the_route_limit(server: Server) -> None:
    """No Content-Length: the body is counted as it streams (CXR_HTTP_MAX_BODY_KB 64).
    Before, Starlette wrote the file part to a temporary file as it came (545 MB of a
    600 MB form) and only then answered 403 for the missing CSRF token."""
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    status: int | None = None
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
        )
        start = (
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="f"\r\n'
            b"Content-Type: application/octet-stream\r\n\r\n"
        )  # a file part: to disk
        sock.sendall(f"{len(start):x}\r\n".encode() + start + b"\r\n")
        sock.settimeout(5)
        try:
            while sent < 64 << 20:
                sock.sendall(frame)
                sent += len(chunk)
                readable = selectors.DefaultSelector()
                readable.register(sock, selectors.EVENT_READ)
                if readable.select(timeout=0):
                    break
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass
        try:
            status = _status_line(sock, timeout=10)
        except (ConnectionResetError, TimeoutError):
            status = None
    print(f"chunked body to /login: HTTP {status} after {sent / 2**20:.2f} MiB sent")
    assert status == 413
    assert sent < 4 << 20, f"{sent} bytes accepted before the refusal"
    assert "413 from 127.0.0.1: form request body went over 65536 bytes" in server.log_text()


def test_a_trickled_body_is_cut_at_the_body_deadline(server: Server) -> None:
    started = time.monotonic()
    status: int | None = None
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /login HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        sock.settimeout(0.3)
        try:
            while time.monotonic() - started < 20:
                sock.sendall(b"a")
                try:
                    status = _status_line(sock, timeout=0.3)
                    break
                except TimeoutError:
                    continue
        except (BrokenPipeError, ConnectionResetError):
            pass
    elapsed = time.monotonic() - started
    print(
        f"a body trickled at 3 bytes/s: HTTP {status}, connection ended after {elapsed:.1f} s "
        f"(CXR_HTTP_BODY_TIMEOUT_S={BODY_TIMEOUT_S:g})"
    )
    assert status == 408
    assert elapsed < BODY_TIMEOUT_S + 3


def test_a_stalled_stow_request_ends_in_408_with_its_whole_parts_kept(server: Server) -> None:
    """STOW-RS has a deadline of its own (CXR_STOW_BODY_TIMEOUT_S): a sender that stalls
    after one whole part gets 408, and that part is recorded like any other."""
    whole = SAMPLE_2.read_bytes()
    start = (
        b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        + whole
        + b"\r\n--b\r\nContent-Type: application/dicom\r\n\r\nDICM"
    )  # then nothing
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {server.stow_token}\r\n".encode()
            + b'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
            + f"Content-Length: {len(start) + 100_000}\r\n\r\n".encode()
            + start
        )
        status = _status_line(sock, timeout=BODY_TIMEOUT_S + 10)
    elapsed = time.monotonic() - started
    print(f"a STOW-RS request stalled after one part: HTTP {status} after {elapsed:.1f} s")
    assert status == 408
    assert elapsed < BODY_TIMEOUT_S + 3
    sop = str(pydicom.dcmread(SAMPLE_2, stop_before_pixels=True).SOPInstanceUID)
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            kept = list(
                conn.scalars(select(Instance.status).where(Instance.sop_instance_uid == sop))
            )
    finally:
        engine.dispose()
    assert kept == ["waiting"], "the whole part is recorded, held for its study"


def _half_open(port: int, source: str, count: int) -> list[tuple[socket.socket, float]]:
    """``count`` connections from ``source`` whose request headers never end."""
    out = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # no blank line
        sock.setblocking(False)
        out.append((sock, time.monotonic()))
    return out


def _until_closed(
    opened: list[tuple[socket.socket, float]], limit_s: float
) -> list[tuple[float, bytes]]:
    """For each connection: seconds from its opening until the server closed it, and the
    start of what it answered (inf: still open after ``limit_s``)."""
    selector = selectors.DefaultSelector()
    for sock, at in opened:
        selector.register(sock, selectors.EVENT_READ, data=(at, b""))
    ended: list[tuple[float, bytes]] = []
    deadline = time.monotonic() + limit_s
    try:
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.2):
                peer = key.fileobj
                assert isinstance(peer, socket.socket)
                at, answer = key.data
                try:
                    data = peer.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if data:
                    selector.modify(peer, selectors.EVENT_READ, data=(at, answer + data))
                    continue
                ended.append((time.monotonic() - at, answer[:12]))
                selector.unregister(peer)
                peer.close()
    finally:
        for key in list(selector.get_map().values()):
            ended.append((float("inf"), key.data[1][:12]))
            key.fileobj.close()  # type: ignore[union-attr]
    return ended


def test_half_open_connections_are_capped_and_timed_out(server: Server) -> None:
    """Headers never finished. One peer gets CXR_HTTP_MAX_CONNECTIONS_PER_CLIENT at most;
    all together CXR_HTTP_MAX_CONNECTIONS; the rest are refused (503) at once, those held
    are answered 408 after CXR_HTTP_HEADER_TIMEOUT_S; meanwhile another client is served.
    Loopback's other addresses (127.0.0.2...) stand for other hosts."""
    attacker = _half_open(server.port, "127.0.0.1", 3 * MAX_PER_CLIENT)
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
        served = other.get(f"{server.base}/healthz", timeout=10).status_code
    crowd = [c for n in (3, 4, 5) for c in _half_open(server.port, f"127.0.0.{n}", MAX_PER_CLIENT)]
    ended = _until_closed(attacker + crowd, HEADER_TIMEOUT_S + 8)
    refused = [t for t, answer in ended if answer.startswith(b"HTTP/1.1 503")]
    timed_out = [t for t, answer in ended if answer.startswith(b"HTTP/1.1 408")]
    last = max(t for t, _ in ended)
    print(
        f"{len(ended)} half-open connections (48 from one address, 16 from each of 3 "
        f"others): {len(refused)} refused at once (503, at most {max(refused):.2f} s), "
        f"{len(timed_out)} answered 408 at {min(timed_out):.1f}-{max(timed_out):.1f} s; "
        f"all closed after {last:.1f} s; another client meanwhile: HTTP {served}"
    )
    assert served == 200
    assert last < HEADER_TIMEOUT_S + 3, "none held past the header deadline"
    assert len(refused) + len(timed_out) == len(ended)
    assert max(refused) < 1
    assert len(timed_out) <= MAX_CONNECTIONS
    log = server.log_text()
    assert log.count("at CXR_HTTP_MAX_CONNECTIONS_PER_CLIENT") >= 2 * MAX_PER_CLIENT
    assert log.count("at CXR_HTTP_MAX_CONNECTIONS=") >= 4 * MAX_PER_CLIENT - MAX_CONNECTIONS
    assert log.count("request headers not complete within") >= len(timed_out)


# --- Low: logout ends the session server side -----------------------------------------


def test_a_copied_cookie_is_worthless_after_logout(server: Server) -> None:
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        assert _log_in(client, server.base, "alice").status_code == 303
        copied = client.cookies.get("cxr_session")
        assert copied and client.get(f"{server.base}/review").status_code == 200
        logout = client.post(
            f"{server.base}/logout", data={"csrf_token": _csrf(client, server.base)}
        )
        assert logout.status_code == 303
    with httpx.Client(follow_redirects=False, timeout=30, cookies={"cxr_session": copied}) as thief:
        after = thief.get(f"{server.base}/review")
    assert after.status_code == 303 and after.headers["location"].startswith("/login")
    with httpx.Client(follow_redirects=False, timeout=30) as client:  # a new login works
        assert _log_in(client, server.base, "alice").status_code == 303
        assert client.get(f"{server.base}/review").status_code == 200


# --- Low: NUL bytes and huge ids are 4xx, with nothing typed in the log ------------------


def test_nul_and_huge_ids_are_refused_at_the_edge(server: Server) -> None:
    answers: dict[str, int] = {}
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        answers["login NUL"] = _log_in(client, server.base, f"{MARK}\x00x").status_code
        answers["login ?next=%00"] = client.get(f"{server.base}/login?next=/%00{MARK}").status_code
        assert _log_in(client, server.base, "alice").status_code == 303
        answers["review item"] = client.get(f"{server.base}/review/items/{HUGE}").status_code
        answers["review ?after"] = client.get(f"{server.base}/review?after={HUGE}").status_code
        answers["decision"] = client.post(
            f"{server.base}/review/items/{HUGE}/label",
            data={"decision": "frontal", "csrf_token": _csrf(client, server.base)},
        ).status_code
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        assert _log_in(client, server.base, "audrey").status_code == 303
        answers["audit study"] = client.get(f"{server.base}/audit/studies/{HUGE}").status_code
        answers["audit lookup NUL"] = client.post(
            f"{server.base}/audit/studies",
            data={"study_instance_uid": f"1.2\x00{MARK}", "csrf_token": _csrf(client, server.base)},
        ).status_code
    bearer = {"Authorization": f"Bearer {server.review_token}"}
    answers["api item"] = httpx.get(
        f"{server.base}/api/v1/review/items/{HUGE}", headers=bearer, timeout=30
    ).status_code
    answers["api queue"] = httpx.get(
        f"{server.base}/api/v1/review/queue?after={HUGE}", headers=bearer, timeout=30
    ).status_code
    print(answers)
    assert all(400 <= status < 500 for status in answers.values()), answers
    log = server.log_text()
    assert "Traceback" not in log
    assert MARK not in log and HUGE not in log


# --- Low: malformed UIDs refused by STOW-RS ---------------------------------------------


def test_stow_refuses_malformed_uids(server: Server) -> None:
    headers = {
        "Authorization": f"Bearer {server.stow_token}",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=b',
    }
    ds = pydicom.dcmread(SAMPLE)
    ds.StudyInstanceUID = "../../../../tmp/x"
    buffer = BytesIO()
    ds.save_as(buffer)
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + buffer.getvalue() + b"\r\n--b--\r\n"

    in_url = httpx.post(
        f"{server.base}/dicom-web/studies/1.2.03.4", content=body, headers=headers, timeout=60
    )
    assert in_url.status_code == 400
    assert "leading zero" in in_url.json()["detail"]

    in_part = httpx.post(
        f"{server.base}/dicom-web/studies", content=body, headers=headers, timeout=60
    )
    assert in_part.status_code == 409, in_part.text
    answer = pydicom.Dataset.from_json(in_part.json())
    assert [int(i.FailureReason) for i in answer.FailedSOPSequence] == [0xC000]
    assert "../" not in in_part.text
    engine = make_engine(server.database_url)
    try:
        with engine.connect() as conn:
            codes = list(
                conn.scalars(
                    select(Instance.error_code).where(Instance.error_code == "invalid_uid")
                )
            )
            studies = list(conn.scalars(select(Study.study_instance_uid)))
    finally:
        engine.dispose()
    assert codes == ["invalid_uid"]
    assert "../../../../tmp/x" not in studies
    assert "tmp/x" not in server.log_text(), "nor in the log"


# --- and behind a real proxy (here: this host), the same rule lets it work --------------


def test_behind_a_trusted_proxy_sso_works_and_the_client_is_the_forwarded_one(
    tmp_path: Path,
) -> None:
    from tests.utils.env import migrate_from_template

    with temporary_pg_database() as url:
        migrate_from_template(url)
        env = worker_env(
            database_url=url,
            ingest_root=tmp_path,
            data_dir=tmp_path / "data",
            trusted_user_header="X-Remote-User",
            trusted_proxies="127.0.0.1",
        )
        env.pop("CXR_BROKER_URL", None)
        _user(env, "carol", "admin", None)
        log = tmp_path / "serve.log"
        with serving(env, log) as base, httpx.Client(follow_redirects=False, timeout=30) as client:
            sso = client.get(
                f"{base}/admin/users", headers={"X-Remote-User": "carol", "Accept": "text/html"}
            )
            assert sso.status_code == 200, "the proxy's header is believed"

            def attempts(forwarded: list[str]) -> list[int]:
                return [
                    _log_in(
                        client, base, "target", "wrong password", headers={"X-Forwarded-For": value}
                    ).status_code
                    for value in forwarded
                ]

            # The proxy appends the real client; what the client wrote on the left is
            # not believed, so rotating it does not reset the count.
            forged = attempts([f"203.0.113.{i}, 198.51.100.9" for i in range(8)])
            assert forged == [401] * 5 + [429] * 3
            # Another real client behind the proxy has a count of its own.
            assert attempts(["198.51.100.10"]) == [401]
        text = log.read_text()
        # The log names the client by the same rule, never what the client wrote.
        assert "login refused from 198.51.100.9" in text
        assert "login refused from 198.51.100.10" in text and "203.0.113." not in text
