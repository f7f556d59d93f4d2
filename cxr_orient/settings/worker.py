"""The broker and the classification worker: the queue, batching, claims and their
leases, retries, time limits, task events and the worker's metrics exporter."""

from __future__ import annotations

from pydantic import Field, model_validator

from cxr_orient.settings.base import SettingsGroup

__all__ = ["DB_RETRY_MAX_WAIT_S", "SLOWEST_IMAGE_S", "SOFT_LIMIT_GRACE_S", "WorkerSettings"]

#: How long the worker waits for the database to come back before giving a batch up
#: (worker.pipeline.with_db_retry); the soft time limit's default rides it out.
DB_RETRY_MAX_WAIT_S = 300.0
#: The time budget per image in a batch: ten times the slowest decode measured (JPEG-LS,
#: ~100 ms at 2-3k px on the 2-core CI box, docs/performance.md).
SLOWEST_IMAGE_S = 1.0
#: Between the soft limit and the kill: time to record the unfinished images as timeouts.
SOFT_LIMIT_GRACE_S = 60.0


class WorkerSettings(SettingsGroup):
    """How a worker takes, claims and times its batches."""

    queue_name: str = Field(
        default="cxr-orient", description="CXR_QUEUE_NAME: Celery queue. Default cxr-orient."
    )
    batch_size: int = Field(
        default=32,
        ge=1,
        le=4096,
        description="CXR_BATCH_SIZE: most images per inference batch. Default 32.",
    )
    batch_max_wait_ms: int = Field(
        default=200,
        ge=0,
        le=60_000,
        description="CXR_BATCH_MAX_WAIT_MS: longest wait for a batch to fill. Default 200.",
    )
    prefetch_batches: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="CXR_PREFETCH_BATCHES: messages a worker takes from the broker ahead, in "
        "batches per pool process (CXR_PREFETCH_BATCHES x CXR_BATCH_SIZE x concurrency); "
        "0: unlimited, the workers running share a backlog out as it arrives. A bound "
        "(e.g. 2) leaves a backlog in the broker for workers started later. Default 0.",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        le=100,
        description="CXR_MAX_ATTEMPTS: an instance whose processing is interrupted this many "
        "times is failed. Default 3.",
    )
    processing_timeout_s: int = Field(
        default=600,
        ge=10,
        description="CXR_PROCESSING_TIMEOUT_S: the Redis visibility timeout: a message "
        "delivered to a worker that never acknowledged it (the worker died) is delivered "
        "again after this long. It no longer decides when stalled work is retried (the "
        "claim leases do: CXR_LEASE_S); keep it above the longest time a message can wait "
        "in a worker before its batch is written. Default 600.",
    )
    lease_s: float = Field(
        default=20.0,
        ge=2.0,
        le=3600.0,
        description="CXR_LEASE_S: a worker's claim on the instances of its batch is a lease "
        "of this many seconds, renewed every CXR_LEASE_RENEW_S while the batch runs; a claim "
        "not renewed for this long (its worker died, or lost the database) is re-queued and "
        "its worker's results are not recorded. Dead workers' work is retried within "
        "CXR_LEASE_S + CXR_LEASE_RENEW_S. Default 20.",
    )
    lease_renew_s: float = Field(
        default=5.0,
        gt=0.0,
        description="CXR_LEASE_RENEW_S: how often each pool process renews the leases it holds "
        "and re-queues lapsed ones (its own reaper). Below CXR_LEASE_S / 2. Default 5.",
    )
    broker_watch_s: float = Field(
        default=5.0,
        ge=0.0,
        le=300.0,
        description="CXR_BROKER_WATCH_S: how often each worker's main process looks at the "
        "Redis broker for lost messages: a restarted broker (a new run_id) or an empty one "
        "(queue and unacknowledged set) while the database has instances queued for longer "
        "than 3 x this gets those instances sent again (compare-and-set: once, whichever "
        "worker looks first). 0 turns it off (the beat's reaper and `cxr-orient requeue` "
        "remain). Default 5.",
    )
    task_soft_time_limit_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="CXR_TASK_SOFT_TIME_LIMIT_S: seconds a classification batch may run "
        "before it is stopped: the images it had not finished are recorded 'timeout' and "
        "sent again (at most CXR_MAX_ATTEMPTS tries, then failed 'timeout'); a read that "
        "hangs (stalled NFS) ends this way instead of holding its pool process. 0 turns it "
        "off. Default: 300 + CXR_BATCH_SIZE seconds (332 at batch 32): the 300 s a batch "
        "rides out a database outage for, plus 1 s per image, ten times the slowest "
        "decode measured (docs/operations.md, 'Time limits').",
    )
    task_time_limit_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="CXR_TASK_TIME_LIMIT_S: seconds after which a task's pool process is "
        "killed and replaced (its batch is re-sent by the reaper). 0 turns it off. "
        "Default: the soft limit + 60 s.",
    )
    task_events: bool = Field(
        default=True,
        description="CXR_TASK_EVENTS: workers send task events and senders 'task-sent' "
        "events, so Flower (celery -A worker flower) shows workers and tasks. Default "
        "true; false saves one event message per task.",
    )
    worker_metrics_host: str = Field(
        default="127.0.0.1",
        description="CXR_WORKER_METRICS_HOST: address a worker's metrics exporter listens "
        "on. Default 127.0.0.1.",
    )
    worker_metrics_port: int = Field(
        default=9808,
        ge=0,
        le=65_535,
        description="CXR_WORKER_METRICS_PORT: TCP port of a worker's Prometheus exporter "
        "(GET /metrics, served by the worker's main process for all its pool processes); "
        "0 turns it off. Give each worker on a host its own port. Default 9808.",
    )

    @model_validator(mode="after")
    def _soft_limit_below_hard(self) -> WorkerSettings:
        soft, hard = self.effective_task_soft_time_limit_s, self.effective_task_time_limit_s
        if soft is not None and hard is not None and soft >= hard:
            raise ValueError(
                f"CXR_TASK_SOFT_TIME_LIMIT_S ({soft:g}) must be below CXR_TASK_TIME_LIMIT_S "
                f"({hard:g}): the soft limit records the unfinished images, the hard one kills"
            )
        return self

    @model_validator(mode="after")
    def _lease_renewed_in_time(self) -> WorkerSettings:
        if self.lease_renew_s * 2 > self.lease_s:
            raise ValueError(
                f"CXR_LEASE_RENEW_S ({self.lease_renew_s:g}) must be at most half of "
                f"CXR_LEASE_S ({self.lease_s:g}): a live worker's lease would lapse between "
                "two renewals"
            )
        return self

    @property
    def effective_task_soft_time_limit_s(self) -> float | None:
        """CXR_TASK_SOFT_TIME_LIMIT_S, its default computed; None when off."""
        if self.task_soft_time_limit_s is None:
            return DB_RETRY_MAX_WAIT_S + self.batch_size * SLOWEST_IMAGE_S
        return self.task_soft_time_limit_s or None

    @property
    def effective_task_time_limit_s(self) -> float | None:
        """CXR_TASK_TIME_LIMIT_S, its default computed; None when off."""
        if self.task_time_limit_s is None:
            soft = self.effective_task_soft_time_limit_s
            return None if soft is None else soft + SOFT_LIMIT_GRACE_S
        return self.task_time_limit_s or None
