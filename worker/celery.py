"""The Celery application, configured from cxr-orient settings.

JSON only crosses the queue; tasks carry instance ids, never paths or pixels.
Messages are acknowledged after their batch is written (late acks), and a
message whose worker process died is handed back to the queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab

from cxr_orient.settings import get_settings

logger = logging.getLogger(__name__)


def make_app() -> Celery:
    settings = get_settings()
    app = Celery("cxr_orient", include=["worker.tasks"])
    transport_options: dict[str, Any] = {"visibility_timeout": settings.processing_timeout_s}
    if settings.uses_embedded_broker:
        folder = settings.broker_folder
        for sub in ("out", "processed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "out"),
            "data_folder_out": str(folder / "out"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
    app.conf.update(
        broker_url=settings.effective_broker_url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=settings.queue_name,
        # celery-batches needs every waiting message delivered to fill a batch.
        worker_prefetch_multiplier=0,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        # A replacement pool process loads TensorFlow and the model before it reports
        # up; celery's 4 s default killed it again and again on a busy machine after a
        # pool process died (a crash loop found by tests/integration/test_faults.py).
        worker_proc_alive_timeout=120.0,
        beat_schedule={
            "requeue-stuck-instances": {
                "task": "cxr_orient.requeue_stuck",
                "schedule": max(30.0, settings.processing_timeout_s / 2),
            },
        },
        timezone="UTC",
    )
    if settings.retrain_schedule:
        minute, hour, day_of_month, month, day_of_week = settings.retrain_schedule.split()
        app.conf.beat_schedule["nightly-retrain"] = {
            "task": "cxr_orient.retrain",
            "schedule": crontab(minute=minute, hour=hour, day_of_month=day_of_month,
                                month_of_year=month, day_of_week=day_of_week),
        }
    return app


app = make_app()


@signals.worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    # Runs in each prefork child after fork: TensorFlow state must never be
    # created in the parent, or the children hang.
    from worker.pipeline import on_process_start

    on_process_start()


@signals.worker_ready.connect
def _requeue_on_start(sender: Any = None, **_: Any) -> None:
    # The database, not the broker, is the source of truth: work recorded as
    # unfinished whose message may be gone (broker restarted) is sent again.
    from worker.requeue import requeue_unfinished

    try:
        sent = requeue_unfinished(only_stale=True)
    except Exception:
        logger.exception("requeue on worker start failed; the periodic reaper will retry")
        return
    if sent:
        logger.info("requeued %d unfinished instances on worker start", sent)
