"""``geolabel export geo OUT_DIR``: mask GeoTIFFs, GeoPackage (source CRS), GeoJSON (EPSG:4326), scene masks."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def export_geo_cmd(
    out: Path = typer.Argument(..., help="Output directory (masks/, polygons.gpkg, polygons.geojson, scenes/)."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="Only the members of snapshot NAME[@VERSION]."),
    domain: list[str] | None = typer.Option(None, "--domain", help="Keep this domain (repeatable)."),
    level: list[str] | None = typer.Option(None, "--level", help="Keep this level: L1, L2 or L3 (repeatable)."),
    since: str | None = typer.Option(None, "--since", help="Triplets created at or after this ISO date/time."),
    until: str | None = typer.Option(None, "--until", help="Triplets created before this ISO date/time."),
    model_version: str | None = typer.Option(None, "--model-version", help="Only pre-labels of this version."),
) -> None:
    """Georeferenced export of accepted triplets; chips of a scene are also stitched (union) into scene masks."""
    from flows.datasets import make_filter
    from flows.geo import export_geo_flow

    make_filter(snapshot, domain, level, since, until, model_version)  # bad filters fail here, before the flow
    summary = export_geo_flow(str(out), snapshot=snapshot, domains=domain, levels=level, since=since, until=until,
                              model_version=model_version)
    typer.echo(json.dumps(summary, indent=2, default=str))
    if summary.get("pixel_only"):
        typer.echo(f"note: {len(summary['pixel_only'])} triplet(s) have no CRS: mask GeoTIFF in pixel space only, "
                   "no polygons in the GeoPackage/GeoJSON", err=True)


def register(app: typer.Typer) -> None:
    from flows.cli_datasets import export_app

    export_app.command("geo")(export_geo_cmd)
