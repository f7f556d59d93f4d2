"""The benchmark's pure parts on a tiny corpus (no timing assertions: targets live in
the report, never in tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom

from bench.corpus import build_corpus, clone_with_new_uids
from bench.measure import decode_comparison
from bench.run import summarise, to_markdown, write_results


def test_corpus_covers_syntaxes_and_photometrics(tmp_path: Path) -> None:
    items = build_corpus(
        tmp_path, per_syntax=2, scale=0.12, syntaxes=("explicit-le", "rle", "j2k-lossless")
    )
    assert {i.syntax for i in items} == {"explicit-le", "rle", "j2k-lossless"}
    assert {i.photometric for i in items} == {"MONOCHROME1", "MONOCHROME2"}
    for item in items:
        ds = pydicom.dcmread(item.path, stop_before_pixels=True)
        assert (ds.Rows, ds.Columns) == (item.rows, item.columns)
        assert ds.BitsStored == item.bits_stored


def test_clone_gets_new_uids(tmp_path: Path) -> None:
    (item,) = build_corpus(tmp_path / "c", per_syntax=1, scale=0.1, syntaxes=("explicit-le",))
    copy = clone_with_new_uids(
        item.path, tmp_path / "s" / "1.dcm", study_uid="1.2.3", patient_id="X"
    )
    a, b = pydicom.dcmread(item.path), pydicom.dcmread(copy)
    assert a.SOPInstanceUID != b.SOPInstanceUID and b.StudyInstanceUID == "1.2.3"
    assert a.PixelData == b.PixelData


def test_decode_comparison_and_report(tmp_path: Path) -> None:
    items = build_corpus(
        tmp_path / "c", per_syntax=1, scale=0.25, syntaxes=("explicit-le", "j2k-lossless")
    )
    decode = decode_comparison(items, repeats=1)
    assert set(decode["by_syntax"]) == {"explicit-le", "j2k-lossless"}
    assert decode["by_syntax"]["explicit-le"]["max_pixel_diff"] <= 1
    results: dict[str, Any] = {
        "machine": "test",
        "decode": decode,
        "decode_capacity_images_per_s": 10.0,
        "model_images_per_s": {"compact": {"32": 100.0}},
        "baseline": {"per_image": {"images_per_s": 2.0}, "batch32": {"images_per_s": 3.0}},
    }
    results["summary"] = summarise(results)
    assert results["summary"]["decode_capacity"] == 10.0
    assert "explicit-le" in to_markdown(results)
    json_path, md_path = write_results(results, tmp_path / "out", "test")
    assert json_path.is_file() and md_path.read_text().startswith("# cxr-orient bench")


def test_network_ingest_is_summarised_against_the_worker_rate(tmp_path: Path) -> None:
    results: dict[str, Any] = {
        "machine": "test",
        "decode": {"by_syntax": {}, "files": []},
        "decode_capacity_images_per_s": 10.0,
        "model_images_per_s": {"compact": {"32": 100.0}},
        "baseline": {"per_image": {"images_per_s": 2.0}, "batch32": {"images_per_s": 3.0}},
        "network": {
            "files": 60,
            "megabytes": 240.0,
            "senders": 4,
            "broker": "filesystem",
            "folder_instances_per_s": 80.0,
            "listen_acknowledged_per_s": 40.0,
            "listen_recorded_per_s": 30.0,
            "spool_disk_durable_mb_per_s": 200.0,
            "disk_bound_instances_per_s": 50.0,
            "listen_megabytes_per_s": 120.0,
            "raw_dsync_mb_per_s": 240.0,
            "uncompressed": {
                "files": 60,
                "megabytes": 600.0,
                "senders": 4,
                "syntaxes": ["explicit-le"],
                "folder_instances_per_s": 40.0,
                "listen_acknowledged_per_s": 12.0,
                "listen_recorded_per_s": 11.0,
                "listen_megabytes_per_s": 110.0,
                "spool_disk_durable_mb_per_s": 200.0,
                "disk_bound_instances_per_s": 20.0,
            },
            "end_to_end": {
                "files": 60,
                "senders": 4,
                "study_quiet_s": 1.0,
                "sent_s": 5.0,
                "last_sr_s": 20.0,
                "srs_stored": 60,
                "complete": True,
                "images_per_s": 3.0,
            },
        },
    }
    summary = summarise(results)
    # No pipeline in this run: the worker's rate comes from the committed 2-core results.
    assert summary["worker_rate_source"].startswith("cpu-2core-x86_64.json")
    assert summary["listen_recorded_per_s"] == 30.0
    assert summary["listen_vs_disk_bound"] == 30.0 / 50.0
    assert summary["target_listen_3x_worker"] is (summary["listen_vs_worker"] >= 3)
    results["summary"] = summary
    assert summary["listen_uncompressed_recorded_per_s"] == 11.0
    assert summary["listen_mb_per_s_vs_raw_dsync"] == 0.5
    assert summary["end_to_end_images_per_s"] == 3.0
    markdown = to_markdown(results)
    assert "| enqueue from a folder | 80.0 |" in markdown
    assert "| uncompressed | explicit-le | 60 | 600.0 | 10.00 | 40.0 | 12.0 | 11.0 |" in markdown
    assert "`dd bs=4M oflag=dsync`, one writer): 240.0 MB/s" in markdown
    assert "| images/s end to end | 3.0 |" in markdown
