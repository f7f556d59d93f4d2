"""Claim leases in a pool process: renew the ones it holds, re-queue lapsed ones.

A claim on an instance is a lease (``instances.lease_expires_at``, ``claim_token``): while
a batch runs, this process renews the leases of its batch every ``CXR_LEASE_RENEW_S``
(a heartbeat), so a slow batch is never taken from a live worker. A worker that dies, or
is cut off from the database, stops renewing; its claims lapse after ``CXR_LEASE_S`` and
the first pool process of any worker to look re-queues them and sends their ids again
(:func:`db.crud.requeue_lapsed_claims`, a compare-and-set: each lapsed row is re-sent
once however many processes look). Every pool process looks, every
``CXR_LEASE_RENEW_S``, idle or not: recovery needs no beat and no particular worker.

The keeper is one daemon thread per pool process, started after fork
(:func:`start_keeper`, from :func:`worker.pipeline.on_process_start`). A process that
classifies without starting it (a test calling the pipeline in-process) only registers
its claims: nothing renews or reaps there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from cxr_orient.settings import WorkerSettings
from db import crud
from db.session import session_scope

logger = logging.getLogger(__name__)

Sender = Callable[[Sequence[int]], int]


class LeaseKeeper:
    """Renews the leases of the claims this process holds; re-queues lapsed claims."""

    def __init__(self, settings: WorkerSettings, send: Sender | None) -> None:
        self.lease_s = settings.lease_s
        self.renew_s = settings.lease_renew_s
        self._send = send
        self._lock = threading.Lock()
        #: claim token -> monotonic time its lease was last known to be ours until.
        self._held: dict[str, float] = {}
        self._lost: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.pid = os.getpid()

    # --- what the pipeline calls -------------------------------------------------------

    @contextlib.contextmanager
    def holding(self, claim_token: str) -> Iterator[None]:
        """Renew ``claim_token``'s lease for the ``with`` block (the claim was just made:
        its lease runs ``lease_s`` from now)."""
        with self._lock:
            self._held[claim_token] = time.monotonic() + self.lease_s
            self._lost.discard(claim_token)
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(claim_token, None)
                self._lost.discard(claim_token)

    def lost(self, claim_token: str) -> bool:
        """Whether this claim may have been taken over: its rows were found re-queued or
        claimed by another worker, or no renewal reached the database before the lease
        ran out (cut off). The recording compares the token anyway; this only lets a
        batch stop early instead of computing answers nobody will record."""
        with self._lock:
            if claim_token in self._lost:
                return True
            until = self._held.get(claim_token)
        return until is not None and time.monotonic() > until

    # --- the thread --------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.renew_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.renew_s):
            self.tick()

    def tick(self) -> None:
        """One round: renew what is held, then re-queue what lapsed (own claims renewed
        first, so a process that was slow to reach the database keeps its batch if
        nobody took it meanwhile)."""
        try:
            self.renew()
        except Exception:
            logger.warning(
                "could not renew claim leases (database unreachable?); "
                "results of a batch whose lease lapses are not recorded",
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )
        try:
            self.reap()
        except Exception:
            logger.warning(
                "could not re-queue lapsed claims this round",
                exc_info=logger.isEnabledFor(logging.DEBUG),
            )

    def renew(self) -> None:
        with self._lock:
            tokens = list(self._held)
        if not tokens:
            return
        asked = time.monotonic()
        renewed: dict[str, int] = {}
        with session_scope() as session:
            for token in tokens:
                renewed[token] = crud.renew_leases(
                    session, claim_tokens=[token], lease_s=self.lease_s
                )
        with self._lock:
            for token, rows in renewed.items():
                if token not in self._held:
                    continue  # the batch ended meanwhile
                if rows:
                    # Counted from when we asked: the commit came later, never earlier.
                    self._held[token] = asked + self.lease_s
                else:
                    self._lost.add(token)

    def reap(self) -> int:
        """Re-queue lapsed claims and send their ids; returns how many. Sent inside the
        transaction: if the broker refuses, the rows stay lapsed for the next round."""
        with session_scope() as session:
            ids = crud.requeue_lapsed_claims(session, lease_s=self.lease_s)
            if ids and self._send is not None:
                self._send(ids)
        if ids:
            logger.warning(
                "re-queued %d instances whose claim lapsed (their worker stopped "
                "renewing it for %gs): %s",
                len(ids),
                self.lease_s,
                ids[:20] if len(ids) > 20 else ids,
            )
        return len(ids)


_KEEPER: LeaseKeeper | None = None


def keeper(settings: WorkerSettings) -> LeaseKeeper:
    """This process's keeper (one inherited through fork belongs to the parent: a new one
    is made)."""
    global _KEEPER
    if _KEEPER is None or _KEEPER.pid != os.getpid():
        from worker.dispatch import send_instances

        _KEEPER = LeaseKeeper(settings, send_instances)
    return _KEEPER


def start_keeper(settings: WorkerSettings) -> LeaseKeeper:
    """Start this pool process's keeper thread (after fork): it renews while a batch runs
    and reaps lapsed claims, idle or not."""
    found = keeper(settings)
    found.start()
    return found
