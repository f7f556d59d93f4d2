"""Worker lifecycle hooks, connected when the worker imports this module (``include`` in
:mod:`worker.celery`).

- Worker start (main process): refuse to start without a Keras backend, with one line
  naming what is missing, instead of pool processes that crash on import for ever.
- Worker setup (main process, before fork): remember the node name for the records.
- Worker ready: re-send work the database has as unfinished whose messages may be gone.
- Each pool process, after fork: load the model there, never in the parent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals

from cxr_orient.runtime import missing_backend

logger = logging.getLogger(__name__)


@signals.worker_init.connect
def _require_backend(**_: Any) -> None:
    problem = missing_backend()
    if problem:
        logger.critical("%s", problem)
        raise SystemExit(problem)


@signals.celeryd_after_setup.connect
def _remember_node_name(sender: Any = None, **_: Any) -> None:
    # In the parent, before the pool forks: each pool process records answers and claims
    # under its node name (``-n``), which tells two workers on one host apart.
    from worker.pipeline import set_node_name

    if sender:
        set_node_name(str(sender))


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
