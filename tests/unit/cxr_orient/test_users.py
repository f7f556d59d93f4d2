"""Password hashes at the product's cost: the other tests hash at argon2's lowest
(tests/conftest.py ``cheap_password_hashes``); this one sees the real hasher, the one that
also made the dummy hash an unknown username is checked against."""

from __future__ import annotations

import pytest
from argon2 import extract_parameters
from argon2.profiles import RFC_9106_LOW_MEMORY

from cxr_orient.users import hash_password


@pytest.mark.production_hash
def test_passwords_are_hashed_at_rfc_9106_low_memory_cost() -> None:
    made = hash_password("correct horse battery staple")
    assert made.startswith("$argon2id$")
    assert extract_parameters(made) == RFC_9106_LOW_MEMORY
