"""``python -m bench [--quick] ...``: decode, model, pipeline, network ingest and the
tutorial-script baseline side by side (``bench.run.run_bench``).

Its own entry point, not a ``cxr-orient`` verb: the product's command line never imports
the bench, and the bench is not in the wheel (pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quick", is_flag=True, help="A 2-3 minute run (smaller corpus, no sweep).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Folder for <machine>.json and <machine>.md.",
)
@click.option("--machine", default=None, help="Results file name. Default cpu-<N>core-<arch>.")
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Checkpoint to measure. Default: CXR_MODEL_PATH or the shipped one.",
)
@click.option(
    "--broker",
    default="redis://127.0.0.1:6379/10",
    show_default=True,
    help="Broker for the pipeline run; 'filesystem' for the embedded one.",
)
@click.option("--no-pipeline", is_flag=True, help="Skip the enqueue -> worker -> DB run.")
@click.option(
    "--no-network",
    is_flag=True,
    help="Skip network ingest: cxr-orient listen fed by concurrent dcmsend "
    "(mixed and uncompressed corpora, beside the folder path and the "
    "disk's fsync bound) and end to end dcmsend -> listen -> worker -> SR "
    "in Orthanc.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
def main(
    quick: bool,
    out_dir: Path,
    machine: str | None,
    model_path: Path | None,
    broker: str,
    no_pipeline: bool,
    no_network: bool,
    verbose: bool,
) -> None:
    """Measure decode, model, pipeline, network ingest and the tutorial-script baseline
    side by side."""
    import logging
    import sys

    from bench.run import run_bench
    from cxr_orient.logs import cap_third_party_loggers
    from cxr_orient.settings import get_settings

    logging.basicConfig(
        level="DEBUG" if verbose else get_settings().logs.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    cap_third_party_loggers(debugging=verbose)
    if not verbose:  # as under cxr-orient: no migration chatter, no kombu notice
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    results = run_bench(
        out_dir,
        quick=quick,
        machine=machine,
        model_path=model_path,
        broker_url=None if broker == "filesystem" else broker,
        pipeline=not no_pipeline,
        network=not no_network,
        say=lambda m: click.echo(m, err=True),
    )
    click.echo(f"results: {out_dir}/{results['machine']}.json and .md")
    for key, value in results.get("summary", {}).items():
        shown = f"{value:,.2f}" if isinstance(value, float) else value
        click.echo(f"{key}: {shown}")


if __name__ == "__main__":
    main(prog_name="python -m bench")
