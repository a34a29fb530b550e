"""``geolabel intake setup | pull``: annotators write queries on images in a Label Studio intake project.

``setup`` creates the intake project and its tasks (one per registered image); ``pull`` turns the queries annotators
wrote into items (``flows.intake.intake_flow``). Both are idempotent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DataDir, IntakeProject, Json, overrides_for, print_json

app = typer.Typer(help="Query intake: annotators write queries on images in Label Studio.", no_args_is_help=True)

def _run(intake_title: str | None, create_tasks: bool, data_dir: Path | None, as_json: bool) -> None:
    from flows.intake import intake_flow

    s = intake_flow(overrides_for(data_dir), intake_title, create_tasks)
    if as_json:
        print_json(s.to_dict())
        return
    typer.echo(f"intake project: {s.label_studio_url}/projects/{s.ls_project_id}")
    typer.echo(f"  {s.tasks_created} new intake task(s), {len(s.tasks_failed)} image(s) failed")
    typer.echo(
        f"  {s.queries} quer(ies) on {s.tasks_seen} task(s): {s.items_new} new item(s), "
        f"{s.items_updated} updated, {len(s.deleted)} deleted, {len(s.kept)} kept, {len(s.malformed)} malformed"
    )
    for iid, q, why in s.kept:
        typer.echo(f"  kept item {iid} ({q!r}): withdrawn in intake but it has {why}")
    for ann, msg in s.malformed:
        typer.echo(f"  annotation {ann}: {msg}")


@app.command("setup")
def setup(intake_title: IntakeProject = None, data_dir: DataDir = None, as_json: Json = False) -> None:
    """Create the intake project and one task per registered image (then pull what is already written)."""
    _run(intake_title, True, data_dir, as_json)


@app.command("pull")
def pull(
    intake_title: IntakeProject = None,
    no_tasks: Annotated[bool, typer.Option("--no-tasks", help="Do not create tasks for new images.")] = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Turn the queries written in the intake project into items (idempotent)."""
    _run(intake_title, not no_tasks, data_dir, as_json)
