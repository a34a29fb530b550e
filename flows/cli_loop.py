"""``geolabel ingest | preannotate | push | sync | cycle | serve``: the label loop's commands.

Each command runs the corresponding Prefect flow (Prefect's ephemeral server when no ``PREFECT_API_URL`` is set, a
Prefect server otherwise) on the settings of ``--data-dir`` (``flows.cli_common``). Long stages show a progress bar
fed by the database (rows written so far), so the bar reflects work that is really stored.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer

from flows.cli_common import (
    DataDir,
    IntakeProject,
    Json,
    Profile,
    Project,
    Queries,
    console,
    overrides_for,
    print_json,
    report_issues,
    run_with_progress,
    runtime_for,
    settings_for,
    tiny_note,
)

app = typer.Typer()

Intake = Annotated[
    bool | None,
    typer.Option(
        "--intake/--no-intake",
        help="Pull the queries annotators wrote in the intake project first (default: GEOLABEL_INTAKE, true).",
        show_default=False,
    ),
]


def _count_predictions(rt: Any, model_version: str) -> int:
    from storage.status import count_predictions

    with rt.session() as s:
        return count_predictions(s, model_version)


def _count_tasks(rt: Any) -> int:
    from storage.status import count_label_tasks

    with rt.session() as s:
        return count_label_tasks(s)


def _parse_bands(bands: str | None) -> list[int] | None:
    if not bands:
        return None
    try:
        return [int(b) for b in bands.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--bands must be comma-separated integers, got {bands!r}") from None


@app.command("ingest")
def ingest(
    source: Annotated[str, typer.Argument(help="A directory, an image file, or s3://bucket/prefix.")],
    queries: Annotated[str, typer.Option("--queries", "-q", help="CSV or JSONL with image, query[, level, domain].")],
    bands: Annotated[
        str | None, typer.Option("--bands", help="1-based bands for R,G,B, e.g. 3,2,1 (Landsat 7).", show_default=False)
    ] = None,
    copy_images: Annotated[
        bool, typer.Option("--copy/--no-copy", help="Keep a copy of each image in the blob store.")
    ] = True,
    tile_size: Annotated[
        int,
        typer.Option("--tile-size", min=0, help="Cut TIFF scenes larger than this into chips of this size (edge chips "
                     "shifted inside); 0: no tiling."),
    ] = 1024,
    tile_overlap: Annotated[int, typer.Option("--tile-overlap", min=0, help="Pixels shared by adjacent chips.")] = 128,
    max_chips: Annotated[
        int | None,
        typer.Option("--max-chips", min=1, help="Refuse scenes with more chips (default GEOLABEL_MAX_CHIPS or 10000).",
                     show_default=False),
    ] = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Register images (by content hash) and one item per query row; large scenes become chips."""
    from flows.ingest import ingest_flow

    band_list = _parse_bands(bands)
    with console().status("ingesting ..."):
        rep = ingest_flow(
            source, queries, settings_overrides=overrides_for(data_dir), bands=band_list, copy_images=copy_images,
            tile_size=tile_size, tile_overlap=tile_overlap, max_chips=max_chips,
        )
    if as_json:
        print_json(rep.to_dict())
        return
    typer.echo(
        f"images: {rep.images_new} new, {rep.images_known} already known; "
        f"items: {rep.items_new} new, {rep.items_known} already known; {len(rep.issues)} skipped"
    )
    report_issues(rep.issues)


@app.command("preannotate")
def preannotate(
    profile: Profile = "tiny",
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many items (default: all).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Items per model batch.")] = 16,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Batches running the models at once.")] = 1,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Run GeoSeg on every item without a prediction for the profile's model version."""
    from flows.preannotate import pending_work, preannotate_flow
    from geoseg.registry import model_version_of

    ov = overrides_for(data_dir)
    rt = runtime_for(data_dir)
    mv = model_version_of(profile)
    todo = sum(len(w.items) for w in pending_work(rt, mv, limit, True))
    rep = run_with_progress(
        f"pre-annotating ({mv})",
        todo,
        lambda: _count_predictions(rt, mv),
        lambda: preannotate_flow(profile, settings_overrides=ov, limit=limit, batch_size=batch_size,
                                 concurrency=concurrency),
    )
    if as_json:
        print_json(rep.to_dict())
        return
    typer.echo(f"model {rep.model_version}: {rep.predicted} predicted, {rep.failed} failed, {rep.pending} pending")
    for item_id, msg in rep.errors[:10]:
        typer.echo(f"  item {item_id}: {msg}", err=True)
    tiny_note(rep.meaningless)


@app.command("push")
def push(
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="Whose predictions: the model version of this profile.")
    ] = "tiny",
    model_version: Annotated[
        str | None, typer.Option("--model-version", help="Push this model version instead.", show_default=False)
    ] = None,
    project: Project = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tasks per bulk import request.")] = 200,
    prelabel_format: Annotated[
        str | None,
        typer.Option("--prelabel-format", help="brush (RLE, exact) or polygon (editable vertices); default: the "
                     "setting prelabel_format (GEOLABEL_PRELABEL_FORMAT), brush.", show_default=False),
    ] = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Push predictions to Label Studio as tasks with pre-labels (idempotent)."""
    from flows.labeling_flows import push_flow
    from geoseg.registry import model_version_of

    ov = overrides_for(data_dir)
    if prelabel_format:
        ov["prelabel_format"] = prelabel_format
    rt = runtime_for(data_dir)
    mv = model_version or model_version_of(profile)
    # the bar: tasks recorded in the database out of this model version's successful predictions
    rep = run_with_progress(
        f"pushing ({mv})",
        _count_predictions(rt, mv),
        lambda: _count_tasks(rt),
        lambda: push_flow(profile, settings_overrides=ov, model_version=mv, project_title=project,
                          batch_size=batch_size),
    )
    if as_json:
        print_json(rep.to_dict())
        return
    typer.echo(
        f"{rep.label_studio_url}/projects/{rep.ls_project_id}: {rep.pushed} new task(s), {rep.reconciled} "
        f"reconciled, {rep.updated} updated, {len(rep.failed)} failed ({rep.requests} requests, {rep.seconds:.1f} s)"
    )
    for item_id, msg in rep.failed[:10]:
        typer.echo(f"  item {item_id}: {msg}", err=True)


@app.command("sync")
def sync(
    project: Project = None,
    full: Annotated[
        bool, typer.Option("--full", help="Re-read every task, not only those since the watermark.")
    ] = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Bring annotations back from Label Studio (verdicts, masks, triplets)."""
    from flows.labeling_flows import sync_flow

    with console().status("syncing annotations ..."):
        rep = sync_flow(settings_overrides=overrides_for(data_dir), project_title=project, full=full)
    if as_json:
        print_json(rep.to_dict())
        return
    typer.echo(
        f"{rep.label_studio_url}/projects/{rep.ls_project_id}: {rep.tasks_seen} task(s) read, {rep.upserted} "
        f"annotation(s) stored ({rep.unchanged} unchanged), {rep.retracted} retracted, {len(rep.malformed)} malformed; "
        f"watermark {rep.watermark}"
    )
    for ann_id, msg in rep.malformed[:10]:
        typer.echo(f"  annotation {ann_id}: {msg}", err=True)


def _print_cycle(rep: Any) -> None:
    if rep.ingest is not None:
        typer.echo(f"ingest: {rep.ingest.images_new} new image(s), {rep.ingest.items_new} new item(s)")
    if rep.intake is not None:
        i = rep.intake
        typer.echo(f"intake {i.label_studio_url}/projects/{i.ls_project_id}: {i.queries} quer(ies), "
                   f"{i.items_new} new item(s)")
    p, u, s = rep.preannotate, rep.push, rep.sync
    typer.echo(f"preannotate ({p.model_version}): {p.predicted} predicted, {p.failed} failed")
    typer.echo(f"review {u.label_studio_url}/projects/{u.ls_project_id}: {u.pushed} new task(s) with pre-labels, "
               f"{len(u.failed)} failed")
    typer.echo(f"sync: {s.upserted} annotation(s) stored ({s.unchanged} unchanged), {s.retracted} retracted, "
               f"{len(s.malformed)} malformed")


@app.command("cycle")
def cycle(
    source: Annotated[
        str | None, typer.Option("--source", help="Imagery to ingest first (with --queries).", show_default=False)
    ] = None,
    queries: Queries = None,
    profile: Profile = "tiny",
    project: Project = None,
    intake: Intake = None,
    intake_title: IntakeProject = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """One label cycle now: (ingest with --source/--queries), intake queries, preannotate, push, sync."""
    from flows.cycle import label_cycle_flow

    ov = overrides_for(data_dir)
    if intake is None:
        intake = settings_for(data_dir).intake
    with console().status("running one label cycle ..."):
        rep = label_cycle_flow(source, queries, profile=profile, settings_overrides=ov, project_title=project,
                               intake=intake, intake_title=intake_title)
    if as_json:
        print_json(rep.to_dict())
    else:
        _print_cycle(rep)
    tiny_note(rep.preannotate.meaningless)


@app.command("serve")
def serve(
    every_minutes: Annotated[float, typer.Option("--every-minutes", help="Label cycle interval in minutes.")] = 15.0,
    export_cron: Annotated[str, typer.Option("--export-cron", help="Nightly COCO export schedule (cron).")] = (
        "0 2 * * *"
    ),
    timezone: Annotated[str, typer.Option("--timezone", help="Time zone of the export schedule.")] = "UTC",
    profile: Profile = "tiny",
    source: Annotated[
        str | None, typer.Option("--source", help="Imagery the cycle ingests each time.", show_default=False)
    ] = None,
    queries: Queries = None,
    project: Project = None,
    export_dir: Annotated[
        str | None,
        typer.Option("--export-dir", help="Where the nightly export writes (default DATA_DIR/exports).",
                     show_default=False),
    ] = None,
    intake: Intake = None,
    intake_title: IntakeProject = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Serve the deployments (label cycle every N minutes, nightly export) until Ctrl-C."""
    from flows.cli_common import keep_run_failures_on_console
    from flows.serve import ServeConfig, serve_deployments

    keep_run_failures_on_console()
    cfg = ServeConfig(
        every_minutes=every_minutes,
        export_cron=export_cron,
        timezone=timezone,
        profile=profile,
        source=source,
        queries=queries,
        project_title=project,
        export_dir=export_dir,
        settings_overrides=overrides_for(data_dir) or None,
        intake=intake,
        intake_title=intake_title,
    )
    if as_json:
        print_json({"serving": True, **{k: v for k, v in vars(cfg).items() if k != "settings_overrides"}})
    if not os.environ.get("PREFECT_API_URL"):
        typer.secho(
            "note: no PREFECT_API_URL: serving against a temporary local Prefect API that ends with this process; "
            "run `prefect server start` and export PREFECT_API_URL for schedules that outlive it",
            fg="yellow",
            err=True,
        )
    serve_deployments(cfg)
