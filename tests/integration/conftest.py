"""Integration tier: real Redis, real PostgreSQL/SQLite, real worker processes.

Fixtures only; the corpus builders live in :mod:`tests.utils.corpus`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.utils.env import flush_redis_db, redis_available

pytestmark = pytest.mark.integration

#: The Redis database the integration tests use (0 is left to humans). Parallel runs
#: from several checkouts on one machine each set CXR_TEST_REDIS_DB to their own number;
#: under pytest-xdist each test process takes the next number up (gw0 the base, gw1 +1).
REDIS_DB = int(os.environ.get("CXR_TEST_REDIS_DB", "11")) + int(
    os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


@pytest.fixture
def redis_url() -> Iterator[str]:
    if not redis_available():
        pytest.fail("Redis is not running on 127.0.0.1:6379 (.ci/run starts it)")
    flush_redis_db(REDIS_DB)
    yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    flush_redis_db(REDIS_DB)
