"""The inference process's batch buckets on a card: three programs to compile at start
(64, 256, 1024), not eight, and every joined batch fits one."""

from __future__ import annotations

from cxr_orient.serving.server import card_bucket


def test_powers_of_four_from_64_capped_at_the_largest_joined_batch() -> None:
    assert sorted({card_bucket(n, 1024) for n in range(1, 1025)}) == [64, 256, 1024]
    assert sorted({card_bucket(n, 2048) for n in range(1, 2049)}) == [64, 256, 1024, 2048]
    assert all(card_bucket(n, 1024) >= n for n in range(1, 1025))
    assert card_bucket(3000, 1024) == 3000  # one request larger than the cap: as it is
