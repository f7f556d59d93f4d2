"""GPU-node measurements (run on the lent H100 with ``KERAS_BACKEND=jax``).

``python -m bench.gpu --model M --out DIR --machine h100``: model images/s per
batch size through the worker's real input path (``Classifier.predict_proba``
from uint8 grey), mixed bfloat16 where its answers agree, decode capacity of a
process pool over one core each, and (``--pipeline``) the whole pipeline: a real
``celery -A worker worker`` with one pool process per core, Redis (``--broker-url``)
or the filesystem broker, SQLite, draining a queue of fresh files, against the
decode capacity of the same files and cores (:func:`_pipeline`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)
# Pools start fresh interpreters: forking this process, which runs JAX, can deadlock.
_SPAWN = multiprocessing.get_context("spawn")


def _model_rates(classifier: Any, batches: list[int], seconds: float) -> dict[str, float]:
    from bench.measure import model_throughput

    rates = model_throughput(classifier, batches, min_seconds=seconds, max_batches=200)
    return {str(k): v for k, v in rates.items()}


def _raw_uint8_rate(classifier: Any, batch: int, seconds: float) -> float:
    """predict_on_batch fed uint8 RGB directly (what a uint8 input path would reach)."""
    size = classifier.input_size
    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    classifier.model.predict_on_batch(x)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        classifier.model.predict_on_batch(x)
        done += 1
    return done * batch / (time.perf_counter() - start)


def _bf16(classifier: Any) -> Any:
    """What a worker with ``CXR_MIXED_PRECISION=bfloat16`` serves."""
    from cxr_orient.modelstore import Classifier, with_mixed_bfloat16

    return Classifier(with_mixed_bfloat16(classifier.model, classifier.card), classifier.card)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--machine", default="h100")
    parser.add_argument("--corpus-per-syntax", type=int, default=4)
    parser.add_argument("--budget-s", type=float, default=420)
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument(
        "--broker-url",
        default=None,
        help="e.g. redis://127.0.0.1:6379/0; default: filesystem transport",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="worker pool processes for the pipeline (default: one per core)",
    )
    parser.add_argument(
        "--studies",
        type=int,
        default=1000,
        help="studies (two images each) queued for the pipeline",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="CXR_BATCH_SIZE")
    parser.add_argument(
        "--models-only",
        action="store_true",
        help="measure the models only: no decode capacity, no pipeline",
    )
    parser.add_argument(
        "--skip-models", action="store_true", help="only decode capacity and the pipeline"
    )
    parser.add_argument(
        "--worker-log", type=Path, default=None, help="where the pipeline's worker writes its log"
    )
    parser.add_argument("--drain-timeout", type=float, default=300)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    t0 = time.monotonic()
    jax = importlib.import_module("jax")
    import keras

    from cxr_orient.modelstore import Classifier, predicted_class

    results: dict[str, Any] = {
        "machine": args.machine,
        "backend": keras.backend.backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kind": jax.devices()[0].device_kind,
        "cpu_count": os.cpu_count(),
        "model": str(args.model),
    }
    out_json = args.out / f"{args.machine}.json"

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(results, indent=2, default=str))

    if args.skip_models:
        return _decode_and_pipeline(args, results, save, t0)
    compact = Classifier.from_checkpoint(args.model, verify=False)
    rng = np.random.default_rng(1)
    probe = rng.integers(0, 256, (256, 256, 256), dtype=np.uint8)
    results["compact_float32"] = _model_rates(compact, [64, 256, 1024, 2048], 3.0)
    results["compact_uint8_direct"] = {"1024": _raw_uint8_rate(compact, 1024, 3.0)}
    save()
    bf = _bf16(compact)
    p32, p16 = compact.predict_proba(probe), bf.predict_proba(probe)
    results["compact_bf16_agreement"] = {
        "same_label": float(np.mean(predicted_class(p32[:, 1]) == predicted_class(p16[:, 1]))),
        "max_p_diff": float(np.abs(p32 - p16).max()),
    }
    results["compact_bf16"] = _model_rates(bf, [256, 1024, 2048], 3.0)
    save()
    from cxr_orient.architectures import build_model
    from cxr_orient.modelstore import ModelCard

    tutorial = Classifier(
        build_model("tutorial2019"),
        ModelCard(name="t", architecture="tutorial2019", input_size=256),
    )
    results["tutorial2019_float32"] = _model_rates(tutorial, [64, 256, 512], 3.0)
    save()
    logger.info("models done at %.0fs", time.monotonic() - t0)
    if args.models_only:
        return
    _decode_and_pipeline(args, results, save, t0)


def _decode_and_pipeline(
    args: argparse.Namespace, results: dict[str, Any], save: Any, t0: float
) -> None:
    from bench.corpus import build_corpus
    from bench.measure import decode_rate
    from bench.run import write_results

    root = Path("/tmp/gpu-bench")
    items = build_corpus(root / "corpus", per_syntax=args.corpus_per_syntax)
    paths = [i.path for i in items]
    results["corpus_files"] = len(paths)
    cores = os.cpu_count() or 1
    with ProcessPoolExecutor(max_workers=cores, mp_context=_SPAWN) as pool:
        per = {"all_syntaxes": decode_rate(pool, paths * 4, warm_up=cores, chunksize=2)}
        for name in sorted({i.syntax for i in items}):
            per[name] = decode_rate(pool, [i.path for i in items if i.syntax == name] * 8)
    results["decode_capacity_processes"] = cores
    results["decode_capacity_images_per_s"] = per
    save()
    logger.info("decode done at %.0fs", time.monotonic() - t0)
    if args.pipeline and time.monotonic() - t0 < args.budget_s - 150:
        results["pipeline"] = _pipeline(
            items,
            root,
            args.model,
            cores,
            broker_url=args.broker_url,
            workers=args.workers,
            studies=args.studies,
            batch_size=args.batch_size,
            worker_log=args.worker_log or root / "worker.log",
            drain_timeout_s=args.drain_timeout,
        )
        save()
    write_results(results, args.out, args.machine)


def _pipeline(
    items: list[Any],
    root: Path,
    model: Path,
    cores: int,
    *,
    broker_url: str | None,
    workers: int,
    studies: int,
    batch_size: int,
    worker_log: Path,
    drain_timeout_s: float,
) -> dict[str, Any]:
    """The whole path on the GPU node: one pool process per core (each decodes with one
    thread; decoding, not the model, is what needs the cores), all sharing the card.

    The worker starts first; once every pool process serves the model, ``studies`` x 2
    fresh files are recorded and their messages sent at once, and the pool drains them
    (:func:`bench.pipeline.drain`); the decode capacity it is compared with is measured
    on the same files with the same number of processes, in the same run.
    """
    from bench import pipeline as pl
    from bench.measure import decode_rate
    from cxr_orient.ingest import enqueue_paths
    from cxr_orient.settings import get_settings
    from worker.dispatch import send_instances

    processes = workers or cores
    out: dict[str, Any] = {
        "pool_processes": processes,
        "decode_threads": 1,
        "batch_size": batch_size,
        "max_wait_ms": 200,
        "broker": broker_url or "filesystem",
        "database": "sqlite",
    }
    try:
        config = pl.PipelineConfig(
            root=root,
            model_path=model,
            broker_url=broker_url,
            decode_threads=1,
            concurrency=processes,
        )
        env = pl.configure_environment(config)
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
        out["mixed_precision"] = env.get("CXR_MIXED_PRECISION", "off")
        folders = pl.make_studies(items, root / "studies", studies=studies, tag="gpu", jobs=cores)
        files = sorted(f for folder in folders for f in folder.glob("*.dcm"))
        with ProcessPoolExecutor(max_workers=processes, mp_context=_SPAWN) as pool:
            out["decode_capacity_images_per_s"] = decode_rate(
                pool, files, warm_up=processes, chunksize=4
            )
        launched = time.monotonic()
        with pl.running_worker(
            env, worker_log, concurrency=processes, batch_size=batch_size, max_wait_ms=200
        ) as worker:
            # Every pool process loaded the model and compiled its buckets (tens of
            # seconds under JAX, staggered): only then is there work, all of it at once.
            pl.wait_for_pool(worker_log, processes)
            out["pool_ready_after_s"] = time.monotonic() - launched
            start = time.perf_counter()
            ids = list(enqueue_paths(list(folders), send=None, settings=get_settings()).queued)
            out["enqueue_images_per_s"] = len(ids) / (time.perf_counter() - start)
            sent_at = time.time()
            send_instances(ids)
            out.update(pl.drain(ids, started=sent_at, timeout_s=drain_timeout_s))
            rss = pl.peak_rss_mib(worker.pid)
        out["peak_rss_mib_max"] = max(rss.values()) if rss else None
        if out.get("sustained_images_per_s"):
            out["ratio_to_decode_capacity"] = (
                out["sustained_images_per_s"] / out["decode_capacity_images_per_s"]
            )
        return out
    except Exception as e:  # report, never lose the model/decode figures
        logger.exception("pipeline failed")
        out["error"] = f"{type(e).__name__}: {e}"
        return out


if __name__ == "__main__":
    main()
