"""The FastAPI application: its routers, and nothing else."""

from __future__ import annotations

from fastapi import FastAPI

from service.routes import health, metrics, stow


def create_app() -> FastAPI:
    app = FastAPI(
        title="cxr-orient",
        summary="Frontal vs lateral classification of chest radiographs: STOW-RS in, health.",
        version="0.1.0",
    )
    app.include_router(health.router)
    app.include_router(stow.router)
    app.include_router(metrics.router)
    return app
