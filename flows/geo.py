"""``export_geo_flow``: verified triplets as GIS files (the work is :func:`storage.datasets.geo.export_geo`)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.runtime import open_runtime, settings_from


@task(name="export-geo", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def export_geo_task(settings_overrides: dict[str, Any] | None, out_dir: str, filters: Any) -> dict[str, Any]:
    from storage.datasets.geo import export_geo

    rt = open_runtime(settings_from(settings_overrides))
    with rt.session() as s:
        return export_geo(s, rt.blobs, out_dir, filters).summary()


@flow(name="export-geo", log_prints=True)
def export_geo_flow(
    out_dir: str,
    settings_overrides: dict[str, Any] | None = None,
    snapshot: str | None = None,
    domains: list[str] | None = None,
    levels: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Mask GeoTIFFs, a GeoPackage in the source CRS, GeoJSON in EPSG:4326 and stitched scene masks in ``out_dir``."""
    from flows.datasets import make_filter

    return export_geo_task(settings_overrides, out_dir, make_filter(snapshot, domains, levels, since, until,
                                                                    model_version))
