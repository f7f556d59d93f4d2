"""Integration tier: real Redis, real PostgreSQL/SQLite, real worker processes.

Fixtures only; the corpus builders live in :mod:`tests.utils.corpus`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.utils.env import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_available

pytestmark = pytest.mark.integration

#: The Redis database the integration tests use (0 is left to humans). Parallel runs
#: from several checkouts on one machine each set CXR_TEST_REDIS_DB to their own number;
#: under pytest-xdist each test process takes the next number up (gw0 the base, gw1 +1).
REDIS_DB = int(os.environ.get("CXR_TEST_REDIS_DB", "11")) + int(
    os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0
)


@pytest.fixture
def redis_url() -> Iterator[str]:
    if not redis_available():
        pytest.fail(f"Redis is not running on {REDIS_HOST}:{REDIS_PORT} (.ci/run starts it)")
    flush_redis_db(REDIS_DB)
    yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_DB}"
    flush_redis_db(REDIS_DB)
