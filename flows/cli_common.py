"""What every ``geolabel`` command shares: the common options (defined once), settings from ``--data-dir``, JSON
output, the console, progress bars fed by the database, and the ``--debug`` switch.

Options are ``typing.Annotated`` aliases so each command is a plain module-level function with typed parameters::

    @app.command("sync")
    def sync(project: Project = None, data_dir: DataDir = None, as_json: Json = False) -> None: ...
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

# Before Prefect is imported by any command: no telemetry, and room for the ephemeral API server to start on a busy
# machine (its default startup timeout is too short on 2 shared cores).
for _k, _v in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}.items():
    os.environ.setdefault(_k, _v)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data directory (default: GEOLABEL_DATA_DIR, else ./.geolabel in the current directory).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON (machine-readable).")]
Project = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="Label Studio review project title (default: the project holding this data dir's tasks, "
        "else 'GeoSeg verification').",
        show_default=False,
    ),
]
IntakeProject = Annotated[
    str | None,
    typer.Option("--intake-title", help="Intake project title (default: 'GeoSeg query intake').", show_default=False),
]
Profile = Annotated[
    str, typer.Option("--profile", "-p", help="GeoSeg profile: tiny, paper, or a profile TOML/JSON file.")
]
Queries = Annotated[
    str | None,
    typer.Option("--queries", "-q", help="CSV or JSONL with image, query[, level, domain].", show_default=False),
]

_debug = {"on": False}
_console = {"one_shot": True}  # False for long-running commands (serve): their run failures stay on the console

#: Prefect's own log lines that repeat a failed run's exception; a one-shot command prints it once itself ("error: ...")
_FAILURE_ECHOES = (
    "Task run failed with exception",
    "Finished in state Failed",
    "Encountered exception during execution",
)


def set_debug(on: bool) -> None:
    """``geolabel --debug``: errors show their traceback."""
    _debug["on"] = bool(on)


def debug_enabled() -> bool:
    return _debug["on"]


def keep_run_failures_on_console() -> None:
    """For long-running commands: Prefect's failed-run lines are the only report of a scheduled run's failure."""
    _console["one_shot"] = False


class _NoTraceback:
    """A logging filter that keeps a record's message and drops its traceback (the CLI's one-line errors); in
    one-shot commands it also drops Prefect's echoes of the failure the command reports itself as one line."""

    def filter(self, record: Any) -> bool:
        record.exc_info = None
        record.exc_text = None
        if _console["one_shot"] and record.levelno >= 20:
            return not str(record.getMessage()).startswith(_FAILURE_ECHOES)
        return True


def quiet_prefect_tracebacks() -> None:
    """Unless ``--debug``: Prefect logs a failed flow's traceback; keep its one-line messages only."""
    import logging

    if debug_enabled():
        return
    # logger-level filters (Prefect configures its handlers lazily and replaces them; logger filters stay)
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.flow_engine", "prefect.task_engine"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _NoTraceback) for f in lg.filters):
            lg.addFilter(_NoTraceback())


def overrides_for(data_dir: Path | None) -> dict[str, Any]:
    """The settings overrides of ``--data-dir`` (and quiet Prefect tracebacks for the command that asks)."""
    quiet_prefect_tracebacks()
    ov = {"data_dir": str(data_dir)} if data_dir else {}
    from flows.prefect_server import prepare_command  # the data dir's Prefect server; library noise to a log file

    prepare_command(ov)
    return ov


def settings_for(data_dir: Path | None) -> Any:
    """``storage.settings.Settings`` for ``--data-dir``, pointed at the data dir's local Label Studio."""
    from flows.runtime import settings_from

    return settings_from(overrides_for(data_dir))


def runtime_for(data_dir: Path | None, *, init_schema: bool = True) -> Any:
    """The ``flows.runtime.Runtime`` (engine with the schema in place, blob store) for ``--data-dir``."""
    from flows.runtime import open_runtime

    return open_runtime(settings_for(data_dir), init_schema=init_schema)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def console() -> Any:
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
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console(), transient=False) as prog:
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


def report_issues(issues: Any, limit: int = 20) -> None:
    """Skipped input rows, one line each (the first ``limit``)."""
    con = console()
    for i in list(issues)[:limit]:
        where = f"{i.ref}" + (f" line {i.line}" if i.line else "")
        con.print(f"[yellow]skipped[/] {where}: {i.message}", highlight=False)
    if len(issues) > limit:
        con.print(f"[yellow]... and {len(issues) - limit} more[/]")


def tiny_note(meaningless: bool) -> None:
    """The tiny-model warning on stderr when the masks mean nothing."""
    if meaningless:
        from geoseg.types import TINY_MODEL_WARNING

        typer.secho(f"note: {TINY_MODEL_WARNING}", fg="yellow", err=True)
