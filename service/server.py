"""Running the service: uvicorn on CXR_HTTP_HOST:CXR_HTTP_PORT (or the CLI's options),
with the sweep that releases held studies once quiet running beside it."""

from __future__ import annotations

import threading

import uvicorn

from cxr_orient.settings import Settings
from cxr_orient.studies import run_release_loop
from service.app import create_app
from service.connections import guarded_protocol
from worker.dispatch import send_instances


def serve(settings: Settings, *, host: str, port: int) -> None:
    """Serve until interrupted. Uvicorn's access log is off: a DICOMweb URL names a study
    (see service.routes.stow); logging stays as the CLI configured it.

    Instances received by STOW-RS are held until their study is quiet
    (``CXR_STUDY_QUIET_S``); a thread of this process releases them, so a study sent here
    is classified without a celery beat (the beat's sweep, where one runs, is the same
    compare-and-set and sends each instance once).

    The connections are uvicorn's h11 protocol with a cap and deadlines
    (:mod:`service.connections`); request bodies are bounded by :mod:`service.limits`."""
    stop = threading.Event()
    sweeper = threading.Thread(
        target=run_release_loop,
        args=(send_instances, stop, settings.intake),
        name="release-quiet-studies",
        daemon=True,
    )
    sweeper.start()
    try:
        # proxy_headers off: uvicorn would otherwise believe X-Forwarded-For from
        # 127.0.0.1 and rewrite the client's address; service.clients is the one rule.
        uvicorn.run(
            create_app(),
            host=host,
            port=port,
            access_log=False,
            log_config=None,
            log_level=settings.logs.log_level.lower(),
            server_header=False,
            proxy_headers=False,
            http=guarded_protocol(settings),
        )
    finally:
        stop.set()
        sweeper.join(timeout=5)
