"""Worker lifecycle hooks, connected when the worker imports this module (``include`` in
:mod:`worker.celery`).

- Worker start (main process): refuse to start without a Keras backend, with one line
  naming what is missing, instead of pool processes that crash on import for ever.
- Worker setup (main process, before fork): remember the node name for the records.
- Worker ready: re-send work the database has as unfinished whose messages may be gone;
  start the main process's threads (worker.housekeeping: outbox delivery, broker watch,
  readiness and heartbeat), stopped at shutdown.
- Each pool process, after fork: load the model there, never in the parent; then say so
  (worker.readiness: the worker logs "ready to classify" once every pool process has).
- With ``CXR_INFERENCE=served``, the main process starts the inference processes first
  (:mod:`cxr_orient.serving`) and stops them at shutdown; pool processes then load no model.
- Metrics (cxr_orient.metrics): the multiprocess folder emptied at worker start, the
  exporter started in the main process when the worker is ready, a pool process's live
  gauges dropped when it exits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import signals

from cxr_orient import metrics
from cxr_orient.runtime import missing_backend
from cxr_orient.settings import get_settings

logger = logging.getLogger(__name__)


@signals.worker_init.connect
def _require_backend(**_: Any) -> None:
    problem = missing_backend()
    if problem:
        logger.critical("%s", problem)
        raise SystemExit(problem)


def _metrics_dir(sender: Any) -> Path:
    node = getattr(sender, "hostname", None) or f"worker-{os.getpid()}"
    return metrics.node_metrics_dir(get_settings().storage.effective_metrics_dir, str(node))


@signals.worker_init.connect
def _prepare_metrics(sender: Any = None, **_: Any) -> None:
    # Main process, before the pool forks: the pool processes inherit the folder.
    metrics.prepare_multiprocess_dir(_metrics_dir(sender))
    # And the folder where each pool process says it has its model (worker.readiness).
    from worker import readiness

    readiness.prepare()


_HOUSEKEEPING: Any = None


@signals.worker_ready.connect
def _start_housekeeping(sender: Any = None, **_: Any) -> None:
    # Delivery, the broker watch and readiness run in the main process: a worker started
    # without -B delivers and recovers lost messages (worker.housekeeping).
    global _HOUSEKEEPING
    from worker.housekeeping import start

    pool = getattr(sender, "pool", None)
    node = str(getattr(sender, "hostname", None) or f"worker-{os.getpid()}")
    _HOUSEKEEPING = start(
        get_settings(), node=node, pool_processes=int(getattr(pool, "num_processes", 1) or 1)
    )


@signals.worker_shutdown.connect
def _stop_housekeeping(**_: Any) -> None:
    if _HOUSEKEEPING is not None:
        _HOUSEKEEPING.stop()


@signals.worker_ready.connect
def _start_metrics_exporter(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    if settings.worker.worker_metrics_port:
        metrics.start_worker_exporter(
            _metrics_dir(sender),
            host=settings.worker.worker_metrics_host,
            port=settings.worker.worker_metrics_port,
        )


@signals.worker_process_shutdown.connect
def _forget_pool_process(pid: int | None = None, **_: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


@signals.task_received.connect
def _classify_received(request: Any = None, **_: Any) -> None:
    from worker.events import send_received

    send_received(request)


@signals.celeryd_after_setup.connect
def _remember_node_name(sender: Any = None, **_: Any) -> None:
    # In the parent, before the pool forks: each pool process records answers and claims
    # under its node name (``-n``), which tells two workers on one host apart.
    from worker.pipeline import set_node_name

    if sender:
        set_node_name(str(sender))


@signals.worker_init.connect
def _start_inference_processes(**_: Any) -> None:
    # CXR_INFERENCE=served: one inference process per card, started here, in the main
    # process before the pool forks (cxr_orient.serving); the pool processes inherit
    # their sockets and never load the model themselves.
    settings = get_settings()
    if settings.inference.inference == "served":
        from cxr_orient.serving import start_servers

        start_servers(
            max_batch=max(1024, settings.worker.batch_size), log_level=settings.logs.log_level
        )


@signals.worker_shutdown.connect
def _stop_inference_processes(**_: Any) -> None:
    from cxr_orient.serving import server_sockets, stop_servers

    if server_sockets():
        stop_servers()


@signals.worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    # Runs in each prefork child after fork: TensorFlow state must never be
    # created in the parent, or the children hang.
    from worker.pipeline import on_process_start

    on_process_start(get_settings())


@signals.worker_ready.connect
def _requeue_on_start(sender: Any = None, **_: Any) -> None:
    # The database, not the broker, is the source of truth: work recorded as
    # unfinished whose message may be gone (broker restarted) is sent again.
    from worker.requeue import requeue_unfinished

    try:
        sent = requeue_unfinished(get_settings().worker, only_stale=True)
    except Exception:
        logger.exception("requeue on worker start failed; the periodic reaper will retry")
        return
    if sent:
        logger.info("requeued %d unfinished instances on worker start", sent)
