"""Prometheus metrics: what the workers count, what the service reads from SQL at scrape
time, and the multiprocess plumbing a prefork pool needs.

Workers (``celery -A worker worker``): the pool processes count images, time decodes and
inference and size batches into files under one folder per worker node
(``CXR_METRICS_DIR``, prometheus_client's multiprocess mode); the worker's main process
serves them all, summed, on ``CXR_WORKER_METRICS_HOST:CXR_WORKER_METRICS_PORT``
(:func:`start_worker_exporter`). The folder is emptied when the worker starts
(:func:`prepare_multiprocess_dir`) and a pool process's live gauges are dropped when it
exits (:func:`mark_process_dead`; a process killed outright is swept at the next scrape).

The service (``GET /metrics``): :class:`ServiceCollector` reads the backlogs from the
database (one grouped query each) and the queue depth from the broker when scraped, so
every service replica reports the same truth and nothing has to be kept in step.

The metric objects of the workers are made on first use (:func:`worker_metrics`), after
the worker has switched prometheus_client to multiprocess mode.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_dead
from prometheus_client.registry import Collector

from db import crud
from db.models import utcnow
from db.session import session_scope

logger = logging.getLogger(__name__)

__all__ = [
    "MULTIPROC_ENV",
    "ServiceCollector",
    "WorkerMetrics",
    "listener_refusals",
    "mark_process_dead",
    "node_metrics_dir",
    "pid_alive",
    "prepare_multiprocess_dir",
    "service_registry",
    "start_listener_exporter",
    "start_worker_exporter",
    "worker_metrics",
    "worker_registry",
]

#: The variable prometheus_client reads to find the multiprocess folder.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Per image: from 5 ms (an uncompressed film) to 10 s (a huge JPEG 2000 on a busy host).
DECODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Per batch: a CPU batch of 32 takes ~0.1 s, an H200 batch of 2048 ~0.06 s.
INFERENCE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


# --- the workers' metrics -------------------------------------------------------------


@dataclass(frozen=True)
class WorkerMetrics:
    """The metric objects a worker's pool processes update."""

    #: Images finished by a pool process: status done (label set), failed (error_code
    #: set) or retried (timed out, sent again; error_code ``timeout``).
    images: Counter
    decode_seconds: Histogram
    inference_seconds: Histogram
    batch_size: Histogram
    #: Batches stopped by the soft time limit.
    timeouts: Counter
    #: Pool processes up (each sets 1 after fork; summed over the live ones).
    pool_processes: Gauge
    #: 1 once every pool process of the worker has its model (set by the main process:
    #: the worker can classify now; celery's "ready" comes before the models).
    worker_ready: Gauge

    def count_done(self, labels: Iterable[str]) -> None:
        for label in labels:
            self.images.labels(status="done", label=label, error_code="").inc()

    def count_failed(self, error_codes: Iterable[str]) -> None:
        for code in error_codes:
            self.images.labels(status="failed", label="", error_code=code).inc()

    def count_retried(self, error_code: str, n: int) -> None:
        if n:
            self.images.labels(status="retried", label="", error_code=error_code).inc(n)


_WORKER_METRICS: WorkerMetrics | None = None
_LOCK = threading.Lock()


def worker_metrics() -> WorkerMetrics:
    """The workers' metric objects (made once per process, in the default registry)."""
    global _WORKER_METRICS
    with _LOCK:
        if _WORKER_METRICS is None:
            _WORKER_METRICS = WorkerMetrics(
                images=Counter(
                    "cxr_orient_images",
                    "Images finished by the workers.",
                    ["status", "label", "error_code"],
                ),
                decode_seconds=Histogram(
                    "cxr_orient_decode_seconds",
                    "Checked read + decode + resize of one image, in seconds.",
                    buckets=DECODE_BUCKETS,
                ),
                inference_seconds=Histogram(
                    "cxr_orient_inference_seconds",
                    "Model prediction of one batch, in seconds.",
                    buckets=INFERENCE_BUCKETS,
                ),
                batch_size=Histogram(
                    "cxr_orient_batch_size", "Images per predicted batch.", buckets=BATCH_BUCKETS
                ),
                timeouts=Counter(
                    "cxr_orient_task_timeouts",
                    "Classification batches stopped by the soft time limit.",
                ),
                pool_processes=Gauge(
                    "cxr_orient_worker_pool_processes",
                    "Worker pool processes up.",
                    multiprocess_mode="livesum",
                ),
                worker_ready=Gauge(
                    "cxr_orient_worker_ready",
                    "1 once every pool process of the worker has loaded its "
                    "model and can classify.",
                    multiprocess_mode="livemax",
                ),
            )
        return _WORKER_METRICS


# --- multiprocess mode ----------------------------------------------------------------


def node_metrics_dir(base: Path, node_name: str) -> Path:
    """The folder of one worker node (``celery@host``) under ``CXR_METRICS_DIR``."""
    return base / (re.sub(r"[^A-Za-z0-9_.-]+", "_", node_name) or "worker")


def prepare_multiprocess_dir(folder: Path) -> None:
    """Empty ``folder`` (files of an earlier run would be summed in) and switch this
    process, and the pool processes it forks, to multiprocess mode there.

    Call it in the worker's main process before any worker metric is made: the value
    class is chosen from the environment, so it is chosen again here.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    values.ValueClass = values.get_value_class()


def mark_process_dead(pid: int) -> None:
    """Drop the live gauges of a pool process that exited (its counters stay summed)."""
    folder = os.environ.get(MULTIPROC_ENV)
    if folder:
        _mark_dead(pid, folder)


_LIVE_FILE = re.compile(r"^gauge_live\w*?_(\d+)\.db$")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (one we may not signal counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _SweepingCollector(MultiProcessCollector):
    """The multiprocess files summed, after dropping the live gauges of processes that
    died without saying so (a pool process killed by the hard time limit or SIGKILL)."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        super().__init__(registry, path)
        self._folder = Path(path)

    def collect(self) -> Iterator[Metric]:
        for file in self._folder.glob("gauge_live*.db"):
            match = _LIVE_FILE.match(file.name)
            if match and not pid_alive(int(match.group(1))):
                _mark_dead(int(match.group(1)), str(self._folder))
        yield from super().collect()


def worker_registry(folder: Path) -> CollectorRegistry:
    """A registry that reads every pool process's files under ``folder``."""
    registry = CollectorRegistry()
    _SweepingCollector(registry, str(folder))
    return registry


def start_worker_exporter(folder: Path, *, host: str, port: int) -> Any | None:
    """Serve ``GET /metrics`` of the worker whose pool processes write under ``folder``,
    from a thread of the calling (main) process; None when the port is taken (logged:
    the worker works on, unscraped)."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=host, registry=worker_registry(folder))
    except OSError as exc:
        logger.error(
            "worker metrics exporter not started on %s:%d: %s "
            "(CXR_WORKER_METRICS_PORT: one port per worker on a host)",
            host,
            port,
            exc,
        )
        return None
    logger.info("worker metrics on http://%s:%d/metrics", host, port)
    return server


# --- the DICOM listener's metrics ------------------------------------------------------

_LISTENER_REGISTRY = CollectorRegistry()
_LISTENER_REFUSALS = Counter(
    "cxr_orient_dicom_refused",
    "Connections, associations and C-STOREs the DICOM listener refused or cut off, by reason.",
    ["reason"],
    registry=_LISTENER_REGISTRY,
)


def listener_refusals(reason: str) -> None:
    """Count one refusal of ``cxr-orient listen`` (``reason``: the limit or check)."""
    _LISTENER_REFUSALS.labels(reason=reason).inc()


def start_listener_exporter(*, host: str, port: int) -> Any | None:
    """Serve ``GET /metrics`` of ``cxr-orient listen`` from a thread (one process: no
    multiprocess folder); None when the port is taken (logged: it listens on)."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, addr=host, registry=_LISTENER_REGISTRY)
    except OSError as exc:
        logger.error(
            "listener metrics exporter not started on %s:%d: %s (CXR_DICOM_METRICS_PORT)",
            host,
            port,
            exc,
        )
        return None
    logger.info("listener metrics on http://%s:%d/metrics", host, port)
    return server


# --- the service's metrics, read at scrape time -----------------------------------------


class ServiceCollector(Collector):
    """Gauges computed when scraped: instances by status, the review backlog, the outbox
    by destination and status, the active model version, the broker's queue depth.

    ``queue_depth`` is handed in (the service passes ``worker.dispatch.broker_queue_depth``:
    the library does not know the broker). A database that does not answer makes
    ``cxr_orient_database_up`` 0 and leaves out the gauges read from it.
    """

    def __init__(self, queue_depth: Callable[[], int | None], queue_name: str) -> None:
        self._queue_depth = queue_depth
        self._queue_name = queue_name

    def collect(self) -> Iterator[Metric]:
        yield from self._from_database()
        depth = self._queue_depth()
        broker = GaugeMetricFamily(
            "cxr_orient_broker_up", "Whether the broker answered the queue depth query."
        )
        broker.add_metric([], 0.0 if depth is None else 1.0)
        yield broker
        if depth is not None:
            queue = GaugeMetricFamily(
                "cxr_orient_queue_depth", "Messages waiting in the broker queue.", labels=["queue"]
            )
            queue.add_metric([self._queue_name], float(depth))
            yield queue

    def _from_database(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "cxr_orient_database_up", "Whether the database answered the scrape's queries."
        )
        try:
            with session_scope() as session:
                statuses = crud.status_counts(session)
                review = crud.review_backlog(session)
                outbox = crud.outbox_summary(session)
                model = crud.active_model_version(session)
                model_name = model.name if model is not None else None
        except Exception as exc:  # any driver error: report the database down, not a 500
            logger.warning("metrics: database unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        instances = GaugeMetricFamily(
            "cxr_orient_instances", "Instances by status.", labels=["status"]
        )
        for status, n in sorted(statuses.items()):
            instances.add_metric([status], float(n))
        yield instances
        backlog = GaugeMetricFamily(
            "cxr_orient_review_backlog",
            "Instances whose current answer needs review and that have no label yet.",
        )
        backlog.add_metric([], float(review))
        yield backlog
        messages = GaugeMetricFamily(
            "cxr_orient_outbox_messages",
            "Outbox rows by destination and status.",
            labels=["destination", "status"],
        )
        oldest = GaugeMetricFamily(
            "cxr_orient_outbox_oldest_pending_seconds",
            "Age of the oldest pending outbox row, by destination.",
            labels=["destination"],
        )
        now = utcnow()
        for row in outbox:
            for status, n in (("pending", row.pending), ("sent", row.sent), ("failed", row.failed)):
                messages.add_metric([row.destination, status], float(n))
            if row.oldest_pending is not None:
                oldest.add_metric(
                    [row.destination], max(0.0, (now - _aware(row.oldest_pending)).total_seconds())
                )
        yield messages
        yield oldest
        info = InfoMetricFamily(
            "cxr_orient_active_model", "The model version in service (none: no active model)."
        )
        info.add_metric([], {"version": model_name or "none"})
        yield info


def _aware(moment: Any) -> Any:
    """SQLite hands back naive datetimes; they are UTC."""
    from datetime import UTC

    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def service_registry(queue_depth: Callable[[], int | None], queue_name: str) -> CollectorRegistry:
    """A registry holding only :class:`ServiceCollector` (not the process's default one)."""
    registry = CollectorRegistry()
    registry.register(ServiceCollector(queue_depth, queue_name))
    return registry
