"""The review page in a real browser (issue 13): Debian's chromium driven by selenium
through /usr/bin/chromedriver (set explicitly: Selenium Manager downloads nothing), a
real `cxr-orient serve` process, a real PostgreSQL database with answers recorded the
way the worker records them, users made with the `cxr-orient user create` verb.

A reviewer logs in, labels four answers (one click, three keyboard shortcuts, one of them
a frontal's projection, PA), sees a frontal's PA/AP answer, the rows
are checked in SQL, and the reviewer is refused the admin page. With
CXR_REVIEW_SCREENSHOTS=<folder> the pages are saved there as PNGs (docs/figures/review-*).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from db.session import session_scope
from tests.utils.browser import chromium_installed, headless_chromium
from tests.utils.env import migrate_from_template
from tests.utils.review import PATIENT_ID, active_version, answered_instance
from tests.utils.services import serving
from tests.utils.worker import REPO, worker_env

pytestmark = pytest.mark.integration

PASSWORD = "review-page password"

if not chromium_installed():
    pytest.skip("Debian's chromium and chromium-driver are not installed", allow_module_level=True)

from selenium.webdriver.common.by import By  # noqa: E402  (after the skip)
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with headless_chromium(tmp_path / "chromium") as driver:
        yield driver


def _user(env: dict[str, str], name: str, role: str) -> None:
    made = subprocess.run(
        [sys.executable, "-m", "cli", "user", "create", name, "--role", role, "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr


def _shot(driver: WebDriver, name: str) -> None:
    folder = os.environ.get("CXR_REVIEW_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"review-{name}.png"))


def _images_loaded(driver: WebDriver) -> bool:
    return bool(
        driver.execute_script(
            "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
    )


def _log_in(driver: WebDriver, base: str, name: str) -> None:
    driver.get(f"{base}/login")
    driver.find_element(By.ID, "username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "login").click()


def _instance_shown(driver: WebDriver) -> int:
    WebDriverWait(driver, 30).until(
        expected_conditions.presence_of_element_located((By.ID, "model-image"))
    )
    WebDriverWait(driver, 30).until(_images_loaded)
    return int(driver.current_url.split("/review/items/")[1].split("?")[0])


def test_a_reviewer_logs_in_and_labels_three_answers(
    browser: WebDriver, pg_url: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    root, data = (tmp_path / "archive").resolve(), (tmp_path / "data").resolve()
    root.mkdir()
    configure(database_url=pg_url, data_dir=data, ingest_root=root)
    migrate_from_template(pg_url)
    with session_scope() as session:
        version = active_version(session, "compact-v1")
        flagged = [
            answered_instance(
                session,
                root=root,
                version=version,
                index=i,
                study=i // 2,
                confidence=0.55 + 0.05 * i,
                header_view="LL" if i % 2 else "PA",
                label="lateral" if i in (1, 4) else "frontal",
                header_agrees=i != 4,
                projection="AP" if i == 5 else None,
                p_ap=0.88 if i == 5 else None,
            )
            for i in range(1, 6)
        ]
        answered_instance(
            session, root=root, version=version, index=9, confidence=0.99, needs_review=False
        )
    env = worker_env(database_url=pg_url, data_dir=data, ingest_root=root)
    _user(env, "rita", "reviewer")
    _user(env, "audrey", "auditor")

    with serving(env, tmp_path / "serve.log") as base:
        browser.get(f"{base}/review")
        assert "/login" in browser.current_url  # nobody logged in yet
        _shot(browser, "login")
        _log_in(browser, base, "rita")
        WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.ID, "queue"))
        )
        WebDriverWait(browser, 30).until(_images_loaded)
        rows = browser.find_elements(By.CSS_SELECTOR, "#queue tr[data-instance]")
        assert [int(r.get_attribute("data-instance") or 0) for r in rows] == flagged
        assert PATIENT_ID not in browser.page_source
        _shot(browser, "queue")

        browser.find_element(By.ID, "start").click()
        assert _instance_shown(browser) == flagged[0]
        assert browser.find_element(By.ID, "model-answer").text.startswith("lateral")
        _shot(browser, "item")
        browser.find_element(By.ID, "decide-frontal").click()  # one click
        assert _instance_shown(browser) == flagged[1]
        browser.find_element(By.TAG_NAME, "body").send_keys("l")  # the keyboard
        WebDriverWait(browser, 30).until(lambda d: f"/items/{flagged[2]}?" in d.current_url)
        assert _instance_shown(browser) == flagged[2]
        browser.find_element(By.TAG_NAME, "body").send_keys("n")
        WebDriverWait(browser, 30).until(lambda d: f"/items/{flagged[3]}?" in d.current_url)
        assert _instance_shown(browser) == flagged[3]
        assert browser.find_element(By.ID, "projection").text == "—"  # no PA/AP head
        browser.find_element(By.TAG_NAME, "body").send_keys("p")  # frontal, PA
        WebDriverWait(browser, 30).until(lambda d: f"/items/{flagged[4]}?" in d.current_url)
        assert browser.find_element(By.ID, "projection").text == "AP (p_ap 0.88)"
        _shot(browser, "item-projection")

        with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
            labels = conn.execute(
                "SELECT instance_id, label, source, annotator, projection FROM labels ORDER BY id"
            ).fetchall()
        assert labels == [
            (flagged[0], "frontal", "review", "rita", None),
            (flagged[1], "lateral", "review", "rita", None),
            (flagged[2], "not_chest", "review", "rita", None),
            (flagged[3], "frontal", "review", "rita", "PA"),
        ]

        # The reviewer may not reach the admin pages: a 403 page in the browser, and 403
        # for the same session cookie over plain HTTP.
        browser.get(f"{base}/admin/users")
        assert browser.find_element(By.TAG_NAME, "h1").text == "403"
        cookie = browser.get_cookie("cxr_session")
        assert cookie is not None and cookie.get("httpOnly") is True
        for path in ("/admin/users", "/audit"):
            refused = httpx.get(
                f"{base}{path}", cookies={"cxr_session": cookie["value"]}, follow_redirects=False
            )
            assert refused.status_code == 403

        browser.get(f"{base}/review")
        remaining = browser.find_elements(By.CSS_SELECTOR, "#queue tr[data-instance]")
        assert [int(r.get_attribute("data-instance") or 0) for r in remaining] == flagged[4:]

        browser.find_element(By.ID, "logout").click()
        _log_in(browser, base, "audrey")
        WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.ID, "versions"))
        )
        assert "compact-v1" in browser.find_element(By.ID, "versions").text
        _shot(browser, "audit")
    assert PATIENT_ID not in (tmp_path / "serve.log").read_text()
    shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


def test_a_reviewer_confirms_a_fault_with_one_key_and_an_operator_reverses_it(
    browser: WebDriver, pg_url: str, tmp_path: Path, configure: Callable[..., None]
) -> None:
    """CXR_CORRECTION_DESTINATIONS set, no rule: a lateral stored turned by 90 degrees
    whose header says PA is offered for correction on its page; the reviewer presses
    ``c``: a ``corrections`` row (decided by the reviewer, when), its outbox row and the
    reviewer's label, in SQL; the page then shows it; ``cxr-orient corrections reverse``
    records the reversal, going where the correction went. An answer with nothing wrong
    offers no correction."""
    root, data = (tmp_path / "archive").resolve(), (tmp_path / "data").resolve()
    root.mkdir()
    pacs = "dicom://ORTHANC@127.0.0.1:4242"
    configure(database_url=pg_url, data_dir=data, ingest_root=root, correction_destinations=pacs)
    migrate_from_template(pg_url)
    with session_scope() as session:
        version = active_version(session, "compact-invariant-64-v3")
        turned = answered_instance(
            session,
            root=root,
            version=version,
            index=1,
            label="lateral",
            confidence=0.97,
            header_view="PA",
            header_agrees=False,
            needs_review=True,
            review_reason="low_confidence",
            rotation=90,
        )
        fine = answered_instance(
            session,
            root=root,
            version=version,
            index=2,
            label="frontal",
            confidence=0.6,
            header_view="PA",
            rotation=0,
            mirrored=False,
        )
    env = worker_env(
        database_url=pg_url, data_dir=data, ingest_root=root, correction_destinations=pacs
    )
    _user(env, "rita", "reviewer")

    with serving(env, tmp_path / "serve.log") as base:
        _log_in(browser, base, "rita")
        WebDriverWait(browser, 30).until(
            expected_conditions.presence_of_element_located((By.ID, "queue"))
        )
        browser.get(f"{base}/review/items/{fine}")
        _instance_shown(browser)
        assert not browser.find_elements(By.ID, "correct"), "nothing wrong: no offer"
        browser.get(f"{base}/review/items/{turned}?filter=disagree")
        assert _instance_shown(browser) == turned
        offer = browser.find_element(By.ID, "correction-offer").text
        assert "turned, header view" in offer and "View Position LL" in offer, offer
        _shot(browser, "correction")
        browser.find_element(By.TAG_NAME, "body").send_keys("c")  # the one key
        WebDriverWait(browser, 30).until(lambda d: f"/items/{turned}" not in d.current_url)

        with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
            rows = conn.execute(
                "SELECT id, action, instance_id, faults, rotation, view, decided_via, "
                "decided_by, decided_at IS NOT NULL FROM corrections ORDER BY id"
            ).fetchall()
            outbox = conn.execute(
                "SELECT correction_id, destination, status FROM outbox"
            ).fetchall()
            labels = conn.execute(
                "SELECT instance_id, label, source, annotator FROM labels"
            ).fetchall()
        assert [r[1:] for r in rows] == [
            ("correct", turned, "turned,header_view", 90, "LL", "review", "reviewer rita", True)
        ]
        correction_id = rows[0][0]
        assert outbox == [(correction_id, pacs, "pending")]
        assert labels == [(turned, "lateral", "review", "rita")]
        browser.get(f"{base}/review/items/{turned}")
        _instance_shown(browser)
        assert "reviewer rita" in browser.find_element(By.ID, "corrections").text
        assert not browser.find_elements(By.ID, "correct"), "corrected once"

    reversed_ = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "corrections",
            "reverse",
            str(correction_id),
            "--by",
            "ops oliver",
            "--reason",
            "wrong patient orientation",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert reversed_.returncode == 0, reversed_.stderr
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "corrections",
            "reverse",
            str(correction_id),
            "--by",
            "ops oliver",
            "--reason",
            "twice",
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode != 0 and "reversed already" in again.stderr
    with psycopg.connect(pg_url.replace("+psycopg", "")) as conn:
        reversal = conn.execute(
            "SELECT action, reverses_id, decided_via, decided_by, reason FROM corrections "
            "WHERE action = 'reverse'"
        ).fetchall()
        destinations = conn.execute(
            "SELECT o.destination FROM outbox o JOIN corrections c ON c.id = o.correction_id "
            "WHERE c.action = 'reverse'"
        ).fetchall()
    assert reversal == [
        ("reverse", correction_id, "cli", "ops oliver", "wrong patient orientation")
    ]
    assert destinations == [(pacs,)]
