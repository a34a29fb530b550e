"""``geolabel init | ingest | preannotate | push | sync | cycle | status | serve | demo``: the loop's commands.

Each command runs the corresponding Prefect flow (Prefect's ephemeral server when no ``PREFECT_API_URL`` is set, a
Prefect server otherwise) on the settings from ``storage.settings.Settings`` (``GEOLABEL_*`` env vars, geolabel.toml);
``--data-dir`` overrides the data directory for one command. Long stages show a rich progress bar fed by the
database (rows written so far), so the bar reflects work that is really stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

# Before Prefect is imported by any command: no telemetry, and room for the ephemeral API server to start on a busy
# machine (its default startup timeout is too short on 2 shared cores).
for _k, _v in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}.items():
    os.environ.setdefault(_k, _v)

_DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: GEOLABEL_DATA_DIR or ./.geolabel).")


class _NoTraceback:
    """A logging filter that keeps a record's message and drops its traceback (the CLI's one-line errors)."""

    def filter(self, record: Any) -> bool:
        record.exc_info = None
        record.exc_text = None
        return True


def quiet_prefect_tracebacks() -> None:
    """Unless ``--debug``: Prefect logs a failed flow's traceback; keep its one-line messages only."""
    import logging

    from flows.cli import _state

    if _state.get("debug"):
        return
    # logger-level filters (Prefect configures its handlers lazily and replaces them; logger filters stay)
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _NoTraceback) for f in lg.filters):
            lg.addFilter(_NoTraceback())


def overrides_for(data_dir: Path | None) -> dict[str, Any]:
    quiet_prefect_tracebacks()
    return {"data_dir": str(data_dir)} if data_dir else {}


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def run_with_progress(
    label: str, total: int, done_count: Callable[[], int], fn: Callable[[], Any], *, poll_s: float = 0.5
) -> Any:
    """Run ``fn`` while a progress bar shows ``done_count()`` out of ``total`` (polled, stored work only)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if total <= 0:
        return fn()
    start = done_count()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    th = threading.Thread(target=target, daemon=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_console(),
        transient=False,
    ) as prog:
        bar = prog.add_task(label, total=total)
        th.start()
        while th.is_alive():
            th.join(poll_s)
            with contextlib.suppress(Exception):  # a busy database must not kill the bar
                prog.update(bar, completed=min(total, max(0, done_count() - start)))
        prog.update(bar, completed=min(total, max(0, done_count() - start)))
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _count(rt: Any, model: Any, *where: Any) -> int:
    import sqlalchemy as sa

    with rt.session() as s:
        q = sa.select(sa.func.count()).select_from(model)
        for w in where:
            q = q.where(w)
        return int(s.execute(q).scalar_one())


def _count_predictions(rt: Any, mv: str) -> int:
    from storage.models import Prediction

    return _count(rt, Prediction, Prediction.model_version == mv, Prediction.error.is_(None))


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _report_issues(issues: Any, limit: int = 20) -> None:
    con = _console()
    for i in list(issues)[:limit]:
        where = f"{i.ref}" + (f" line {i.line}" if i.line else "")
        con.print(f"[yellow]skipped[/] {where}: {i.message}", highlight=False)
    if len(issues) > limit:
        con.print(f"[yellow]... and {len(issues) - limit} more[/]")


def cmd_init(data_dir: Path | None, models: bool) -> dict[str, Any]:
    from flows.runtime import open_runtime, settings_from

    settings = settings_from(overrides_for(data_dir))
    rt = open_runtime(settings)
    out: dict[str, Any] = {"settings": settings.describe()}
    if models:
        from geoseg.tiny import ensure_tiny_models, model_cache_dir

        out["tiny_models"] = {k: str(v) for k, v in ensure_tiny_models(model_cache_dir()).items()}
    from flows.status import collect_status

    out["status"] = {k: v["total"] for k, v in collect_status(rt).items() if isinstance(v, dict) and "total" in v}
    return out


def register(app: typer.Typer) -> None:
    @app.command("init")
    def init(
        data_dir: Path | None = _DATA_DIR,
        models: bool = typer.Option(True, "--models/--no-models", help="Build the tiny demo models now."),
    ) -> None:
        """Create the data directory and database schema (and the tiny demo models)."""
        out = cmd_init(data_dir, models)
        s = out["settings"]
        typer.echo(f"data dir:   {s['data_dir']}")
        typer.echo(f"database:   {s['database_url']}")
        typer.echo(f"blob store: {s['blob_url']}")
        for k, v in out.get("tiny_models", {}).items():
            typer.echo(f"tiny {k}: {v}")

    @app.command("ingest")
    def ingest(
        source: str = typer.Argument(..., help="A directory, an image file, or s3://bucket/prefix."),
        queries: str = typer.Option(..., "--queries", "-q", help="CSV or JSONL with image, query[, level, domain]."),
        bands: str | None = typer.Option(None, "--bands", help="1-based bands for R,G,B, e.g. 3,2,1 (Landsat 7)."),
        copy_images: bool = typer.Option(True, "--copy/--no-copy", help="Keep a copy of each image in the blob store."),
        tile_size: int = typer.Option(1024, "--tile-size", min=0, help="Cut TIFF scenes larger than this into chips "
                                      "of this size (edge chips shifted inside); 0: no tiling."),
        tile_overlap: int = typer.Option(128, "--tile-overlap", min=0, help="Pixels shared by adjacent chips."),
        max_chips: int | None = typer.Option(None, "--max-chips", min=1, help="Refuse scenes with more chips "
                                             "(default GEOLABEL_MAX_CHIPS or 10000)."),
        data_dir: Path | None = _DATA_DIR,
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Register images (by content hash) and one item per query row; large scenes become chips."""
        from flows.ingest import ingest_flow

        band_list = None
        if bands:
            try:
                band_list = [int(b) for b in bands.split(",")]
            except ValueError:
                raise typer.BadParameter(f"--bands must be comma-separated integers, got {bands!r}") from None
        with _console().status("ingesting ..."):
            rep = ingest_flow(
                source, queries, settings_overrides=overrides_for(data_dir), bands=band_list, copy_images=copy_images,
                tile_size=tile_size, tile_overlap=tile_overlap, max_chips=max_chips,
            )
        if as_json:
            _print_json(rep.to_dict())
            return
        typer.echo(
            f"images: {rep.images_new} new, {rep.images_known} already known; "
            f"items: {rep.items_new} new, {rep.items_known} already known; {len(rep.issues)} skipped"
        )
        _report_issues(rep.issues)

    @app.command("preannotate")
    def preannotate(
        profile: str = typer.Option("tiny", "--profile", "-p", help="tiny, paper, or a profile TOML/JSON file."),
        limit: int | None = typer.Option(None, "--limit", help="At most this many items."),
        batch_size: int = typer.Option(16, "--batch-size", min=1),
        concurrency: int = typer.Option(1, "--concurrency", min=1, help="Batches running the models at once."),
        data_dir: Path | None = _DATA_DIR,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Run GeoSeg on every item without a prediction for the profile's model version."""
        from flows.preannotate import model_version_of, pending_work, preannotate_flow
        from flows.runtime import open_runtime, settings_from
        from geoseg.types import TINY_MODEL_WARNING
        from storage.models import Prediction

        ov = overrides_for(data_dir)
        rt = open_runtime(settings_from(ov))
        mv = model_version_of(profile)
        todo = sum(len(w.items) for w in pending_work(rt, mv, limit, True))
        rep = run_with_progress(
            f"pre-annotating ({mv})",
            todo,
            lambda: _count(rt, Prediction, Prediction.model_version == mv, Prediction.error.is_(None)),
            lambda: preannotate_flow(
                profile, settings_overrides=ov, limit=limit, batch_size=batch_size, concurrency=concurrency
            ),
        )
        if as_json:
            _print_json(rep.to_dict())
            return
        typer.echo(f"model {rep.model_version}: {rep.predicted} predicted, {rep.failed} failed, {rep.pending} pending")
        for item_id, msg in rep.errors[:10]:
            typer.echo(f"  item {item_id}: {msg}", err=True)
        if rep.meaningless:
            typer.secho(f"note: {TINY_MODEL_WARNING}", fg="yellow", err=True)

    @app.command("push")
    def push(
        profile: str = typer.Option("tiny", "--profile", "-p", help="Whose predictions: the profile's model version."),
        model_version: str | None = typer.Option(None, "--model-version", help="Push this model version instead."),
        project: str | None = typer.Option(None, "--project", help="Label Studio project title."),
        batch_size: int = typer.Option(200, "--batch-size", min=1, help="Tasks per bulk import request."),
        data_dir: Path | None = _DATA_DIR,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Push predictions to Label Studio as tasks with pre-labels (idempotent)."""
        from flows.labeling_flows import push_flow
        from flows.preannotate import model_version_of
        from flows.runtime import open_runtime, settings_from
        from storage.models import LabelTask

        ov = overrides_for(data_dir)
        rt = open_runtime(settings_from(ov))
        mv = model_version or model_version_of(profile)
        # the bar: tasks recorded in the database out of this model version's successful predictions
        rep = run_with_progress(
            f"pushing ({mv})",
            _count_predictions(rt, mv),
            lambda: _count(rt, LabelTask),
            lambda: push_flow(
                profile, settings_overrides=ov, model_version=mv, project_title=project, batch_size=batch_size
            ),
        )
        if as_json:
            _print_json(rep.to_dict())
            return
        typer.echo(
            f"{rep.label_studio_url}/projects/{rep.ls_project_id}: {rep.pushed} new task(s), {rep.reconciled} "
            f"reconciled, {rep.updated} updated, {len(rep.failed)} failed "
            f"({rep.requests} requests, {rep.seconds:.1f} s)"
        )
        for item_id, msg in rep.failed[:10]:
            typer.echo(f"  item {item_id}: {msg}", err=True)

    @app.command("sync")
    def sync(
        project: str | None = typer.Option(None, "--project", help="Label Studio project title."),
        full: bool = typer.Option(False, "--full", help="Re-read every task, not only those since the watermark."),
        data_dir: Path | None = _DATA_DIR,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Bring annotations back from Label Studio (verdicts, masks, triplets)."""
        from flows.labeling_flows import sync_flow

        with _console().status("syncing annotations ..."):
            rep = sync_flow(settings_overrides=overrides_for(data_dir), project_title=project, full=full)
        if as_json:
            _print_json(rep.to_dict())
            return
        typer.echo(
            f"{rep.tasks_seen} task(s) read, {rep.upserted} annotation(s) stored, {rep.retracted} retracted, "
            f"{len(rep.malformed)} malformed; watermark {rep.watermark}"
        )
        for ann_id, msg in rep.malformed[:10]:
            typer.echo(f"  annotation {ann_id}: {msg}", err=True)

    @app.command("cycle")
    def cycle(
        source: str | None = typer.Option(None, "--source", help="Imagery to ingest first (with --queries)."),
        queries: str | None = typer.Option(None, "--queries", "-q"),
        profile: str = typer.Option("tiny", "--profile", "-p"),
        project: str | None = typer.Option(None, "--project", help="Label Studio project title."),
        intake: bool | None = typer.Option(
            None,
            "--intake/--no-intake",
            help="Pull the queries annotators wrote in the intake project first (default: GEOLABEL_INTAKE, true).",
        ),
        intake_title: str | None = typer.Option(None, "--intake-title", help="Intake project title."),
        data_dir: Path | None = _DATA_DIR,
    ) -> None:
        """One label cycle now: (ingest with --source/--queries), intake queries, preannotate, push, sync."""
        from flows.cycle import label_cycle_flow
        from flows.runtime import settings_from
        from geoseg.types import TINY_MODEL_WARNING

        ov = overrides_for(data_dir)
        if intake is None:
            intake = settings_from(ov).intake
        with _console().status("running one label cycle ..."):
            rep = label_cycle_flow(
                source,
                queries,
                profile=profile,
                settings_overrides=ov,
                project_title=project,
                intake=intake,
                intake_title=intake_title,
            )
        _print_json(rep.to_dict())
        if rep.intake is not None:
            i = rep.intake
            typer.echo(
                f"intake {i.label_studio_url}/projects/{i.ls_project_id}: {i.queries} quer(ies), {i.items_new} new "
                f"item(s); review {rep.push.label_studio_url}/projects/{rep.push.ls_project_id}: "
                f"{rep.push.pushed} new task(s) with pre-labels",
                err=True,
            )
        if rep.preannotate.meaningless:
            typer.secho(f"note: {TINY_MODEL_WARNING}", fg="yellow", err=True)

    @app.command("serve")
    def serve(
        every_minutes: float = typer.Option(15.0, "--every-minutes", help="Label cycle interval."),
        export_cron: str = typer.Option("0 2 * * *", "--export-cron", help="Nightly COCO export schedule (cron)."),
        timezone: str = typer.Option("UTC", "--timezone"),
        profile: str = typer.Option("tiny", "--profile", "-p"),
        source: str | None = typer.Option(None, "--source", help="Imagery the cycle ingests each time."),
        queries: str | None = typer.Option(None, "--queries", "-q"),
        project: str | None = typer.Option(None, "--project"),
        export_dir: str | None = typer.Option(None, "--export-dir"),
        intake: bool | None = typer.Option(
            None,
            "--intake/--no-intake",
            help="Each cycle pulls the intake project's queries (default: GEOLABEL_INTAKE, true).",
        ),
        intake_title: str | None = typer.Option(None, "--intake-title", help="Intake project title."),
        data_dir: Path | None = _DATA_DIR,
    ) -> None:
        """Serve the deployments (label cycle every N minutes, nightly export) until Ctrl-C."""
        from flows.serve import ServeConfig, serve_deployments

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
        if not os.environ.get("PREFECT_API_URL"):
            typer.secho(
                "note: no PREFECT_API_URL: serving against a temporary local Prefect API that ends with this process; "
                "run `prefect server start` and export PREFECT_API_URL for schedules that outlive it",
                fg="yellow",
                err=True,
            )
        serve_deployments(cfg)

    @app.command("demo")
    def demo(
        data_dir: Path | None = _DATA_DIR,
        start_label_studio: bool = typer.Option(
            True, "--start-label-studio/--no-start-label-studio", help="Start a local Label Studio if none answers."
        ),
        seed: int = typer.Option(0, "--seed"),
    ) -> None:
        """The whole loop on embedded defaults over real aerial imagery (tiny models, simulated annotator)."""
        from flows.demo import print_summary, run_demo

        quiet_prefect_tracebacks()
        res = run_demo(data_dir, start_label_studio=start_label_studio, seed=seed, echo=typer.echo)
        print_summary(res, echo=typer.echo)

    @app.command("status")
    def status(
        data_dir: Path | None = _DATA_DIR,
        as_json: bool = typer.Option(False, "--json", help="Machine-readable counts."),
    ) -> None:
        """Counts per stage (images, items, predictions, tasks, annotations, triplets) and per model version."""
        from flows.runtime import open_runtime, settings_from
        from flows.status import collect_status

        st = collect_status(open_runtime(settings_from(overrides_for(data_dir))))
        if as_json:
            _print_json(st)
            return
        _print_status(st)


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"database: {st['database']}   blobs: {st['blob_store']}", highlight=False)
    t = Table("stage", "total", "detail")
    t.add_row("images", str(st["images"]["total"]), "")
    t.add_row("items", str(st["items"]["total"]), ", ".join(f"{k} {v}" for k, v in st["items"]["by_status"].items()))
    p = st["predictions"]
    t.add_row("predictions", str(p["total"]), f"failed {p['failed']}")
    for mv, d in p["by_model_version"].items():
        t.add_row("", "", f"{mv}: ok {d['ok']}, failed {d['failed']}")
    t.add_row("tasks", str(st["tasks"]["total"]), ", ".join(f"{k}: {v}" for k, v in st["tasks"]["by_project"].items()))
    for mv, n in st["tasks"]["by_model_version"].items():
        t.add_row("", "", f"pre-labelled by {mv}: {n}")
    a = st["annotations"]
    t.add_row(
        "annotations",
        str(a["total"]),
        ", ".join(f"{k} {v}" for k, v in a["by_verdict"].items())
        + (f", retracted {a['retracted']}" if a["retracted"] else ""),
    )
    tr = st["triplets"]
    t.add_row("triplets", str(tr["total"]), f"active {tr['active']}, withdrawn {tr['withdrawn']}")
    con.print(t)
    if st.get("prelabel_quality"):
        q = Table(title="pre-label quality per model version")
        for col in ("model version", "annotations", "accepted", "IoU pre-label vs accepted (median)",
                    "accepted unchanged", "median lead time"):
            q.add_column(col)

        def fmt(v: Any, pct: bool = False, unit: str = "") -> str:
            if v is None:
                return "-"
            return f"{v:.0%}" if pct else f"{v:.2f}{unit}"

        for r in st["prelabel_quality"]:
            q.add_row(r["model_version"], str(r["n_annotations"]), fmt(r["acceptance_rate"], pct=True),
                      fmt(r["median_iou"]), fmt(r["share_unchanged"], pct=True),
                      fmt(r["median_lead_time_s"], unit=" s"))
        con.print(q)
