"""The Celery application, configured from cxr-orient settings, and nothing else.

JSON only crosses the queue; tasks carry instance ids, never paths or pixels.
Messages are acknowledged after their batch is written (late acks), and a
message whose worker process died is handed back to the queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab

from cxr_orient.logs import cap_third_party_loggers
from cxr_orient.settings import get_settings

#: Task names, the queue's contract (worker.dispatch sends by them, worker.tasks registers
#: under them); here because the beat schedule below names them too.
CLASSIFY = "cxr_orient.classify"
REQUEUE_STUCK = "cxr_orient.requeue_stuck"
RETRAIN = "cxr_orient.retrain"
RELEASE_QUIET_STUDIES = "cxr_orient.release_quiet_studies"
PURGE_SPOOL = "cxr_orient.purge_spool"
#: How often received files that nobody needs any more are deleted (docs/security.md).
PURGE_SPOOL_EVERY_S = 300.0
DELIVER_OUTBOX = "cxr_orient.deliver_outbox"


def make_app() -> Celery:
    settings = get_settings()
    # The task module, and the signal handlers that load the model in each pool process
    # and requeue lost work on start: imported by the worker, never by senders.
    app = Celery("cxr_orient", include=["worker.tasks", "worker.signals"])
    transport_options: dict[str, Any] = {"visibility_timeout": settings.worker.processing_timeout_s}
    if settings.storage.uses_embedded_broker:
        folder = settings.storage.broker_folder
        for sub in ("out", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            # kombu's default is "control" relative to the working directory: a worker
            # would leave an exchange table in whatever folder it was started from.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    app.conf.update(
        broker_url=settings.storage.effective_broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=settings.worker.queue_name,
        # celery-batches needs at least a batch of messages delivered to fill one; unlimited
        # by default (CXR_PREFETCH_BATCHES=0).
        worker_prefetch_multiplier=settings.worker.prefetch_batches * settings.worker.batch_size,
        worker_hijack_root_logger=False,
        # Task events, so that `celery -A worker flower` shows workers and tasks.
        worker_send_task_events=settings.worker.task_events,
        task_send_sent_event=settings.worker.task_events,
        # The pool's limits, so they hold for the classify batches too: celery-batches
        # hands a batch to the pool without a task's own limits. The soft limit raises
        # SoftTimeLimitExceeded in the pool process (worker.pipeline records the
        # unfinished images as timeouts and sends them again); the hard one kills it.
        # Tasks that may run longer (the retrain) set their own.
        task_soft_time_limit=settings.worker.effective_task_soft_time_limit_s,
        task_time_limit=settings.worker.effective_task_time_limit_s,
        # A replacement pool process loads TensorFlow and the model before it reports
        # up; celery's 4 s default killed it again and again on a busy machine after a
        # pool process died (a crash loop found by tests/integration/test_faults.py).
        worker_proc_alive_timeout=120.0,
        beat_schedule={
            "requeue-stuck-instances": {
                "task": REQUEUE_STUCK,
                "schedule": max(30.0, settings.worker.processing_timeout_s / 2),
            },
            # Studies received over the network, held until quiet (CXR_STUDY_QUIET_S).
            "release-quiet-studies": {
                "task": RELEASE_QUIET_STUDIES,
                "schedule": settings.intake.study_release_interval_s,
            },
            "purge-spool": {"task": PURGE_SPOOL, "schedule": PURGE_SPOOL_EVERY_S},
        },
        timezone="UTC",
    )
    if settings.results.outbox_queue:
        # Beat's sweeps and the kicks after each batch both route by task name.
        app.conf.task_routes = {DELIVER_OUTBOX: {"queue": settings.results.outbox_queue}}
    if settings.results.result_destinations or settings.corrections.correction_destinations:
        # Results back to PACS: the outbox is swept every few seconds (and kicked after
        # each recorded batch), so a destination back up is served within one interval.
        app.conf.beat_schedule["deliver-outbox"] = {
            "task": DELIVER_OUTBOX,
            "schedule": settings.results.outbox_interval_s,
            "options": {"expires": max(settings.results.outbox_interval_s * 2, 10.0)},
        }
    if settings.training.retrain_schedule:
        schedule = settings.training.retrain_schedule
        minute, hour, day_of_month, month, day_of_week = schedule.split()
        app.conf.beat_schedule["nightly-retrain"] = {
            "task": RETRAIN,
            "schedule": crontab(
                minute=minute,
                hour=hour,
                day_of_month=day_of_month,
                month_of_year=month,
                day_of_week=day_of_week,
            ),
        }
    return app


@signals.after_setup_logger.connect
def _cap_third_party_loggers(loglevel: int | str | None = None, **_: Any) -> None:
    # Every celery entry point (worker, beat) logs by celery's setup: the same rule as the
    # CLI's, no UIDs from highdicom or pynetdicom below WARNING (cxr_orient.logs).
    level = logging.getLevelName(loglevel) if isinstance(loglevel, str) else loglevel
    cap_third_party_loggers(debugging=isinstance(level, int) and level <= logging.DEBUG)


app = make_app()
