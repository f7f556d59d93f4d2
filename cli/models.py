"""``cxr-orient train``, ``evaluate``, ``register``, ``promote``, ``rollback``,
``models``, ``retrain`` and ``label``: the model versions and their life cycle."""

from __future__ import annotations

import json
from pathlib import Path

import click

from cxr_orient.settings import get_settings

# Literal here: importing cxr_orient.architectures would load Keras for every command.
ARCHITECTURE_HELP = (
    "compact_invariant_64 (the shipped models' view network), "
    "compact_invariant_64_heads (adds the orientation and unusual-image "
    "heads), compact_invariant_64_heads2 (the served one: the unusual-image "
    "score also asks the orientation head), compact_invariant_64_heads3 "
    "(adds a chest-or-not and a PA/AP head), compact_invariant, "
    "compact_invariant_slim, compact, compact_wide, tutorial2019, vgg16, "
    "mobilenetv3small. How each shipped checkpoint and its heads were "
    "made: python -m recipes.<name> --help, from a checkout."
)


@click.command()
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--architecture",
    default="compact_invariant_64",
    show_default=True,
    help=ARCHITECTURE_HELP,
)
@click.option("--epochs", default=30, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write the checkpoint and report (default CXR_MODEL_DIR).",
)
@click.option(
    "--manifest",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="CSV with file and patientid columns, for a patient-grouped split.",
)
def train(
    data_dir: Path,
    architecture: str,
    epochs: int,
    seed: int,
    out_dir: Path | None,
    manifest: Path | None,
) -> None:
    """Train from a folder of class subfolders (frontal/, lateral/) and register the model.

    The model is registered as a candidate version; promote it with `cxr-orient promote`.
    """
    from cxr_orient.registry import register_checkpoint
    from db.session import session_scope
    from training.candidate import train_from_folder

    settings = get_settings()
    out = (out_dir or settings.storage.effective_model_dir).expanduser().resolve()
    checkpoint, card = train_from_folder(
        data_dir,
        out_dir=out,
        architecture=architecture,
        epochs=epochs,
        imagenet_weights_dir=settings.training.imagenet_weights_dir,
        seed=seed,
        manifest=manifest,
    )
    with session_scope() as session:
        version = register_checkpoint(
            session, checkpoint, actor="cli", reason=f"cxr-orient train {data_dir}"
        )
        click.echo(f"registered {version.name} ({card.architecture}) from {checkpoint}")


@click.group()
def label() -> None:
    """Ground-truth labels (append-only; the latest per instance counts)."""


@label.command("import")
@click.argument("csv_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--source",
    default="import",
    show_default=True,
    help="Source recorded for rows without a source column.",
)
@click.option("--annotator", default=None, help="Annotator for rows without one.")
def label_import(csv_path: Path, source: str, annotator: str | None) -> None:
    """Import CSV_PATH (sop_instance_uid,label[,source,annotator,projection]); all rows or
    none. A label PA or AP is a frontal with that projection."""
    from cxr_orient.errors import LabelImportError
    from cxr_orient.labels import import_labels, read_label_csv
    from db.session import session_scope

    try:
        rows = read_label_csv(csv_path)
        with session_scope() as session:
            count = import_labels(session, rows, default_source=source, default_annotator=annotator)
    except LabelImportError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {count} labels from {csv_path}")


@click.command()
@click.option(
    "--min-new-labels",
    default=50,
    show_default=True,
    help="Skip (exit 0) when fewer labels arrived since the last training run.",
)
@click.option(
    "--data",
    "extra_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also train on a folder of class subfolders.",
)
@click.option(
    "--manifest",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Patient ids for --data (CSV with file and patientid columns).",
)
@click.option(
    "--architecture",
    default="auto",
    show_default=True,
    help="What the candidate is. auto: when the model in service has a PA/AP or "
    "chest-or-not head (compact-invariant-64-v4), that model with its PA/AP head refitted "
    "on the labelled frontals' projections (labels.projection; with --data, a manifest's "
    "view column too) and its chest-or-not head on the films labelled not_chest (from 10 "
    "outside the evaluation split), every other weight kept; otherwise a "
    "compact_invariant_64 view network. refit-projection: the refit. Or a network to "
    "train: " + ARCHITECTURE_HELP,
)
@click.option(
    "--epochs", default=200, show_default=True, help="Epochs of the cosine learning-rate schedule."
)
@click.option(
    "--min-epochs",
    type=int,
    default=None,
    help="Epochs before early stopping may stop the run [default: 70 % of --epochs].",
)
@click.option("--seed", default=0, show_default=True)
def retrain(
    min_new_labels: int,
    extra_dir: Path | None,
    manifest: Path | None,
    architecture: str,
    epochs: int,
    min_epochs: int | None,
    seed: int,
) -> None:
    """Nightly retrain: make a candidate from the labels, promote it only if it beats the
    active model on the fixed evaluation split (the view; PA/AP, no worse in coverage or
    balanced accuracy, and chest-or-not, no fewer not-chest films detected and no more
    chest films flagged, when both have the head). Exit 0 when done or nothing to do."""
    from training.lifecycle import retrain as run_retrain

    result = run_retrain(
        get_settings(),
        min_new_labels=min_new_labels,
        extra_dir=extra_dir,
        manifest=manifest,
        architecture=architecture,
        epochs=epochs,
        min_epochs=min_epochs,
        seed=seed,
    )
    for problem in result.problems[:20]:
        click.echo(f"not trained on: {problem}", err=True)
    click.echo(result.message)
    decision = result.decision
    if decision is not None and decision.candidate_projection is not None:
        for who, figures in (
            ("candidate", decision.candidate_projection),
            ("active", decision.active_projection),
        ):
            if figures is not None:
                click.echo(
                    f"PA/AP {who}: stated {figures['stated']}/{figures['n']} frontals, "
                    f"balanced accuracy {_figure(figures['balanced_accuracy'])} stated, "
                    f"{_figure(figures['balanced_accuracy_all'])} all"
                )
    if decision is not None and decision.candidate_scope is not None:
        for who, figures in (
            ("candidate", decision.candidate_scope),
            ("active", decision.active_scope),
        ):
            if figures is not None:
                click.echo(
                    f"chest or not {who}: detected {figures['not_chest_detected']}/"
                    f"{figures['n_not_chest']} not-chest films, flagged "
                    f"{figures['chest_flagged']}/{figures['n_chest']} chest films"
                )


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--actor", default=None, help="Who (default: $USER).")
@click.option(
    "--challenge",
    is_flag=True,
    help="Then let the promotion gate decide, on the fixed evaluation split, "
    "whether it replaces the active model (recorded either way).",
)
def register(checkpoint: Path, reason: str, actor: str | None, challenge: bool) -> None:
    """Register CHECKPOINT (a .keras file with its card beside it) as a model version.

    It is not active until `cxr-orient promote NAME` (a human decision) or, with
    --challenge, until it beats the active model at the gate (or ties it on the view and
    adds heads, as compact-invariant-64-v4 does over v3). A new release's shipped model
    reaches an existing database this way; the shipped file only seeds an empty one.
    """
    import getpass

    from cxr_orient.errors import ModelError
    from cxr_orient.registry import register_checkpoint
    from db.session import session_scope

    who = actor or getpass.getuser()
    try:
        with session_scope() as session:
            version = register_checkpoint(session, checkpoint, actor=who, reason=reason)
            name, state = version.name, version.state
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"registered {name} ({state}) from {checkpoint.resolve()}")
    if not challenge:
        return
    from training.lifecycle import challenge_version

    try:
        decision = challenge_version(name, actor=who, settings=get_settings())
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        ("promoted: " if decision.promote else "kept the active model: ")
        + "; ".join(decision.reasons)
    )


@click.command()
@click.argument("version")
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--actor", default=None, help="Who (default: $USER).")
def promote(version: str, reason: str, actor: str | None) -> None:
    """Make model VERSION the active one (recorded in model_events)."""
    import getpass

    from cxr_orient.errors import ModelError
    from cxr_orient.registry import promote as do_promote

    try:
        do_promote(version, actor=actor or getpass.getuser(), reason=reason)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{version} is now active")


@click.command()
@click.option("--reason", required=True, help="Why, for the audit trail.")
@click.option("--actor", default=None, help="Who (default: $USER).")
def rollback(reason: str, actor: str | None) -> None:
    """Re-activate the model version that was in service before the current one."""
    import getpass

    from cxr_orient.errors import ModelError
    from cxr_orient.registry import rollback as do_rollback

    try:
        version = do_rollback(actor=actor or getpass.getuser(), reason=reason)
    except ModelError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"rolled back to {version.name}")


@click.command()
def models() -> None:
    """Registered model versions, newest first."""
    from db import crud
    from db.session import session_scope

    with session_scope() as session:
        for v in crud.list_model_versions(session):
            held_out = v.metrics.get("held_out_test", {}).get("balanced_accuracy", {})
            figure = held_out.get("value") if isinstance(held_out, dict) else held_out
            click.echo(
                f"{v.name:40s} {v.architecture:26s} {v.state:9s}"
                f"{' ACTIVE' if v.is_active else '':7s} balanced_accuracy={figure}"
            )


@click.command()
@click.argument("model")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--manifest",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Patient ids (bootstrap intervals resample patients).",
)
@click.option(
    "--robustness/--no-robustness",
    default=True,
    show_default=True,
    help="Also rotated 90/180/270, flipped and inverted copies.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full metrics as JSON.")
def evaluate(
    model: str, data: Path, manifest: Path | None, robustness: bool, as_json: bool
) -> None:
    """Evaluate MODEL (a registered version name or a .keras path) on DATA, a folder of
    frontal/ and lateral/ subfolders (PNG, JPEG or DICOM): accuracy, balanced accuracy,
    per-class precision and recall, ROC AUC and ECE with bootstrap 95 % intervals."""
    from cxr_orient.registry import load_classifier
    from training.data import load_labelled_folder
    from training.evaluate import robustness as run_robustness

    classifier = load_classifier(model, get_settings().inference)
    dataset = load_labelled_folder(data, manifest=manifest)
    variants = None if robustness else ["original"]
    results = run_robustness(
        classifier, dataset.images, dataset.labels, groups=dataset.patients, variants=variants
    )
    if as_json:
        click.echo(
            json.dumps(
                {k: {m: v for m, v in r.items() if m != "p_lateral"} for k, r in results.items()},
                indent=2,
                default=str,
            )
        )
        return
    keys = (
        "accuracy",
        "balanced_accuracy",
        "frontal_precision",
        "frontal_recall",
        "lateral_precision",
        "lateral_recall",
        "roc_auc",
        "ece",
    )
    click.echo(
        f"{len(dataset)} images, {len(set(dataset.patients))} patients, {dataset.class_counts()}"
    )
    for variant, r in results.items():
        cells = []
        for k in keys:
            low, high = r["ci95"].get(k, (float("nan"), float("nan")))
            cells.append(f"{k}={r[k]:.3f} [{low:.3f}, {high:.3f}]")
        click.echo(f"{variant}: " + ", ".join(cells))
