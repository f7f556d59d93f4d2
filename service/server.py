"""Running the service: uvicorn on CXR_HTTP_HOST:CXR_HTTP_PORT (or the CLI's options)."""

from __future__ import annotations

import uvicorn

from service.app import create_app


def serve(*, host: str, port: int, log_level: str) -> None:
    """Serve until interrupted. Uvicorn's access log is off: a DICOMweb URL names a study
    (see service.routes.stow); logging stays as the CLI configured it."""
    uvicorn.run(create_app(), host=host, port=port, access_log=False, log_config=None,
                log_level=log_level.lower(), server_header=False)
