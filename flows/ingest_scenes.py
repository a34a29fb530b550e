"""Tiling at ingest (issue 16): which source objects are scenes, one Prefect task per scene, query rows -> chips.

``ingest_flow`` calls three things here and nothing else about scenes:

* :func:`split_scenes` -- a (Geo)TIFF (or any ``http(s)://`` raster) wider or taller than ``tile_size`` is a scene;
  everything else goes the whole-image path as before. ``tile_size=0`` turns tiling off.
* :func:`register_scene_task` -- :func:`storage.scenes.register_scene` for one scene (windowed reads, one rendition,
  all chips registered in one transaction or none).
* :func:`scene_rows` -- a query row naming a scene becomes one row per chip (optionally only chips whose footprint
  intersects the row's ``bbox``, given in the scene's CRS).

Defaults (``geolabel ingest --tile-size 1024 --tile-overlap 128 --max-chips 10000``) come from
:mod:`storage.scenes`; the edge chips are shifted inside the scene (no padding).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from flows.runtime import open_runtime, settings_from


def http_objects(source: str) -> list[Any] | None:
    """An ``http(s)://`` source is one scene object (HTTP has no listing); None for other sources."""
    from storage.sources import SourceObject

    if not str(source).startswith(("http://", "https://")):
        return None
    name = PurePosixPath(str(source).split("?", 1)[0]).name or str(source)
    return [SourceObject(uri=str(source), name=name, size=0)]


def is_http(uri: str) -> bool:
    return str(uri).startswith(("http://", "https://"))


def split_scenes(objects: list[Any], tile_size: int | None, s3_endpoint_url: str | None = None,
                 roots: tuple[Path, ...] | None = None) -> tuple[list[Any], list[Any]]:
    """(scene objects, whole-image objects); see the module docstring."""
    from storage.scenes import is_scene_candidate, probe_size
    from storage.sources import SourceError, check_within_roots, is_s3

    if not tile_size:
        return [], list(objects)
    scenes, whole = [], []
    for o in objects:
        uri = str(o.uri)
        if not is_scene_candidate(uri):
            whole.append(o)
            continue
        if is_http(uri):
            scenes.append(o)  # no whole-image path for http(s): errors are reported by the scene path
            continue
        if roots and not is_s3(uri):
            try:
                check_within_roots(uri, roots)
            except SourceError:
                whole.append(o)  # the whole-image path refuses it with its usual message
                continue
        size = probe_size(uri, s3_endpoint_url)
        (scenes if size is not None and max(size) > int(tile_size) else whole).append(o)
    return scenes, whole


@task(name="register-scene", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def register_scene_task(settings_overrides: dict[str, Any] | None, obj: Any, source: str,
                        bands: tuple[int, ...] | None, tile_size: int, tile_overlap: int,
                        max_chips: int | None) -> Any:
    from storage.scenes import register_scene

    rt = open_runtime(settings_from(settings_overrides))
    return register_scene(rt.session, rt.blobs, obj.uri, obj.name, source, tile_size=tile_size,
                          overlap=tile_overlap, bands=bands, max_chips=max_chips,
                          s3_endpoint_url=rt.settings.s3_endpoint_url)


def scene_refs(scenes: list[Any]) -> dict[str, Any]:
    """How query rows may name a scene: its name, its URI, its bare file name when unique."""
    out: dict[str, Any] = {}
    count: dict[str, int] = {}
    for sc in scenes:
        out[sc.name] = out[sc.uri] = sc
        b = PurePosixPath(sc.name).name
        count[b] = count.get(b, 0) + 1
    for sc in scenes:
        b = PurePosixPath(sc.name).name
        if count[b] == 1:
            out.setdefault(b, sc)
    return out


def parse_bbox(raw: Any) -> tuple[float, float, float, float] | None:
    """``"minx,miny,maxx,maxy"`` (or a 4-list) -> floats; empty -> None; anything else -> ValueError."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    parts = raw.replace(";", ",").split(",") if isinstance(raw, str) else list(raw)
    try:
        vals = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"bbox must be four numbers minx,miny,maxx,maxy, got {raw!r}") from None
    if len(vals) != 4 or not (vals[0] < vals[2] and vals[1] < vals[3]):
        raise ValueError(f"bbox must be four numbers minx,miny,maxx,maxy with min < max, got {raw!r}")
    return vals  # type: ignore[return-value]


def scene_rows(row: Any, scene: Any) -> tuple[list[tuple[int, Any]], str | None]:
    """(image id, row) for every chip of ``scene`` the row applies to, or an error message."""
    if scene.error:
        return [], f"scene {row.image!r} could not be ingested: {scene.error}"
    try:
        bbox = parse_bbox(getattr(row, "bbox", None))
    except ValueError as exc:
        return [], str(exc)
    ids = scene.chip_ids(bbox)
    if not ids:
        return [], f"bbox {bbox} (scene CRS) intersects no chip of scene {row.image!r}"
    return [(i, row) for i in ids], None
