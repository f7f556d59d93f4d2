"""The logging rule every entry point applies: third-party libraries that may log patient
or study data are capped at WARNING.

highdicom logs ``copy Patient-related attributes from dataset "<SOPInstanceUID>"`` at INFO
once per Structured Report; pynetdicom and dicomweb-client log association details and
URLs (which name studies) at INFO. docs/security.md promises logs without UIDs, so these
loggers get WARNING at INFO and above (CXR_LOG_LEVEL, ``--loglevel``): only a run at
DEBUG (``-v``), which is for debugging and says so, hears them. The CLI's logging setup
and the worker's (celery's ``after_setup_logger``) call :func:`cap_third_party_loggers`;
a new entry point calls it too.
"""

from __future__ import annotations

import logging

__all__ = ["PHI_LOGGERS", "cap_third_party_loggers"]

#: Loggers of libraries that put UIDs, names or URLs naming studies in their INFO/DEBUG
#: records. Their warnings and errors still pass.
PHI_LOGGERS = ("highdicom", "pydicom", "pynetdicom", "dicomweb_client")


def cap_third_party_loggers(*, debugging: bool = False) -> None:
    """Let :data:`PHI_LOGGERS` emit only warnings and errors (everything when
    ``debugging``); idempotent."""
    for name in PHI_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if debugging else logging.WARNING)
