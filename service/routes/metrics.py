"""``GET /metrics``: the service's Prometheus metrics, read from the database and the
broker when scraped (:class:`cxr_orient.metrics.ServiceCollector`). The workers' own
metrics are served by each worker (``CXR_WORKER_METRICS_PORT``, docs/operations.md).

Open like ``/healthz`` unless ``CXR_METRICS_TOKEN`` is set; then it wants that bearer
token (a scraper's ``authorization: credentials``)."""

from __future__ import annotations

import hmac
from functools import lru_cache

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from cxr_orient.metrics import service_registry
from service.deps import REALM, SettingsDep, bearer_token
from worker.dispatch import broker_queue_depth

router = APIRouter(tags=["metrics"])


@lru_cache(maxsize=1)
def _registry(queue_name: str) -> CollectorRegistry:
    return service_registry(broker_queue_depth, queue_name)


@router.get("/metrics", response_class=Response)
def scrape(request: Request, settings: SettingsDep) -> Response:
    """Prometheus text format. A plain ``def``: FastAPI runs it in its thread pool, so
    the queries and the broker round trip never hold the event loop."""
    if settings.http.metrics_token is not None:
        given = bearer_token(request) or ""
        if not hmac.compare_digest(
            given.encode(), settings.http.metrics_token.get_secret_value().encode()
        ):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                detail="GET /metrics wants the CXR_METRICS_TOKEN bearer token",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
    return Response(
        generate_latest(_registry(settings.worker.queue_name)), media_type=CONTENT_TYPE_LATEST
    )
