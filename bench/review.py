"""How fast the review page answers with 100,000 answers in PostgreSQL:
``python -m bench.review``.

Fills a temporary PostgreSQL database (``CXR_TEST_PG_ADMIN``, default
postgresql://postgres@127.0.0.1:5432/test) in bulk: N instances in N/2 studies, each
answered by the model in service over the last 90 days, about 8 % flagged
``needs_review`` (some of them with the header disagreeing), the oldest tenth of the
flagged ones already reviewed (labels), so the queue must skip them as it would after
weeks of use. The instances point at a few real-size DICOM files (2000 x 1600, 12 bits,
written once under a temporary ingest root, their SHA-256 recorded), so an image is
decoded from a real file. Planner statistics are refreshed (``ANALYZE``).

Then a real ``cxr-orient serve`` process is started on a free port and driven over HTTP
by one logged-in reviewer (httpx, keep-alive), timing each request end to end:

- ``queue page``: ``GET /review`` (50 rows);
- ``next item page``: ``GET /review/items/{id}`` of successive queue entries (the page a
  decision redirects to: its answer, its labels, the next item for the prefetch);
- ``next image, first request``: ``GET .../images/model.png`` of an instance not yet
  rendered (checked read, hash, two decodes, two PNGs);
- ``next image, prefetched``: the same again (the item page prefetches its successor's
  images, so this is what the reviewer waits for after a decision);
- ``decision``: ``POST /review/items/{id}/label`` (the label row, then the next item).

Writes ``bench/results/review-<machine>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.pgdb import temporary_pg_database
from bench.services import serving

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench reviewer password"
FILES = 12
SHAPE = (2000, 1600)


def _configure(url: str, root: Path, data: Path) -> dict[str, str]:
    from cxr_orient.settings import reset_settings_cache
    from db.session import dispose_engines

    values = {"CXR_DATABASE_URL": url, "CXR_INGEST_ROOT": str(root), "CXR_DATA_DIR": str(data)}
    os.environ.update(values)
    reset_settings_cache()
    dispose_engines()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CXR_")}
    env.update(values)
    env["CXR_LOG_LEVEL"] = "WARNING"
    return env


def _files(root: Path) -> list[tuple[str, str, int]]:
    """Real-size DICOM files: (path, sha256, size)."""
    from bench.dicom_factory import make_dicom, real_pixels

    out = []
    for i, pixels in enumerate(real_pixels(FILES, shape=SHAPE, bits=12, seed=7)):
        path = make_dicom(
            root / f"bench-{i}.dcm",
            pixels,
            patient_id="BENCH",
            sop_uid=f"1.2.826.0.1.3680043.8.498.55.{i}",
        )
        data = path.read_bytes()
        out.append((str(path), hashlib.sha256(data).hexdigest(), len(data)))
    return out


def _populate(n: int, files: list[tuple[str, str, int]]) -> dict[str, int]:
    from sqlalchemy import insert, text

    from cxr_orient.users import create_user
    from db import crud
    from db.models import (
        GroundTruthLabel,
        Instance,
        InstanceStatus,
        LabelValue,
        OrientationLabel,
        Prediction,
        Study,
    )
    from db.session import get_engine, session_scope

    now = datetime.now(UTC)
    with session_scope() as session:
        version = crud.register_model_version(
            session,
            name="compact-v1",
            architecture="compact",
            file_path="/models/c.keras",
            sha256="a" * 64,
            input_size=256,
            labels=["frontal", "lateral"],
            temperature=1.0,
            review_threshold=0.9,
            metrics={},
            training={},
            actor="bench",
            reason="bench",
        )
        crud.activate_model_version(session, version=version, actor="bench", reason="bench")
        version_id = version.id
        create_user(session, username="bench", role="reviewer", password=PASSWORD)
    flagged = [i for i in range(1, n + 1) if i % 12 == 0]
    reviewed = set(flagged[: len(flagged) // 10])
    step = 10_000
    for start in range(1, n + 1, step):
        ids = range(start, min(n, start + step - 1) + 1)
        studies = [
            dict(
                id=s,
                study_instance_uid=f"1.2.826.0.1.3680043.8.498.56.{s}",
                patient_id=f"P{s}",
                created_at=now,
            )
            for s in sorted({(i + 1) // 2 for i in ids})
        ]
        instances, answers, labels = [], [], []
        for i in ids:
            path, sha, size = files[i % len(files)]
            when = now - timedelta(days=90) + timedelta(seconds=90 * 86400 * i / n)
            instances.append(
                dict(
                    id=i,
                    study_id=(i + 1) // 2,
                    sop_instance_uid=f"1.2.826.0.1.3680043.8.498.57.{i}",
                    file_path=path,
                    file_sha256=sha,
                    file_size=size,
                    modality="DX",
                    header_view_position="PA" if i % 3 else "LL",
                    status=InstanceStatus.done,
                    attempts=1,
                    enqueued_at=when,
                    finished_at=when,
                    updated_at=when,
                )
            )
            review = i % 12 == 0
            agrees = None if i % 7 == 0 else i % 50 != 0
            answers.append(
                dict(
                    instance_id=i,
                    model_version_id=version_id,
                    file_sha256=sha,
                    label=OrientationLabel.frontal if i % 3 else OrientationLabel.lateral,
                    confidence=0.6 if review else 0.99,
                    p_frontal=0.6,
                    p_lateral=0.4,
                    header_agrees=agrees,
                    needs_review=review,
                    review_reason="low_confidence" if review else None,
                    created_at=when,
                )
            )
            if i in reviewed:
                labels.append(
                    dict(
                        instance_id=i,
                        label=LabelValue.frontal,
                        source="review",
                        annotator="bench",
                        created_at=when,
                    )
                )
        with session_scope() as session:
            if studies:
                session.execute(insert(Study), studies)
            session.execute(insert(Instance), instances)
            session.execute(insert(Prediction), answers)
            if labels:
                session.execute(insert(GroundTruthLabel), labels)
    with get_engine().connect() as conn:
        for table in ("studies", "instances", "predictions", "labels"):
            conn.execute(
                text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"(SELECT max(id) FROM {table}))"
                )
            )
        conn.execute(text("ANALYZE"))
        conn.commit()
    return {"instances": n, "flagged": len(flagged), "already_reviewed": len(reviewed)}


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    if not found:
        raise RuntimeError("no CSRF field on the page")
    return found.group(1)


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "n": len(ms),
        "p50_ms": statistics.median(ordered),
        "p95_ms": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
        "max_ms": ordered[-1],
        "mean_ms": statistics.fmean(ordered),
    }


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


def _index_scans(url: str) -> int:
    import psycopg

    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        row = conn.execute(
            "SELECT idx_scan FROM pg_stat_user_indexes "
            "WHERE indexrelname = 'ix_predictions_review_queue'"
        ).fetchone()
    return int(row[0]) if row else 0


def _drive(base: str, requests: int) -> dict[str, Any]:
    import httpx

    out: dict[str, list[float]] = {
        k: []
        for k in (
            "queue page",
            "next item page",
            "next image, first request",
            "next image, prefetched",
            "decision",
        )
    }
    with httpx.Client(base_url=base, timeout=60) as client:
        login = client.get("/login")
        done = client.post(
            "/login",
            data={"username": "bench", "password": PASSWORD, "csrf_token": _csrf(login.text)},
        )
        if done.status_code != 303:
            raise RuntimeError(f"login failed: HTTP {done.status_code}")
        for _ in range(5):  # warm: connections, templates, the first queries
            client.get("/review").raise_for_status()
        for _ in range(requests):
            ms, answer = _timed(client.get, "/review")
            answer.raise_for_status()
            out["queue page"].append(ms)
        queue = client.get("/api/v1/review/queue", params={"limit": requests + 1}).json()
        ids = [item["instance_id"] for item in queue["items"]]
        page = ""
        for instance_id in ids[:requests]:
            ms, answer = _timed(client.get, f"/review/items/{instance_id}")
            answer.raise_for_status()
            page = answer.text
            out["next item page"].append(ms)
            url = f"/api/v1/review/items/{instance_id}/images/model.png"
            ms, answer = _timed(client.get, url)
            answer.raise_for_status()
            out["next image, first request"].append(ms)
            ms, answer = _timed(client.get, url)
            answer.raise_for_status()
            out["next image, prefetched"].append(ms)
        csrf = _csrf(page)
        for instance_id in ids[:requests]:
            ms, answer = _timed(
                client.post,
                f"/review/items/{instance_id}/label",
                data={"decision": "frontal", "filter": "flagged", "csrf_token": csrf},
            )
            if answer.status_code != 303:
                raise RuntimeError(f"decision refused: HTTP {answer.status_code}")
            out["decision"].append(ms)
    return {k: _summary(v) for k, v in out.items()}


def run(*, instances: int, requests: int, machine: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder, temporary_pg_database() as url:
        root, data = Path(folder) / "archive", Path(folder) / "data"
        root.mkdir()
        env = _configure(url, root.resolve(), data.resolve())
        from db.migrate import upgrade

        upgrade(url)
        build_start = time.perf_counter()
        files = _files(root)
        counts = _populate(instances, files)
        build_s = time.perf_counter() - build_start
        scans_before = _index_scans(url)
        with serving(env, Path(folder) / "serve.log", timeout=120) as base:
            timings = _drive(base, requests)
        scans = _index_scans(url) - scans_before
    return {
        "machine": machine,
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "database": "PostgreSQL (temporary database, local socket over TCP)",
        "file_shape": list(SHAPE),
        "build_s": build_s,
        **counts,
        "requests_per_measure": requests,
        "queue_index_scans": scans,
        "timings": timings,
    }


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    name = f"review-{results['machine']}"
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Review page latency",
        "",
        f"`python -m bench.review` on {results['machine']} ({results['cpus']} cores, Python "
        f"{results['python']}), {results['date']}, load average {results['load_average']} "
        "(a box shared with other work: figures are noisy).",
        "",
        f"{results['instances']:,} answers in PostgreSQL ({results['flagged']:,} flagged "
        f"`needs_review`, the oldest {results['already_reviewed']:,} of them already "
        "reviewed), inserted in bulk, then `ANALYZE`; images decoded from real-size files "
        f"({results['file_shape'][0]} x {results['file_shape'][1]}, 12 bits, explicit VR "
        f"little endian). A real `cxr-orient serve` process, one logged-in reviewer over "
        f"HTTP keep-alive, {results['requests_per_measure']} requests per line, timed end "
        "to end by the client. The queue's partial index (`ix_predictions_review_queue`) "
        f"was scanned {results['queue_index_scans']:,} times during the run.",
        "",
        "| request | n | p50 ms | p95 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, s in results["timings"].items():
        lines.append(
            f"| {key} | {s['n']} | {s['p50_ms']:.1f} | {s['p95_ms']:.1f} | {s['max_ms']:.1f} |"
        )
    lines += ["", f"Building the database took {results['build_s']:.0f} s.", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--machine", default=f"cpu-{os.cpu_count()}core-{platform.machine()}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    results = run(instances=args.instances, requests=args.requests, machine=args.machine)
    _write(results, args.out)
    print((args.out / f"review-{results['machine']}.md").read_text())


if __name__ == "__main__":
    main()
