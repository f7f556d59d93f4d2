"""The HTTP service (``cxr-orient serve``): FastAPI + uvicorn.

One router module per domain under ``service.routes`` (``health``: liveness and
readiness; ``stow``: STOW-RS in; the review page, users and metrics go beside them),
dependencies for the settings, the database session and the caller in
``service.deps``. It may import the ``cxr_orient`` library, ``db`` and
``worker.dispatch``; nothing imports it but the CLI's ``serve`` verb.
"""

from service.app import create_app

__all__ = ["create_app"]
