"""bench.archive: named archive mixes and the film sets drawn from them (the weights are
what the GPU-node figures are averaged over, so their arithmetic is checked here)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.archive import MIXES, Mix, archive_set, parse_mix
from bench.corpus import CorpusItem


def _items() -> list[CorpusItem]:
    out = []
    for syntax in ("jpeg-lossless", "j2k-lossless", "explicit-le"):
        for k, view in enumerate(("frontal", "lateral", "frontal", "lateral")):
            out.append(
                CorpusItem(
                    Path(f"/x/{syntax}-{k}.dcm"), syntax, "MONOCHROME2", 12, 2500, 2048, view, False
                )
            )
    return out


@pytest.mark.parametrize("films", [1, 7, 10_000, 10_001])
def test_counts_follow_the_weights_and_sum_to_the_films(films: int) -> None:
    for mix in MIXES.values():
        counts = mix.counts(films)
        assert sum(counts.values()) == films
        total = sum(mix.weights.values())
        for name, weight in mix.weights.items():
            assert abs(counts[name] - films * weight / total) < 1, (mix.name, counts)


def test_every_named_mix_says_where_its_weights_come_from() -> None:
    assert {"lossless-archive", "lossy-archive"} <= set(MIXES)
    assert "jpeg-lossless" in MIXES["lossless-archive"].weights  # 1.2.840.10008.1.2.4.70
    for mix in MIXES.values():
        assert abs(sum(mix.weights.values()) - 1) < 1e-9 and len(mix.source) > 40


def test_a_set_has_the_mix_shares_in_studies_of_two_in_shuffled_order() -> None:
    mix = MIXES["lossless-archive"]
    films = archive_set(_items(), mix, 10_000, seed=3)
    assert Counter(item.syntax for item, _ in films) == Counter(mix.counts(10_000))
    studies = Counter(study for _, study in films)
    assert set(studies.values()) == {2}
    first = [item.syntax for item, _ in films[:200]]
    assert len(set(first)) == 3  # not one syntax after another
    assert archive_set(_items(), mix, 10_000, seed=3) == films


def test_a_mix_needs_its_syntaxes_in_the_corpus() -> None:
    with pytest.raises(ValueError, match="htj2k-lossy"):
        archive_set(_items(), MIXES["lossy-archive"], 100)


def test_a_site_gives_its_own_census() -> None:
    mix = parse_mix("site=jpeg-lossless:7, explicit-le:3")
    assert mix == Mix(
        "site", {"jpeg-lossless": 7.0, "explicit-le": 3.0}, "given on the command line"
    )
    assert mix.counts(10) == {"jpeg-lossless": 7, "explicit-le": 3}
    for bad in ("site", "site=jpeg-lossless", "=a:1", "site=a:-1"):
        with pytest.raises(ValueError):
            parse_mix(bad)


def test_where_the_start_up_went_is_read_from_the_worker_log() -> None:
    from bench.gpu_archive import startup_phases

    log = "\n".join(
        [
            "[2026-12-07 01:00:01,000: INFO/MainProcess] started 1 inference process(es)",
            "[2026-12-07 01:00:09,000: INFO/inference-77] inference process 77 loaded "
            "compact-invariant-64-v3.keras in 2.5 s",
            "[2026-12-07 01:00:14,000: INFO/inference-77] inference process 77 compiled batch "
            "sizes [64, 256, 1024] in 4.2 s",
            "[2026-12-07 01:00:15,000: INFO/ForkPoolWorker-1] worker process w1 serving model "
            "compact-invariant-64-v3, decoding on the card (nvImageCodec 0.9.0) (model ready in "
            "12.0 s, decoding in 12.1 s)",
            "[2026-12-07 01:00:16,000: INFO/ForkPoolWorker-2] worker process w2 serving model "
            "compact-invariant-64-v3, decoding on the CPU (model ready in 13.5 s, decoding in "
            "13.5 s)",
        ]
    )
    assert startup_phases(log) == {
        "pool_model_ready_s_max": 13.5,
        "pool_decoding_ready_s_max": 13.5,
        "served_load_s": 2.5,
        "served_compile_s": 4.2,
        "served_compiled_sizes": "64, 256, 1024",
    }
    assert startup_phases("")["pool_model_ready_s_max"] is None
