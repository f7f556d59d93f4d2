"""Metrics: the service's GET /metrics read from a real database (TestClient on the real
app), the workers' multiprocess files summed across real forked processes, the time-limit
settings, the timeout bookkeeping in db.crud, and the example alert rules and dashboard
naming only metrics the code exports."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from pydantic import ValidationError

from cxr_orient import metrics
from cxr_orient.dicomnet.sr import new_sr_uid
from cxr_orient.settings import Settings
from db import crud
from db.models import InstanceStatus, OrientationLabel
from db.session import session_scope
from service import create_app
from tests.utils.embedded import embedded_setup
from tests.utils.factories import prediction_record, register_version
from tests.utils.services import parse_samples as samples

REPO = Path(__file__).resolve().parents[3]
ALERTS = REPO / "docker" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "docker" / "grafana" / "cxr-orient.json"
SCRAPE_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
DESTINATION = "dicom://PACS@127.0.0.1:11112"


def _add(session, uid: str):
    study = crud.get_or_create_study(session, study_instance_uid="1.2.3", patient_id="P1")
    instance, _ = crud.add_instance(
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
    return instance


def _answer(instance_id: int, *, needs_review: bool) -> crud.PredictionRecord:
    return prediction_record(
        instance_id=instance_id,
        label=OrientationLabel.frontal,
        confidence=0.6,
        p_frontal=0.6,
        p_lateral=0.4,
        header_agrees=True,
        needs_review=needs_review,
        decode_ms=1.0,
        inference_ms=1.0,
        batch_size=1,
    )


@pytest.fixture
def client(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    embedded_setup(tmp_path, configure, monkeypatch)
    with TestClient(create_app()) as test_client:
        yield test_client


def _fill_database() -> None:
    """2 queued, 1 failed, 3 done: 2 needing review (one of them labelled since), 1 not;
    an active model; one outbox row per answer."""
    with session_scope() as session:
        ids = [_add(session, f"1.2.3.{n}").id for n in range(6)]
        version = register_version(session, "compact-test-v9")
        crud.activate_model_version(session, version=version, actor="test", reason="test")
        version_id = version.id
    with session_scope() as session:
        for i in ids[:4]:
            assert crud.claim_for_processing(session, instance_id=i, lease_s=3600)
        crud.record_predictions(
            session,
            model_version_id=version_id,
            worker="w",
            records=[
                _answer(ids[0], needs_review=True),
                _answer(ids[1], needs_review=True),
                _answer(ids[2], needs_review=False),
            ],
            result_destinations=[DESTINATION],
            new_report_uid=new_sr_uid,
        )
        crud.mark_failed(
            session, instance_id=ids[3], error_code="decode_failed", error_message="bad"
        )
        crud.add_label(
            session,
            instance_id=ids[1],
            label=OrientationLabel.frontal,
            source="review",
            annotator="dr-a",
        )


def test_service_metrics_are_read_from_the_database_and_the_broker(client: TestClient) -> None:
    _fill_database()
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    got = samples(answer.text)
    assert got[("cxr_orient_database_up", ())] == 1
    assert got[("cxr_orient_instances", (("status", "done"),))] == 3
    assert got[("cxr_orient_instances", (("status", "queued"),))] == 2
    assert got[("cxr_orient_instances", (("status", "failed"),))] == 1
    assert got[("cxr_orient_instances", (("status", "processing"),))] == 0
    assert got[("cxr_orient_review_backlog", ())] == 1, "labelled answers are reviewed"
    assert (
        got[("cxr_orient_outbox_messages", (("destination", DESTINATION), ("status", "pending")))]
        == 3
    )
    assert (
        got[("cxr_orient_outbox_messages", (("destination", DESTINATION), ("status", "failed")))]
        == 0
    )
    age = got[("cxr_orient_outbox_oldest_pending_seconds", (("destination", DESTINATION),))]
    assert 0 <= age < 600
    assert got[("cxr_orient_active_model_info", (("version", "compact-test-v9"),))] == 1
    # The filesystem broker counts its queue: the 2 queued rows were never sent here.
    assert got[("cxr_orient_broker_up", ())] == 1
    assert got[("cxr_orient_queue_depth", (("queue", "cxr-orient"),))] == 0


def test_an_empty_database_has_no_active_model(client: TestClient) -> None:
    got = samples(client.get("/metrics").text)
    assert got[("cxr_orient_active_model_info", (("version", "none"),))] == 1
    assert got[("cxr_orient_review_backlog", ())] == 0
    assert not [k for k in got if k[0] == "cxr_orient_outbox_messages"]


def test_database_down_is_a_gauge_not_a_500(
    client: TestClient, configure: Callable[..., None]
) -> None:
    configure(database_url="postgresql+psycopg://cxr@127.0.0.1:1/nowhere")
    answer = client.get("/metrics")
    assert answer.status_code == 200
    got = samples(answer.text)
    assert got[("cxr_orient_database_up", ())] == 0
    assert not [k for k in got if k[0] == "cxr_orient_instances"]
    assert client.get("/healthz").status_code == 200


def test_metrics_token_when_set(client: TestClient, configure: Callable[..., None]) -> None:
    configure(metrics_token="scrape-secret")
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    right = client.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
    assert right.status_code == 200
    assert "cxr_orient_database_up 1.0" in right.text
    assert client.get("/readyz").status_code == 200, "health stays open"


def test_worker_metrics_summed_over_forked_processes(tmp_path: Path) -> None:
    """Multiprocess mode as a worker runs it, in a process of its own (the mode is
    process-wide): the main process prepares the folder, two forked children count and
    one exits; the registry sums the counters of both and the live gauge of one."""
    folder = tmp_path / "metrics" / "celery_host"
    folder.mkdir(parents=True)
    (folder / "counter_999999.db").write_bytes(b"left by an earlier run")
    script = textwrap.dedent(f"""
        import os, sys
        from pathlib import Path
        from prometheus_client import generate_latest
        from cxr_orient import metrics
        folder = Path({str(folder)!r})
        metrics.prepare_multiprocess_dir(folder)
        assert not (folder / "counter_999999.db").exists()
        r, w = os.pipe()
        counted_r, counted_w = os.pipe()
        children = []
        for n in range(2):
            pid = os.fork()
            if pid == 0:
                m = metrics.worker_metrics()
                m.pool_processes.set(1)
                m.count_done(["frontal"] * (n + 1))
                m.count_failed(["decode_failed"])
                m.count_retried("timeout", 2)
                m.decode_seconds.observe(0.02)
                m.batch_size.observe(3)
                if n == 0:
                    metrics.mark_process_dead(os.getpid())
                    os._exit(0)
                os.write(counted_w, b"c")
                os.read(r, 1)  # the second stays alive until the scrape is done
                os._exit(0)
            children.append(pid)
        os.waitpid(children[0], 0)
        os.read(counted_r, 1)  # the second has counted (its files exist from its start)
        sys.stdout.write(generate_latest(metrics.worker_registry(folder)).decode())
        os.write(w, b"x")
        os.waitpid(children[1], 0)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = samples(done.stdout)
    assert (
        got[
            (
                "cxr_orient_images_total",
                (("error_code", ""), ("label", "frontal"), ("status", "done")),
            )
        ]
        == 3
    )
    assert (
        got[
            (
                "cxr_orient_images_total",
                (("error_code", "decode_failed"), ("label", ""), ("status", "failed")),
            )
        ]
        == 2
    )
    assert (
        got[
            (
                "cxr_orient_images_total",
                (("error_code", "timeout"), ("label", ""), ("status", "retried")),
            )
        ]
        == 4
    )
    assert got[("cxr_orient_decode_seconds_count", ())] == 2
    assert got[("cxr_orient_batch_size_bucket", (("le", "4.0"),))] == 2
    assert got[("cxr_orient_worker_pool_processes", ())] == 1, "the dead one is not summed"


def test_a_killed_process_is_swept_from_the_live_gauge(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from prometheus_client import generate_latest
        from cxr_orient import metrics
        folder = Path({str(folder_path := tmp_path / "m")!r})
        metrics.prepare_multiprocess_dir(folder)
        pid = os.fork()
        if pid == 0:
            metrics.worker_metrics().pool_processes.set(1)
            signal.pause()
        import time
        while not list(folder.glob("gauge_livesum_*.db")):
            time.sleep(0.05)
        time.sleep(0.2)
        before = generate_latest(metrics.worker_registry(folder)).decode()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        after = generate_latest(metrics.worker_registry(folder)).decode()
        sys.stdout.write(before + "\\n#SPLIT\\n" + after)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    before, after = done.stdout.split("#SPLIT")
    assert samples(before)[("cxr_orient_worker_pool_processes", ())] == 1
    assert samples(after).get(("cxr_orient_worker_pool_processes", ()), 0) == 0
    assert not list(folder_path.glob("gauge_livesum_*.db"))


def test_node_folders_are_safe_names(tmp_path: Path) -> None:
    assert metrics.node_metrics_dir(tmp_path, "celery@host-1.example") == (
        tmp_path / "celery_host-1.example"
    )
    assert metrics.node_metrics_dir(tmp_path, "../../etc").parent == tmp_path


# --- time limits ----------------------------------------------------------------------


def test_time_limit_defaults_follow_the_batch_size() -> None:
    settings = Settings(batch_size=32)
    assert settings.worker.effective_task_soft_time_limit_s == 332
    assert settings.worker.effective_task_time_limit_s == 392
    assert Settings(batch_size=2048).worker.effective_task_soft_time_limit_s == 2348
    off = Settings(task_soft_time_limit_s=0, task_time_limit_s=0)
    assert off.worker.effective_task_soft_time_limit_s is None
    assert off.worker.effective_task_time_limit_s is None
    only_hard = Settings(task_soft_time_limit_s=0, task_time_limit_s=30)
    assert (
        only_hard.worker.effective_task_soft_time_limit_s,
        only_hard.worker.effective_task_time_limit_s,
    ) == (None, 30)
    with pytest.raises(ValidationError, match="must be below CXR_TASK_TIME_LIMIT_S"):
        Settings(task_soft_time_limit_s=60, task_time_limit_s=60)


def test_the_celery_app_carries_the_limits_and_events(configure: Callable[..., None]) -> None:
    from worker.celery import make_app

    configure(task_soft_time_limit_s=5, task_time_limit_s=9)
    conf = make_app().conf
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (5, 9)
    assert conf.worker_send_task_events and conf.task_send_sent_event
    configure(task_events="false")
    assert not make_app().conf.worker_send_task_events


def test_timed_out_instances_are_retried_then_failed(migrated_db: str) -> None:
    with session_scope() as session:
        ids = [_add(session, f"9.9.{n}").id for n in range(4)]
    with session_scope() as session:
        for i in ids[:3]:
            # ids[2]'s first claim lapses at once (lease 0 s): its worker is gone
            lease = 0.0 if i == ids[2] else 3600.0
            assert crud.claim_for_processing(session, instance_id=i, lease_s=lease)
        version = register_version(session, "m1")
        crud.record_predictions(
            session,
            model_version_id=version.id,
            worker="w",
            records=[_answer(ids[0], needs_review=False)],
        )
    with session_scope() as session:  # ids[2] claimed a second time: its last attempt
        crud.mark_queued(session, instance_ids=[ids[2]], lease_s=3600)
        assert crud.claim_for_processing(session, instance_id=ids[2], lease_s=3600)
    with session_scope() as session:
        out = crud.time_out_instances(
            session,
            instance_ids=ids,
            max_attempts=2,
            error_code="timeout",
            error_message="too slow",
        )
    assert (out.retried, out.failed, out.unclaimed) == ([ids[1]], [ids[2]], [ids[3]])
    with session_scope() as session:
        rows = {i: crud.get_instance(session, instance_id=i) for i in ids}
        assert rows[ids[0]].status == InstanceStatus.done  # type: ignore[union-attr]
        assert rows[ids[0]].error_code is None  # type: ignore[union-attr]
        assert (rows[ids[1]].status, rows[ids[1]].error_code) == (  # type: ignore[union-attr]
            InstanceStatus.queued,
            "timeout",
        )
        assert (rows[ids[2]].status, rows[ids[2]].error_code) == (  # type: ignore[union-attr]
            InstanceStatus.failed,
            "timeout",
        )
        assert rows[ids[3]].error_code is None  # type: ignore[union-attr]


# --- alert rules and dashboard ----------------------------------------------------------


def _exported_names(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> set[str]:
    """Every series name the code can export: the workers' metric objects and the
    service's collector (on a migrated database), with the suffixes each type adds."""
    from prometheus_client import CollectorRegistry

    embedded_setup(tmp_path, configure, monkeypatch)
    _fill_database()
    from worker.dispatch import broker_queue_depth

    registry = CollectorRegistry()
    worker = metrics.worker_metrics()
    for metric in (
        worker.images,
        worker.decode_seconds,
        worker.inference_seconds,
        worker.batch_size,
        worker.timeouts,
        worker.pool_processes,
    ):
        registry.register(_Only(metric))
    families = [
        *registry.collect(),
        *metrics.ServiceCollector(broker_queue_depth, "cxr-orient").collect(),
    ]
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "info": ["_info"],
        "gauge": [""],
    }
    names = {"up"}  # Prometheus's own, per scrape target
    for family in families:
        names.update(family.name + s for s in suffixes[family.type])
    return names


class _Only:
    """One metric object as a collector of its own (it already sits in the default one)."""

    def __init__(self, metric: object) -> None:
        self._metric = metric

    def collect(self):
        return self._metric.collect()  # type: ignore[attr-defined]

    def describe(self):
        return []


def _referenced(expressions: list[str]) -> set[str]:
    names = set()
    for expression in expressions:
        names.update(re.findall(r"\bcxr_orient_[a-z_]+\b", expression))
        if re.search(r"\bup\s*\{", expression):
            names.add("up")
    return names


def test_alert_rules_and_dashboard_name_only_exported_metrics(
    tmp_path: Path, configure: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = _exported_names(tmp_path, configure, monkeypatch)
    rules = yaml.safe_load(ALERTS.read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "CxrOrientNoWorkerUp",
        "CxrOrientFailureRate",
        "CxrOrientReviewBacklog",
        "CxrOrientOutboxFailing",
    } <= set(alerts)
    for rule in (r for g in rules["groups"] for r in g["rules"]):
        assert rule["annotations"]["summary"] and rule["labels"]["severity"]
    used = _referenced(list(alerts.values()))
    assert used and used <= exported, used - exported

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    used = _referenced(exprs)
    assert used <= exported, used - exported
    # Every metric the code exports is on the dashboard or in an alert, so none is dead.
    shown = _referenced(exprs + list(alerts.values()))
    families = {re.sub(r"(_total|_bucket|_sum|_count|_info)$", "", n) for n in exported}
    assert families - {"up"} <= {
        re.sub(r"(_total|_bucket|_sum|_count|_info)$", "", n) for n in shown
    }, "a metric nobody looks at"

    scrape = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert {"cxr-orient-service", "cxr-orient-worker"} <= jobs
    assert scrape["rule_files"] == ["alerts.yml"]
