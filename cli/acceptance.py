"""``cxr-orient acceptance plan | list | report``: acceptance on the site's own films
(docs/acceptance.md)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def acceptance() -> None:
    """Acceptance on the site's own films: draw a sample, label it, report."""


@acceptance.command()
@click.argument("name")
@click.option(
    "--expected",
    type=float,
    default=0.98,
    show_default=True,
    help="The per-class recall the model is expected to reach.",
)
@click.option(
    "--half-width",
    type=float,
    default=0.05,
    show_default=True,
    help="Widest the exact interval may reach from the estimate, per class.",
)
@click.option(
    "--lower-bound",
    type=float,
    default=None,
    help="Size for this exact lower bound instead (e.g. 0.98): the sample that "
    "shows recall >= it if the model is as good as --expected.",
)
@click.option("--confidence", type=float, default=0.95, show_default=True)
@click.option(
    "--per-stratum",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Films each other stratum gets (header disagreement, low confidence, "
    "unusual, each modality, each device).",
)
@click.option(
    "--core-size",
    type=click.IntRange(min=0),
    default=None,
    help="Core sample size chosen by hand instead of the per-class rule.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0, max=2**62),
    default=None,
    help="The draw's seed (recorded in the plan; default: a random one).",
)
@click.option("--actor", default=None, help="Who (default: $USER).")
def plan(
    name: str,
    expected: float,
    half_width: float,
    lower_bound: float | None,
    confidence: float,
    per_stratum: int,
    core_size: int | None,
    seed: int | None,
    actor: str | None,
) -> None:
    """Draw plan NAME: a stratified sample of the answered films, sized for the exact
    intervals asked for, queued for review at /review/acceptance.

    The core sample is a simple random sample of every answered film, large enough for
    the rarest class to bring the films the per-class interval needs; each other stratum
    is topped up to --per-stratum films.
    """
    import getpass

    from cli.formatting import print_table
    from cxr_orient.acceptance import AcceptanceError, PlanTargets, create_plan
    from db.session import session_scope

    targets = PlanTargets(
        expected=expected,
        half_width=half_width,
        lower_bound=lower_bound,
        confidence=confidence,
        per_stratum=per_stratum,
        core_size=core_size,
    )
    try:
        with session_scope() as session:
            made = create_plan(
                session, name=name, actor=actor or getpass.getuser(), targets=targets, seed=seed
            )
    except AcceptanceError as exc:
        raise click.ClickException(str(exc)) from exc
    drawn = made.drawn
    click.echo(
        f"plan {made.name} (#{made.plan_id}, seed {made.seed}): {len(drawn.items)} "
        f"films of {drawn.population} answered; core sample {drawn.core_size} "
        f"({made.per_class} per class needed)"
    )
    print_table(
        [
            {"stratum": s, "answered": n, "sampled": drawn.strata_sampled[s]}
            for s, n in drawn.strata_population.items()
        ],
        ("stratum", "answered", "sampled"),
    )
    click.echo(f"review it at /review/acceptance/{made.plan_id}")


@acceptance.command("list")
def list_plans() -> None:
    """Plans with how many of their films are labelled."""
    from cli.formatting import print_table, when
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        rows = [
            {
                "id": p.plan.id,
                "name": p.plan.name,
                "created": when(p.plan.created_at),
                "by": p.plan.actor,
                "seed": p.plan.seed,
                "films": p.items,
                "labelled": p.labelled,
            }
            for p in crud.acceptance_plans(session)
        ]
    print_table(rows, ("id", "name", "created", "by", "seed", "films", "labelled"))


@acceptance.command()
@click.argument("name")
@click.option(
    "--require",
    "required",
    multiple=True,
    metavar="NAME>=VALUE",
    help="A threshold (repeatable), e.g. lateral_recall_lb>=0.98.",
)
@click.option(
    "--thresholds",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='A JSON or TOML file listing thresholds ("require").',
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for report.html and report.json (default ./acceptance-NAME).",
)
@click.option("--confidence", type=float, default=0.95, show_default=True)
@click.option("--exit-status", is_flag=True, help="Exit with status 1 unless the decision is go.")
def report(
    name: str,
    required: tuple[str, ...],
    thresholds: Path | None,
    out: Path | None,
    confidence: float,
    exit_status: bool,
) -> None:
    """Report on plan NAME from its reviewers' labels: per-class recall and precision
    with exact intervals, PA/AP, the headers, unusual images, the review load, and
    go/no-go against the thresholds (figures: docs/acceptance.md)."""
    from cxr_orient.acceptance import (
        AcceptanceError,
        ThresholdError,
        load_requirements,
        parse_requirement,
        report_for_plan,
        write_report,
    )
    from db import crud
    from db.session import session_scope

    try:
        requirements = [parse_requirement(r) for r in required]
        if thresholds is not None:
            requirements += load_requirements(thresholds)
        with session_scope() as session:
            found = crud.find_acceptance_plan(session, name=name)
            if found is None:
                raise AcceptanceError(f"no acceptance plan named {name!r}")
            made = report_for_plan(
                session, plan_id=found.id, requirements=requirements, confidence=confidence
            )
    except (AcceptanceError, ThresholdError) as exc:
        raise click.ClickException(str(exc)) from exc
    json_path, html_path = write_report(made, out or Path(f"acceptance-{name}"))
    for outcome in made["requirements"]:
        click.echo(("met     " if outcome["passed"] else "NOT MET ") + outcome["reason"])
    click.echo(
        f"decision: {made['decision']}"
        + (f" ({'; '.join(made['reasons'])})" if made["reasons"] else "")
    )
    click.echo(f"written: {html_path} {json_path}")
    if exit_status and made["decision"] != "go":
        raise SystemExit(1)
