"""``geolabel storages``: Label Studio storage connections for the task images (see :mod:`labeling.storages`).

* ``geolabel storages migrate``: rewrite tasks that hold push-time presigned S3 links to ``s3://`` URIs in place
  (annotations and predictions kept) and make sure every project has the storages its tasks need (an S3 source
  storage presigning at view time per bucket; a local-files storage per imagery root). Idempotent.
* ``geolabel storages list``: the storages of the projects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DataDir, Json, print_json, settings_for

app = typer.Typer()
storages_app = typer.Typer(help="Label Studio storage connections for task images (no expiring links).",
                           no_args_is_help=True)
app.add_typer(storages_app, name="storages")

Projects = Annotated[
    list[str] | None,
    typer.Option("--project", help="Project title (repeatable; default: every project on the server).",
                 show_default=False),
]


def _context(data_dir: Path | None):  # -> (settings, client)
    from labeling.client import LabelStudioClient

    settings = settings_for(data_dir)
    return settings, LabelStudioClient.from_settings(settings)


def _projects(client, titles: list[str] | None) -> list[dict]:  # noqa: ANN001 - labeling.client.LabelStudioClient
    if not titles:
        return client.projects()
    found = []
    for title in titles:
        matches = [p for p in client.projects(title=title) if p.get("title") == title]
        if not matches:
            raise typer.BadParameter(f"no Label Studio project titled {title!r} at {client.url}")
        found += matches
    return found


@storages_app.command("migrate")
def migrate(
    project: Projects = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would change; change nothing.")] = False,
    presign_ttl: Annotated[
        int, typer.Option("--presign-ttl", min=1, help="Minutes a view-time presigned link lives.")
    ] = 15,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Move tasks from expiring presigned links to storage URIs, in place; ensure the storages they need."""
    from labeling.display import DISPLAY_DIR
    from labeling.server import document_root_for
    from labeling.storages import S3Connection, migrate_project_images

    settings, client = _context(data_dir)
    roots = [*settings.imagery_roots, Path(settings.data_dir).resolve() / DISPLAY_DIR]
    s3 = S3Connection.from_settings(settings, presign_ttl_min=presign_ttl)
    out = {}
    with client:
        for p in _projects(client, project):
            rep = migrate_project_images(client, int(p["id"]), s3=s3, document_root=document_root_for(settings),
                                         roots=roots, dry_run=dry_run)
            out[p["title"]] = {"project_id": int(p["id"]), **rep.to_dict()}
            if not as_json:
                verb = "would rewrite" if dry_run else "rewrote"
                typer.echo(f"{p['title']} (project {p['id']}): {rep.tasks_seen} tasks, {verb} {rep.updated}, "
                           f"{rep.already} already on storage URIs, {rep.other} other links left, "
                           f"{len(rep.failed)} failed; storages {rep.storages or '-'}")
                for tid, why in rep.failed[:20]:
                    typer.echo(f"  task {tid}: {why}")
    if as_json:
        print_json(out)
    if any(v["failed"] for v in out.values()):
        raise typer.Exit(1)


@storages_app.command("list")
def list_storages(project: Projects = None, data_dir: DataDir = None, as_json: Json = False) -> None:
    """The local-files and S3 storages of the projects (no credentials shown)."""
    from labeling.storages import s3_storages

    _, client = _context(data_dir)
    out = {}
    with client:
        for p in _projects(client, project):
            pid = int(p["id"])
            rows = [{"id": s["id"], "type": "local-files", "path": s.get("path")} for s in client.local_storages(pid)]
            rows += [{"id": s["id"], "type": "s3", "bucket": s.get("bucket"), "prefix": s.get("prefix") or "",
                      "endpoint": s.get("s3_endpoint") or "AWS", "presign": s.get("presign"),
                      "presign_ttl_min": s.get("presign_ttl")} for s in s3_storages(client, pid)]
            out[p["title"]] = rows
    if as_json:
        print_json(out)
        return
    for title, rows in out.items():
        typer.echo(f"{title}: " + ("; ".join(
            f"{r['type']} {r.get('path') or 's3://' + str(r['bucket']) + '/' + r['prefix']}" for r in rows) or "none"))
