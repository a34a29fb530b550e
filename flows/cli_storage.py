"""``geolabel storages``: Label Studio storage connections for the task images (see :mod:`labeling.storages`).

* ``geolabel storages migrate``: rewrite tasks that hold push-time presigned S3 links to ``s3://`` URIs in place
  (annotations and predictions kept) and make sure every project has the storages its tasks need (an S3 source
  storage presigning at view time per bucket; a local-files storage per imagery root). Idempotent.
* ``geolabel storages list``: the storages of the projects.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

storages_app = typer.Typer(help="Label Studio storage connections for task images (no expiring links).",
                           no_args_is_help=True)

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: GEOLABEL_DATA_DIR or ./.geolabel).")
PROJECT = typer.Option(None, "--project", help="Project title (repeatable; default: every project on the server).")
JSON = typer.Option(False, "--json", help="Print the report as JSON.")


def _context(data_dir: Path | None):  # -> (settings, client)
    from flows.runtime import settings_from
    from labeling.client import LabelStudioClient

    settings = settings_from({"data_dir": str(data_dir)} if data_dir else None)
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
    project: list[str] | None = PROJECT,
    dry_run: bool = typer.Option(False, "--dry-run", help="Count what would change; change nothing."),
    presign_ttl: int = typer.Option(15, "--presign-ttl", min=1, help="Minutes a view-time presigned link lives."),
    as_json: bool = JSON,
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Move tasks from expiring presigned links to storage URIs, in place; ensure the storages they need."""
    from flows.labeling_flows import DISPLAY_DIR, imagery_root
    from labeling.storages import S3Connection, migrate_project_images

    settings, client = _context(data_dir)
    roots = [*settings.imagery_roots, Path(settings.data_dir).resolve() / DISPLAY_DIR]
    s3 = S3Connection.from_settings(settings, presign_ttl_min=presign_ttl)
    out = {}
    with client:
        for p in _projects(client, project):
            rep = migrate_project_images(client, int(p["id"]), s3=s3, document_root=imagery_root(settings).parent,
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
        typer.echo(json.dumps(out, indent=2))
    if any(v["failed"] for v in out.values()):
        raise typer.Exit(1)


@storages_app.command("list")
def list_storages(project: list[str] | None = PROJECT, as_json: bool = JSON, data_dir: Path | None = DATA_DIR) -> None:
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
        typer.echo(json.dumps(out, indent=2))
        return
    for title, rows in out.items():
        typer.echo(f"{title}: " + ("; ".join(
            f"{r['type']} {r.get('path') or 's3://' + str(r['bucket']) + '/' + r['prefix']}" for r in rows) or "none"))


def register(app: typer.Typer) -> None:
    app.add_typer(storages_app, name="storages")
