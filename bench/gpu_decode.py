"""Decoding on the card against decoding on the CPU, on one GPU node, in one run.

``python -m bench.gpu_decode --model M --out DIR [--carried FOLDER] [--quick]``, on the
lent GPU with ``KERAS_BACKEND=jax`` (``scripts/h100.sh gpu-decode``):

1. the bench corpus (every transfer syntax; HTJ2K files from ``--carried`` where this
   machine cannot encode them);
2. agreement: each file through the CPU path and through the card
   (:mod:`cxr_orient.imaging.gpu`), pixel differences and the shipped model's
   probabilities and labels;
3. the card alone: images/s of one process decoding batches of each card syntax;
4. the whole pipeline (enqueue -> Redis -> ``celery -A worker worker`` -> SQLite), the
   same fresh files, per worker layout: a 16-core CPU-only node (the card hidden, the
   model on the CPU too), the GPU node decoding on its CPUs, the GPU node decoding on
   the card; mixed corpus and each card syntax alone, with the card's utilisation
   (NVML, sampled every 100 ms) and the mean decode and inference time per image.

Writes ``DIR/<machine>-gpu-decode.json`` after each step (a cut-off keeps what was done).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import CorpusItem, build_corpus, load_corpus

logger = logging.getLogger(__name__)
_SPAWN = multiprocessing.get_context("spawn")
CARD_SYNTAXES = ("htj2k-lossless", "htj2k-lossy", "j2k-lossless", "j2k-lossy", "jpeg-baseline")


class UtilisationSampler:
    """The card's busy share (NVML ``utilization.gpu``) and memory in use, every 100 ms."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml: Any = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as e:
            logger.warning("no NVML: %s", e)
            self._nvml = None

    def start(self) -> None:
        if self._nvml is None:
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
                self.samples.append((time.time(), int(rates.gpu), int(memory.used >> 20)))
            except Exception:
                pass
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()

    def between(self, start: float, end: float) -> dict[str, float | None]:
        window = [s for s in self.samples if start <= s[0] <= end]
        if not window:
            return {"gpu_util_mean_pct": None, "gpu_util_max_pct": None, "gpu_memory_max_mib": None}
        return {
            "gpu_util_mean_pct": float(np.mean([s[1] for s in window])),
            "gpu_util_max_pct": float(max(s[1] for s in window)),
            "gpu_memory_max_mib": float(max(s[2] for s in window)),
        }


#: The syntaxes of this bench's corpus.
CORPUS_SYNTAXES = (
    "explicit-le",
    "implicit-le",
    "explicit-be",
    "deflated",
    "rle",
    "jpeg-ls",
    "j2k-lossless",
    "j2k-lossy",
    "jpeg-baseline",
    "htj2k-lossless",
    "htj2k-lossy",
)


def parallel_corpus(
    root: Path, per_syntax: int, carried: Path | None, names: Sequence[str] = CORPUS_SYNTAXES
) -> list[CorpusItem]:
    """Each syntax of ``names`` built in parallel (one process per syntax); those this
    machine cannot encode (HTJ2K) taken from the ``carried`` corpus."""
    with ProcessPoolExecutor(max_workers=len(names), mp_context=_SPAWN) as pool:
        futures = [
            pool.submit(build_corpus, root / name, per_syntax=per_syntax, syntaxes=(name,))
            for name in names
        ]
        items = [item for f in futures for item in f.result()]
    have = {i.syntax for i in items}
    if carried is not None and carried.is_dir():
        target = root / "carried"
        shutil.copytree(carried, target, dirs_exist_ok=True)
        items += [i for i in load_corpus(target) if i.syntax not in have]
    return items


def agreement(
    items: Sequence[CorpusItem],
    model: Path,
    size: int = 256,
    syntaxes: Sequence[str] = CARD_SYNTAXES,
) -> dict[str, Any]:
    """CPU path against the card, file by file, for the corpus files of ``syntaxes``:
    pixels and the model's answers."""
    from cxr_orient.imaging import load_dicom_image, to_rgb
    from cxr_orient.imaging.gpu import read_and_plan
    from cxr_orient.imaging.gpu.card import CardDecoder
    from cxr_orient.modelstore import Classifier, predicted_class

    card = CardDecoder(cpu_threads=1)
    chosen = [i for i in items if i.syntax in syntaxes]
    planned = [
        read_and_plan(i.path, data=i.path.read_bytes(), size=size, max_pixels=100_000_000)
        for i in chosen
    ]
    on_card = [p.job is not None for p in planned]
    answers = card.decode([p.job for p in planned if p.job is not None], size=size)
    cpu = [load_dicom_image(i.path, size=size) for i in chosen]
    gpu: list[np.ndarray] = []
    it = iter(answers)
    card_errors: dict[str, str] = {}
    for k, p in enumerate(planned):
        answer = next(it) if p.job is not None else cpu[k]
        if isinstance(answer, Exception):  # the worker decodes it on the CPU: so here
            card_errors[chosen[k].path.name] = str(answer)[:300]
            on_card[k] = False
            answer = cpu[k]
        gpu.append(answer)
    classifier = Classifier.from_checkpoint(model, verify=False)
    p_cpu = classifier.predict_proba(np.stack([to_rgb(g) for g in cpu]))
    p_gpu = classifier.predict_proba(np.stack([to_rgb(g) for g in gpu]))
    same = predicted_class(p_cpu[:, 1]) == predicted_class(p_gpu[:, 1])
    per_file: list[dict[str, Any]] = []
    for k, item in enumerate(chosen):
        diff = np.abs(cpu[k].astype(np.int16) - gpu[k].astype(np.int16))
        per_file.append(
            {
                "file": item.path.name,
                "syntax": item.syntax,
                "photometric": item.photometric,
                "windowed": item.windowed,
                "on_card": on_card[k],
                "max_pixel_diff": int(diff.max()),
                "mean_pixel_diff": float(diff.mean()),
                "p_diff": float(np.abs(p_cpu[k] - p_gpu[k]).max()),
                "same_label": bool(same[k]),
            }
        )
    by_syntax: dict[str, Any] = {}
    for name in sorted({f["syntax"] for f in per_file}):
        rows = [f for f in per_file if f["syntax"] == name]
        by_syntax[name] = {
            "files": len(rows),
            "on_card": sum(r["on_card"] for r in rows),
            "max_pixel_diff": max(r["max_pixel_diff"] for r in rows),
            "mean_pixel_diff": float(np.mean([r["mean_pixel_diff"] for r in rows])),
            "max_p_diff": max(r["p_diff"] for r in rows),
            "same_labels": sum(r["same_label"] for r in rows),
        }
    return {
        "card": card.name,
        "files": len(per_file),
        "same_labels": int(same.sum()),
        "card_errors": card_errors,
        "max_p_diff": float(np.abs(p_cpu - p_gpu).max()),
        "by_syntax": by_syntax,
        "per_file": per_file,
    }


def card_rates(
    items: Sequence[CorpusItem],
    *,
    batch: int,
    seconds: float,
    threads: Sequence[int] = (1,),
    size: int = 256,
    syntaxes: Sequence[str] = CARD_SYNTAXES,
) -> dict[str, Any]:
    """One process, the card alone: codestreams already read, batches of ``batch``; per
    nvImageCodec CPU thread count, images/s and the share of the time spent decoding
    (the rest: the reduction on the card, its copy back and the normalisation)."""
    from cxr_orient.imaging.gpu import read_and_plan
    from cxr_orient.imaging.gpu.card import CardDecoder

    out: dict[str, Any] = {"batch": batch}
    for count in threads:
        card = CardDecoder(cpu_threads=count)
        rates: dict[str, Any] = {}
        for name in syntaxes:
            files = [i.path for i in items if i.syntax == name]
            jobs = [
                read_and_plan(f, data=f.read_bytes(), size=size, max_pixels=100_000_000).job
                for f in files
            ]
            ready = [j for j in jobs if j is not None]
            if not ready:
                continue
            work = (ready * (batch // len(ready) + 1))[:batch]
            card.decode(work, size=size)  # warm-up: buffers, matrices
            done, failed, decode_s, reduce_s = 0, 0, 0.0, 0.0
            errors: list[str] = []
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                results = card.decode(work, size=size)
                done += sum(not isinstance(r, Exception) for r in results)
                bad = [r for r in results if isinstance(r, Exception)]
                failed += len(bad)
                errors = errors or [str(e)[:300] for e in bad[:1]]
                decode_s += card.last_seconds[0]
                reduce_s += card.last_seconds[1]
            rates[name] = {
                "images_per_s": done / (time.perf_counter() - start),
                "failed": failed,
                "first_error": errors[0] if errors else None,
                "decode_share": decode_s / max(decode_s + reduce_s, 1e-9),
            }
        out[f"cpu_threads_{count}"] = rates
    return out


def time_split(ids: Sequence[int]) -> dict[str, float | None]:
    """Mean decode and inference milliseconds per image, and the mean batch, from SQL."""
    from sqlalchemy import select

    from db.models import Prediction
    from db.session import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(Prediction.decode_ms, Prediction.inference_ms, Prediction.batch_size).where(
                Prediction.instance_id.in_(list(ids))
            )
        ).all()
    if not rows:
        return {"decode_ms_mean": None, "inference_ms_mean": None, "batch_mean": None}
    return {
        "decode_ms_mean": float(np.mean([r[0] or 0 for r in rows])),
        "inference_ms_mean": float(np.mean([r[1] or 0 for r in rows])),
        "batch_mean": float(np.mean([r[2] or 0 for r in rows])),
    }


def _layout_run(
    name: str,
    sets: dict[str, list[Path]],
    *,
    base_env: dict[str, str],
    extra_env: dict[str, str],
    processes: int,
    batch_size: int,
    log: Path,
    sampler: UtilisationSampler,
    drain_timeout_s: float,
    deadline: float,
) -> dict[str, Any]:
    """One worker layout: start it, then drain each set of study folders in turn."""
    from bench import pipeline as pl
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.settings import get_settings
    from worker.dispatch import send_instances

    env = {**base_env, **extra_env}
    out: dict[str, Any] = {
        "processes": processes,
        "batch_size": batch_size,
        "env": extra_env,
        "sets": {},
    }
    launched = time.monotonic()
    try:
        with pl.running_worker(
            env, log, concurrency=processes, batch_size=batch_size, max_wait_ms=200
        ) as worker:
            pl.wait_for_pool(log, processes, timeout_s=150)
            out["pool_ready_after_s"] = time.monotonic() - launched
            text = log.read_text(errors="replace")
            out["processes_on_card"] = text.count("decoding on the card")
            for set_name, folders in sets.items():
                if time.monotonic() > deadline:
                    out["sets"][set_name] = {"skipped": "out of time"}
                    continue
                ids = list(enqueue_paths(list(folders), send=None, settings=get_settings()).queued)
                sent_at = time.time()
                send_instances(ids)
                result = pl.drain(ids, started=sent_at, timeout_s=drain_timeout_s)
                result.update(sampler.between(sent_at, time.time()))
                result.update(time_split(ids))
                out["sets"][set_name] = result
                logger.info("%s %s: %s", name, set_name, result)
                if not result.get("complete"):
                    out["stopped"] = f"{set_name} did not finish in {drain_timeout_s:.0f} s"
                    break
            rss = pl.peak_rss_mib(worker.pid)
            out["peak_rss_mib_max"] = max(rss.values()) if rss else None
    except Exception as e:
        logger.exception("layout %s failed", name)
        out["error"] = f"{type(e).__name__}: {e}"
    return out


class StepLog:
    """A GPU bench's results, written to ``out_json`` after every step: a step that fails
    records its error and the run goes on (a call on the lent card is not repeated)."""

    def __init__(self, out_json: Path, results: dict[str, Any]) -> None:
        self.out_json = out_json
        self.results = results

    def save(self) -> None:
        self.out_json.write_text(json.dumps(self.results, indent=2, default=str))

    def step(self, key: str, fn: Callable[[], Any]) -> None:
        start = time.monotonic()
        try:
            self.results[key] = fn()
        except Exception as e:
            logger.exception("%s failed", key)
            self.results[key] = {"error": f"{type(e).__name__}: {e}"}
        self.results.setdefault("step_seconds", {})[key] = round(time.monotonic() - start, 1)
        self.save()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--machine", default="h200")
    parser.add_argument(
        "--carried", type=Path, default=None, help="corpus files this machine cannot write (HTJ2K)"
    )
    parser.add_argument("--broker-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--per-syntax", type=int, default=4)
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/tmp/gpu-decode"),
        help="where the corpus and the studies are written (GBs)",
    )
    parser.add_argument("--mixed-studies", type=int, default=800)
    parser.add_argument("--syntax-studies", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--layouts",
        default="gpu-card-decode,gpu-cpu-decode,cpu-node,gpu-card-decode-8x2",
        help="comma-separated, from: cpu-node, gpu-cpu-decode, "
        "gpu-card-decode, gpu-card-decode-8x2",
    )
    parser.add_argument("--budget-s", type=float, default=560)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="environment check: small corpus, agreement, card rates, and "
        "one small pipeline run on the card",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": args.machine,
        "cpu_count": os.cpu_count(),
        "model": str(args.model),
    }
    out_json = args.out / f"{args.machine}-gpu-decode.json"

    steps = StepLog(out_json, results)
    save, step = steps.save, steps.step

    root = args.root
    shutil.rmtree(root, ignore_errors=True)
    per_syntax = 2 if args.quick else args.per_syntax
    items = parallel_corpus(root / "corpus", per_syntax, args.carried)
    results["corpus"] = {
        name: sum(i.syntax == name for i in items) for name in sorted({i.syntax for i in items})
    }
    results["step_seconds"] = {"corpus": round(time.monotonic() - t0, 1)}
    save()
    step("agreement", lambda: agreement(items, args.model))
    step(
        "card_alone_images_per_s", lambda: card_rates(items, batch=64, seconds=1.0, threads=(1, 4))
    )
    sampler = UtilisationSampler()
    sampler.start()
    results["pipeline"] = {}
    step(
        "pipeline",
        lambda: _pipelines(args, items, root, sampler, deadline, save, results["pipeline"]),
    )
    sampler.stop()
    logger.info("done in %.0f s", time.monotonic() - t0)


def _pipelines(
    args: argparse.Namespace,
    items: list[CorpusItem],
    root: Path,
    sampler: UtilisationSampler,
    deadline: float,
    save: Callable[[], None],
    out: dict[str, Any],
) -> dict[str, Any]:
    from bench import pipeline as pl
    from bench.measure import decode_rate

    cores = os.cpu_count() or 1
    config = pl.PipelineConfig(
        root=root,
        model_path=args.model,
        broker_url=args.broker_url,
        decode_threads=1,
        concurrency=cores,
    )
    env = pl.configure_environment(config)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    quick = args.quick
    mixed_n = 40 if quick else args.mixed_studies
    syntax_n = 20 if quick else args.syntax_studies
    layouts_wanted = ["gpu-card-decode"] if quick else args.layouts.split(",")
    all_layouts = {
        # A CPU-only node: the card hidden from every process, the model on the CPU.
        "cpu-node": (
            cores,
            {"CXR_DECODE_DEVICE": "cpu", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"},
        ),
        "gpu-cpu-decode": (cores, {"CXR_DECODE_DEVICE": "cpu"}),
        "gpu-card-decode": (cores, {"CXR_DECODE_DEVICE": "gpu"}),
        "gpu-card-decode-8x2": (
            cores // 2,
            {"CXR_DECODE_DEVICE": "gpu", "CXR_DECODE_THREADS": "2"},
        ),
    }
    out.update(
        {
            "broker": args.broker_url,
            "database": "sqlite",
            "batch_size": args.batch_size,
            "layouts": {},
        }
    )
    # One set of files for every layout, each layout on a fresh database (and an empty
    # queue): nothing is recorded twice, and the disk holds one copy of the studies.
    jobs = cores
    sets: dict[str, list[Path]] = {}
    sets["mixed"] = pl.make_studies(
        items, root / "studies" / "mixed", studies=mixed_n, tag="mixed", jobs=jobs
    )
    for name in CARD_SYNTAXES:
        chosen = [i for i in items if i.syntax == name]
        if chosen:
            sets[name] = pl.make_studies(
                chosen, root / "studies" / name, studies=syntax_n, tag=name, jobs=jobs
            )
    mixed_files = sorted(f for folder in sets["mixed"] for f in folder.glob("*.dcm"))
    out["disk_used_gib"] = round(
        sum(f.stat().st_size for s in sets.values() for folder in s for f in folder.glob("*.dcm"))
        / 2**30,
        2,
    )
    with ProcessPoolExecutor(max_workers=cores, mp_context=_SPAWN) as pool:
        out["cpu_decode_capacity_mixed_images_per_s"] = decode_rate(
            pool, mixed_files, warm_up=cores, chunksize=4
        )
    save()
    for layout in layouts_wanted:
        processes, extra = all_layouts[layout]
        if deadline - time.monotonic() < 100:
            out["layouts"][layout] = {"skipped": "out of time"}
            continue
        env = fresh_database(root / f"{layout}.db", args.broker_url)
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        out["layouts"][layout] = _layout_run(
            layout,
            sets,
            base_env=env,
            extra_env=extra,
            processes=processes,
            batch_size=args.batch_size,
            log=args.out / f"worker-{layout}.log",
            sampler=sampler,
            drain_timeout_s=60 if quick else 150,
            deadline=deadline,
        )
        save()
    return out


def fresh_database(path: Path, broker_url: str) -> dict[str, str]:
    """Point this process (and the environment returned, for the worker) at a new,
    migrated SQLite database; empty the broker's queue."""
    import redis

    from cxr_orient.settings import reset_settings_cache
    from db.migrate import upgrade
    from db.session import dispose_engines

    os.environ["CXR_DATABASE_URL"] = f"sqlite:///{path}"
    reset_settings_cache()
    dispose_engines()
    upgrade()
    redis.Redis.from_url(broker_url).flushdb()
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


if __name__ == "__main__":
    main()
