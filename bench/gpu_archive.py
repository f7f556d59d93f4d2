"""The GPU node on archive mixes, per syntax and per layout, in one call (issue 23).

``python -m bench.gpu_archive --model M --out DIR --carried FOLDER [--films N]`` on the
lent GPU with ``KERAS_BACKEND=jax`` (``scripts/gpu_archive.sh``):

1. the bench corpus, JPEG lossless SV1 among it (files this machine cannot encode from
   ``--carried``);
2. agreement: each card-decodable file through the CPU path and through the card;
3. per syntax: the card alone (one process, batches of 64) and the CPU decode of 16
   processes (``load_dicom_image``), images/s;
4. per archive mix (:data:`bench.archive.MIXES`), ``--films`` films recorded and then
   sent at once through Redis to a real worker, per layout: the 16-core CPU node
   (prefork, the model in every pool process, the card hidden), the GPU node with CPU
   decoding and with card decoding (``CXR_INFERENCE=served``: one inference process on
   the card, the pool processes decode). Whole run (send to last result), sustained
   (10th to 90th percentile of results), the worker's start-up (launch to every pool
   process serving), the card's busy share, and the answers against the CPU node's.

Writes ``DIR/<machine>-gpu-archive.json`` after each step (a cut-off keeps what was done)
and a Markdown summary, ``DIR/<machine>-gpu-archive.md``, at the end.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.archive import MIXES, Mix, archive_set, parse_mix, record_archive
from bench.corpus import CorpusItem
from bench.gpu_decode import (
    StepLog,
    UtilisationSampler,
    agreement,
    card_rates,
    fresh_database,
    parallel_corpus,
    time_split,
)

logger = logging.getLogger(__name__)
_SPAWN = multiprocessing.get_context("spawn")

#: Everything the corpus holds here; the carried folder adds what cannot be encoded.
SYNTAXES = (
    "explicit-le",
    "jpeg-lossless",
    "j2k-lossless",
    "j2k-lossy",
    "jpeg-baseline",
    "htj2k-lossless",
    "htj2k-lossy",
    "jpeg-ls",
    "rle",
)
#: What the card can be given (``CXR_CARD_SYNTAXES`` names, corpus names here).
ON_CARD = (
    "explicit-le",
    "jpeg-lossless",
    "j2k-lossless",
    "j2k-lossy",
    "jpeg-baseline",
    "htj2k-lossless",
    "htj2k-lossy",
)


def cpu_rates(
    items: Sequence[CorpusItem],
    *,
    processes: int,
    per_process: int = 4,
    syntaxes: Sequence[str] | None = None,
    decoders_off: Sequence[str] = (),
) -> dict[str, float]:
    """Images/s of ``processes`` processes decoding each syntax's files on the CPU (the
    worker's fast path), after one untimed round; ``decoders_off`` as
    CXR_CPU_DECODERS_OFF (the fallback's figure beside the chosen decoder's)."""
    from bench.measure import decode_rate
    from cxr_orient.imaging.decoders import turn_off

    out: dict[str, float] = {}
    with ProcessPoolExecutor(
        max_workers=processes,
        mp_context=_SPAWN,
        initializer=turn_off,
        initargs=(tuple(decoders_off),),
    ) as pool:
        for name in sorted({i.syntax for i in items}):
            if syntaxes is not None and name not in syntaxes:
                continue
            files = [i.path for i in items if i.syntax == name]
            work = (files * (processes * per_process // len(files) + 1))[: processes * per_process]
            out[name] = decode_rate(pool, work, warm_up=processes)
    return out


def answers(ids: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Per corpus file: its films' labels and the range of p_lateral."""
    from sqlalchemy import select

    from db.models import Instance, Prediction
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(Instance.file_path, Prediction.label, Prediction.p_lateral)
            .join(Prediction, Prediction.instance_id == Instance.id)
            .where(Instance.id.in_(list(ids)))
        ).all()
    out: dict[str, dict[str, Any]] = {}
    for path, label, p in rows:
        entry = out.setdefault(Path(path).name, {"labels": set(), "p": []})
        entry["labels"].add(str(getattr(label, "value", label)))
        entry["p"].append(float(p))
    return {
        name: {
            "labels": sorted(e["labels"]),
            "p_min": min(e["p"]),
            "p_max": max(e["p"]),
            "films": len(e["p"]),
        }
        for name, e in out.items()
    }


def compare(
    reference: dict[str, dict[str, Any]], other: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Labels equal and the largest p_lateral difference, corpus file by corpus file."""
    same, diff = 0, 0.0
    for name, ref in reference.items():
        got = other.get(name)
        if got is None:
            continue
        same += ref["labels"] == got["labels"] and len(ref["labels"]) == 1
        diff = max(diff, abs(ref["p_min"] - got["p_min"]), abs(ref["p_max"] - got["p_max"]))
    return {"files": len(reference), "same_labels": same, "max_p_diff": diff}


_READY = re.compile(r"model ready in ([0-9.]+) s, decoding in ([0-9.]+) s")
_LOADED = re.compile(r"inference process \d+ loaded \S+ in ([0-9.]+) s")
_COMPILED = re.compile(r"inference process \d+ compiled batch sizes \[([0-9, ]*)\] in ([0-9.]+) s")


def startup_phases(log_text: str) -> dict[str, Any]:
    """Where a worker's start-up went, from its log: the slowest pool process's model
    (loaded and compiled, or served) and decoding set-up (both from its start, run side
    by side), and the inference process's load and compile times."""
    ready = [(float(a), float(b)) for a, b in _READY.findall(log_text)]
    loaded = [float(x) for x in _LOADED.findall(log_text)]
    compiled = _COMPILED.findall(log_text)
    return {
        "pool_model_ready_s_max": max((a for a, _ in ready), default=None),
        "pool_decoding_ready_s_max": max((b for _, b in ready), default=None),
        "served_load_s": max(loaded, default=None),
        "served_compile_s": max((float(t) for _, t in compiled), default=None),
        "served_compiled_sizes": compiled[0][0] if compiled else None,
    }


def _layouts(cores: int) -> dict[str, tuple[int, dict[str, str]]]:
    card = ",".join(
        n if n != "explicit-le" else "native" for n in ON_CARD if not n.startswith("j2k")
    )
    return {
        # The 16-core CPU node: the card hidden from every process, the model in each.
        "cpu-node": (
            cores,
            {
                "CXR_DECODE_DEVICE": "cpu",
                "CUDA_VISIBLE_DEVICES": "",
                "JAX_PLATFORMS": "cpu",
                "CXR_INFERENCE": "local",
            },
        ),
        "gpu-cpu-decode": (cores, {"CXR_DECODE_DEVICE": "cpu", "CXR_INFERENCE": "served"}),
        "gpu-card-decode": (
            cores,
            {"CXR_DECODE_DEVICE": "gpu", "CXR_INFERENCE": "served", "CXR_CARD_SYNTAXES": card},
        ),
        # Classic JPEG 2000 on the card too (16 processes handing it to nvJPEG2000 at
        # once, where the card alone with one process measured slower than the CPUs).
        "gpu-card-decode-j2k": (
            cores,
            {
                "CXR_DECODE_DEVICE": "gpu",
                "CXR_INFERENCE": "served",
                "CXR_CARD_SYNTAXES": card + ",j2k-lossless,j2k-lossy",
            },
        ),
        # The prefork layout of issue 14 on the card, for its start-up and its figures.
        "gpu-card-decode-prefork": (
            cores,
            {"CXR_DECODE_DEVICE": "gpu", "CXR_INFERENCE": "local", "CXR_CARD_SYNTAXES": card},
        ),
    }


def _run_layout(
    name: str,
    films: Sequence[tuple[CorpusItem, int]],
    *,
    mix: str,
    root: Path,
    broker_url: str,
    processes: int,
    extra: dict[str, str],
    batch_size: int,
    log: Path,
    sampler: UtilisationSampler,
    deadline: float,
) -> dict[str, Any]:
    from bench import pipeline as pl
    from worker.dispatch import send_instances

    env = fresh_database(root / f"{mix}-{name}.db", broker_url)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    env["CXR_LOG_LEVEL"] = "INFO"  # the inference process's load and compile times
    env.update(extra)
    out: dict[str, Any] = {"processes": processes, "env": extra}
    ids: list[int] = []
    launched = time.monotonic()
    try:
        with pl.running_worker(
            env, log, concurrency=processes, batch_size=batch_size, max_wait_ms=200
        ) as worker:
            pl.wait_for_pool(
                log, processes, timeout_s=max(30.0, min(150.0, deadline - time.monotonic() - 30))
            )
            out["startup_s"] = round(time.monotonic() - launched, 1)
            text = log.read_text(errors="replace")
            out["processes_on_card"] = text.count("decoding on the card")
            out["startup_phases"] = startup_phases(text)
            # Recorded once the pool serves, then sent at once: recorded earlier, a slow
            # start-up lets the worker's own requeue (instances queued > 15 s) send them
            # before the timed run, twice.
            start = time.monotonic()
            ids = record_archive(films, tag=f"{mix}-{name}")
            out["record_s"] = round(time.monotonic() - start, 2)
            sent_at = time.time()
            send_instances(ids)
            timeout = max(20.0, min(400.0, deadline - time.monotonic() - 15))
            result = pl.drain(ids, started=sent_at, timeout_s=timeout)
            result.update(sampler.between(sent_at, time.time()))
            result.update(time_split(ids))
            out.update(result)
            rss = pl.peak_rss_mib(worker.pid)
            out["peak_rss_mib_max"] = max(rss.values()) if rss else None
    except Exception as e:
        logger.exception("layout %s failed", name)
        out["error"] = f"{type(e).__name__}: {e}"
    out["answers"] = answers(ids) if ids else {}
    logger.info("%s %s: %s", mix, name, {k: v for k, v in out.items() if k != "answers"})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--machine", default="h200")
    parser.add_argument("--carried", type=Path, default=None)
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--root", type=Path, default=Path("/tmp/gpu-archive"))
    parser.add_argument("--per-syntax", type=int, default=4)
    parser.add_argument("--films", type=int, default=10_000)
    parser.add_argument(
        "--mix-films",
        action="append",
        default=[],
        help="NAME=N: another set length for one mix (repeatable), e.g. "
        "lossy-archive=5000 to keep the call inside its limit",
    )
    parser.add_argument("--mixes", default="lossless-archive,lossy-archive")
    parser.add_argument(
        "--mix",
        action="append",
        default=[],
        help="a site's own mix, NAME=syntax:weight,... (repeatable)",
    )
    parser.add_argument(
        "--layouts",
        default="gpu-card-decode,cpu-node,gpu-cpu-decode",
        help="in the order run (the card's first: a cut-off loses the slowest, CPU-bound ones)",
    )
    parser.add_argument(
        "--mix-layouts",
        action="append",
        default=[],
        help="NAME=layout,...: other layouts for one mix (repeatable)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--budget-s", type=float, default=540)
    parser.add_argument("--skip", default="", help="comma-separated: agreement, rates")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": args.machine,
        "cpu_count": os.cpu_count(),
        "model": str(args.model),
        "films": args.films,
    }
    out_json = args.out / f"{args.machine}-gpu-archive.json"

    steps = StepLog(out_json, results)
    save, step = steps.save, steps.step

    shutil.rmtree(args.root, ignore_errors=True)
    items = parallel_corpus(args.root / "corpus", args.per_syntax, args.carried, names=SYNTAXES)
    results["corpus"] = {
        name: sum(i.syntax == name for i in items) for name in sorted({i.syntax for i in items})
    }
    results["step_seconds"] = {"corpus": round(time.monotonic() - t0, 1)}
    save()
    skip = set(args.skip.split(","))
    cores = os.cpu_count() or 1
    if "agreement" not in skip:
        step("agreement", lambda: agreement(items, args.model, syntaxes=ON_CARD))
    if "rates" not in skip:
        step(
            "card_alone_images_per_s",
            lambda: card_rates(items, batch=64, seconds=1.0, threads=(1, 4), syntaxes=ON_CARD),
        )
        step("cpu_images_per_s", lambda: cpu_rates(items, processes=cores))
        # The decoder choice for JPEG lossless, measured: pydicom's plugin (pylibjpeg).
        step(
            "cpu_images_per_s_pylibjpeg",
            lambda: cpu_rates(
                items, processes=cores, syntaxes=("jpeg-lossless",), decoders_off=("libjpeg-turbo",)
            ),
        )
    mixes: list[Mix] = [MIXES[m] for m in args.mixes.split(",") if m]
    mixes += [parse_mix(m) for m in args.mix]
    results["mixes"] = {m.name: {"weights": dict(m.weights), "source": m.source} for m in mixes}
    sampler = UtilisationSampler()
    sampler.start()
    from bench import pipeline as pl

    pl.configure_environment(
        pl.PipelineConfig(
            root=args.root,
            model_path=args.model,
            broker_url=args.broker_url,
            decode_threads=1,
            concurrency=cores,
        )
    )
    layouts = _layouts(cores)
    results["pipeline"] = {}
    mix_films = {k: int(v) for k, _, v in (m.partition("=") for m in args.mix_films)}
    results["films_by_mix"] = {m.name: mix_films.get(m.name, args.films) for m in mixes}
    for mix in mixes:
        films = archive_set(items, mix, results["films_by_mix"][mix.name])
        runs: dict[str, Any] = results["pipeline"].setdefault(mix.name, {})
        mix_layouts = dict(m.partition("=")[::2] for m in args.mix_layouts)
        for name in mix_layouts.get(mix.name, args.layouts).split(","):
            if deadline - time.monotonic() < 75:
                runs[name] = {"skipped": "out of time"}
                continue
            processes, extra = layouts[name]
            runs[name] = _run_layout(
                name,
                films,
                mix=mix.name,
                root=args.root,
                broker_url=args.broker_url,
                processes=processes,
                extra=extra,
                batch_size=args.batch_size,
                log=args.out / f"worker-{mix.name}-{name}.log",
                sampler=sampler,
                deadline=deadline,
            )
            save()
        reference = runs.get("cpu-node", {}).get("answers")
        for name, run in runs.items():
            if reference and name != "cpu-node" and run.get("answers"):
                run["same_as_cpu_node"] = compare(reference, run["answers"])
        save()
    sampler.stop()
    results["seconds"] = round(time.monotonic() - t0, 1)
    save()
    (args.out / f"{args.machine}-gpu-archive.md").write_text(summary(results))
    logger.info("done in %.0f s", time.monotonic() - t0)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _first_line(text: Any, width: int = 120) -> str:
    """An error's first line, shortened (the JSON keeps it whole)."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return line if len(line) <= width else line[: width - 3] + "..."


def summary(results: dict[str, Any]) -> str:
    """The tables of the report, from the JSON."""
    films = results.get("films_by_mix") or {}
    lines = [
        f"# GPU node on archive mixes ({results['machine']}, {results['cpu_count']} "
        f"cores; films a run: "
        f"{', '.join(f'{k} {v}' for k, v in films.items()) or results['films']})",
        "",
    ]
    card = results.get("card_alone_images_per_s", {}).get("cpu_threads_1", {})
    card4 = results.get("card_alone_images_per_s", {}).get("cpu_threads_4", {})
    cpu = results.get("cpu_images_per_s", {})
    fallback = results.get("cpu_images_per_s_pylibjpeg", {})
    agree = results.get("agreement", {}).get("by_syntax", {})
    lines += [
        "## Per syntax",
        "",
        f"| syntax | CPU decode, {results['cpu_count']} processes (images/s) | card "
        "alone, 1 process "
        "(images/s) | the same, 4 nvImageCodec threads | card failures | agreement: "
        "same labels / files, max p diff |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(set(cpu) | set(card)):
        c = card.get(name, {})
        a = agree.get(name, {})
        cpu_text = _fmt(cpu.get(name))
        if isinstance(fallback, dict) and isinstance(fallback.get(name), float):
            cpu_text += f" (pylibjpeg: {_fmt(fallback[name])})"
        lines.append(
            f"| {name} | {cpu_text} | {_fmt(c.get('images_per_s'))} | "
            f"{_fmt(card4.get(name, {}).get('images_per_s'))} | "
            f"{_fmt(c.get('failed'))} | "
            f"{_fmt(a.get('same_labels'))} / {_fmt(a.get('files'))}, "
            f"{_fmt(a.get('max_p_diff'), 5)} |"
        )
    lines += [
        "",
        "## Per archive mix, end to end (enqueue -> Redis -> worker -> SQLite)",
        "",
        "| mix | layout | films | whole run (films/s) | sustained (films/s) | "
        "start-up (s) | card busy (mean %) | decode ms | model ms | failed | same "
        "labels as CPU node, max p diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mix, runs in results.get("pipeline", {}).items():
        for name, run in runs.items():
            same = run.get("same_as_cpu_node", {})
            lines.append(
                f"| {mix} | {name} | {_fmt(run.get('images'))} | "
                f"{_fmt(run.get('images_per_s'))} | "
                f"{_fmt(run.get('sustained_images_per_s'))} | {_fmt(run.get('startup_s'))} | "
                f"{_fmt(run.get('gpu_util_mean_pct'))} | {_fmt(run.get('decode_ms_mean'), 1)} | "
                f"{_fmt(run.get('inference_ms_mean'), 2)} | {_fmt(run.get('failed'))} | "
                f"{_fmt(same.get('same_labels'))} / {_fmt(same.get('files'))}, "
                f"{_fmt(same.get('max_p_diff'), 5)} |"
                + (
                    f" {_first_line(run.get('error') or run.get('skipped'))}"
                    if run.get("error") or run.get("skipped")
                    else ""
                )
            )
    lines += [
        "",
        "## Where the start-up went (s, from the worker's log)",
        "",
        "| mix | layout | start-up | slowest pool process: model ready | its decoding "
        "ready (side by side) | inference process: load | compile (sizes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mix, runs in results.get("pipeline", {}).items():
        for name, run in runs.items():
            ph = run.get("startup_phases") or {}
            lines.append(
                f"| {mix} | {name} | {_fmt(run.get('startup_s'), 1)} | "
                f"{_fmt(ph.get('pool_model_ready_s_max'), 1)} | "
                f"{_fmt(ph.get('pool_decoding_ready_s_max'), 1)} | "
                f"{_fmt(ph.get('served_load_s'), 1)} | {_fmt(ph.get('served_compile_s'), 1)}"
                f" ({ph.get('served_compiled_sizes') or '-'}) |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
