"""``geolabel export geo OUT_DIR``: mask GeoTIFFs, GeoPackage (source CRS), GeoJSON (EPSG:4326), scene masks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DataDir, Json, overrides_for, print_json
from flows.cli_datasets import Domains, Levels, ModelVersion, Since, SnapshotRef, Until, export_app


@export_app.command("geo")
def export_geo_cmd(
    out: Annotated[Path, typer.Argument(help="Output directory (masks/, polygons.gpkg, polygons.geojson, scenes/).")],
    snapshot: SnapshotRef = None,
    domain: Domains = None,
    level: Levels = None,
    since: Since = None,
    until: Until = None,
    model_version: ModelVersion = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Georeferenced export of accepted triplets; chips of a scene are also stitched (union) into scene masks."""
    from flows.datasets import make_filter
    from flows.geo import export_geo_flow

    make_filter(snapshot, domain, level, since, until, model_version)  # bad filters fail here, before the flow
    summary = export_geo_flow(str(out), settings_overrides=overrides_for(data_dir), snapshot=snapshot, domains=domain,
                              levels=level, since=since, until=until, model_version=model_version)
    if summary.get("pixel_only"):
        typer.echo(f"note: {len(summary['pixel_only'])} triplet(s) have no CRS: mask GeoTIFF in pixel space only, "
                   "no polygons in the GeoPackage/GeoJSON", err=True)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{out}: " + ", ".join(f"{k} {v}" for k, v in summary.items() if isinstance(v, int | str)))


def register(app: typer.Typer) -> None:
    """Nothing to add at the top level: the command lives in the ``export`` group (imported above)."""
