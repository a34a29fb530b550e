"""``geolabel export geo OUT_DIR``: verified triplets as GIS files (issue 16; formats in :mod:`storage.geo`).

Layout (every file written beside and renamed, or rebuilt whole, so a failed export leaves no half file)::

    OUT_DIR/
      masks/triplet_<id>.mask.tif      one per accepted triplet: uint8 0/1 COG, the chip's / image's CRS + transform
      polygons.gpkg                    layer "triplets" (one more, "triplets_2", ... per further CRS) in the source CRS
                                       layer "scenes": per (scene, query) the dissolved polygons of the stitched mask
      polygons.geojson                 the triplet polygons in EPSG:4326 (RFC 7946, lon/lat)
      scenes/<scene>__<query>.mask.tif per (scene, query): the chip masks stitched (union) into one scene mask COG
      scenes.geojson                   the dissolved scene polygons in EPSG:4326
      export_geo.json                  summary: counts, filters, files, the triplets left out of vector files and why

Attributes of every polygon: triplet_id, query, level, domain, verdict, annotator, model_version, scene (the scene
URI, empty for a whole image), chip_window ("col,row,width,height"), image_sha256. Images without a CRS get their
mask GeoTIFF (pixel transform) but no polygons in the GeoPackage/GeoJSON: they cannot be placed on Earth; the summary
lists them under ``pixel_only``. Overlaps between chips of a scene: the scene mask is the **union** of the accepted
chip masks for that query (:func:`storage.geo.stitch_scene_mask`). Vector features are collected in memory (one
shapely geometry per triplet); the masks are read one at a time.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.blobs import BlobError, BlobStore
from storage.datasets.select import DatasetFilter, triplet_ids
from storage.geo import (
    FIELDS,
    ChipMask,
    Feature,
    GeoRef,
    dissolved_polygons,
    mask_polygons,
    stitch_scene_mask,
    write_geojson,
    write_gpkg,
    write_mask_geotiff,
)
from storage.maskcodec import MaskCodecError, decode_mask
from storage.models import Annotation, Image, LabelTask, Prediction, Triplet


@dataclass
class GeoExportResult:
    out_dir: Path
    n_triplets: int = 0
    n_masks: int = 0
    n_features: int = 0
    n_scenes: int = 0
    layers: list[str] = field(default_factory=list)
    pixel_only: list[int] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"out_dir": str(self.out_dir), "triplets": self.n_triplets, "masks": self.n_masks,
                "features": self.n_features, "scene_masks": self.n_scenes, "layers": self.layers,
                "pixel_only": self.pixel_only, "skipped": self.skipped, "seconds": round(self.seconds, 3)}


def _slug(text: str, limit: int = 40) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")
    return s[:limit].rstrip("-") or "x"


def scene_georef(row: Any) -> GeoRef:
    """The scene's GeoRef from one of its chips: the chip transform moved back by the window offset."""
    from affine import Affine

    chip = Affine(*(row.transform or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0))[:6])
    t = chip @ Affine.translation(-row.window_col, -row.window_row)
    return GeoRef(row.crs or None, tuple(float(v) for v in tuple(t)[:6]), int(row.scene_width), int(row.scene_height))


def _rows(session: Session, f: DatasetFilter) -> Any:
    t_ids = triplet_ids(session, f).subquery()
    q = (
        sa.select(Triplet.id, Triplet.query, Triplet.level, Triplet.domain, Triplet.mask_sha256,
                  Annotation.verdict, Annotation.annotator, Prediction.model_version, Image.sha256.label("image_sha"),
                  Image.width, Image.height, Image.crs, Image.transform, Image.scene_uri, Image.scene_width,
                  Image.scene_height, Image.window_col, Image.window_row)
        .join(Annotation, Triplet.annotation_id == Annotation.id)
        .join(Image, Triplet.image_id == Image.id)
        .outerjoin(LabelTask, Annotation.label_task_id == LabelTask.id)
        .outerjoin(Prediction, LabelTask.prediction_id == Prediction.id)
        .where(Triplet.id.in_(sa.select(t_ids.c.id))).order_by(Triplet.id)
    )
    return session.execute(q.execution_options(yield_per=500))


def export_geo(session: Session, blobs: BlobStore, out_dir: str | Path, filters: DatasetFilter | None = None
               ) -> GeoExportResult:
    """Write the layout of the module docstring for the triplets ``filters`` selects; returns the summary."""
    f = filters or DatasetFilter()
    t0 = time.perf_counter()
    out = Path(out_dir)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    res = GeoExportResult(out)
    feats: list[Feature] = []
    scenes: dict[tuple[str, str], list[tuple[Any, str]]] = defaultdict(list)
    for row in _rows(session, f):
        res.n_triplets += 1
        try:
            mask = decode_mask(blobs.get(row.mask_sha256), (row.height, row.width))
        except (BlobError, MaskCodecError) as exc:
            res.skipped.append({"triplet_id": row.id, "reason": str(exc)})
            continue
        georef = GeoRef.of_image(row)
        write_mask_geotiff(mask, georef, out / "masks" / f"triplet_{row.id}.mask.tif")
        res.n_masks += 1
        window = f"{row.window_col},{row.window_row},{row.width},{row.height}" if row.scene_uri else None
        props = {"triplet_id": row.id, "query": row.query, "level": row.level, "domain": row.domain,
                 "verdict": str(row.verdict), "annotator": row.annotator, "model_version": row.model_version,
                 "scene": row.scene_uri, "chip_window": window, "image_sha256": row.image_sha}
        if not georef.georeferenced:
            res.pixel_only.append(row.id)
        else:
            feats.append(Feature(mask_polygons(mask, georef), georef.crs_wkt, props))
        if row.scene_uri:
            scenes[(row.scene_uri, row.query)].append((row, row.mask_sha256))
    gpkg = out / "polygons.gpkg"
    tmp_gpkg = out / ".polygons.partial.gpkg"
    tmp_gpkg.unlink(missing_ok=True)
    res.layers = write_gpkg(tmp_gpkg, "triplets", feats)
    res.n_features = len(feats)
    write_geojson(feats, out / "polygons.geojson")
    scene_feats = _write_scenes(out, blobs, scenes, res)
    res.layers += write_gpkg(tmp_gpkg, "scenes", scene_feats, fields=("scene", "query", "chips", "triplet_ids"))
    write_geojson(scene_feats, out / "scenes.geojson")
    if tmp_gpkg.exists():
        os.replace(tmp_gpkg, gpkg)
    res.seconds = time.perf_counter() - t0
    summary = {**res.summary(), "filters": f.describe(), "fields": list(FIELDS)}
    (out / "export_geo.json").write_text(json.dumps(summary, indent=2, default=str))
    return res


def _write_scenes(out: Path, blobs: BlobStore, scenes: dict[tuple[str, str], list[tuple[Any, str]]],
                  res: GeoExportResult) -> list[Feature]:
    feats: list[Feature] = []
    for (scene_uri, query), members in sorted(scenes.items()):
        first = members[0][0]
        georef = scene_georef(first)
        chips = [ChipMask(r.window_col, r.window_row, r.width, r.height,
                          load=lambda sha=sha, r=r: decode_mask(blobs.get(sha), (r.height, r.width)))
                 for r, sha in members]
        name = f"{_slug(Path(scene_uri.split('?', 1)[0]).stem)}__{_slug(query)}.mask.tif"
        path = stitch_scene_mask(chips, georef, out / "scenes" / name)
        res.n_scenes += 1
        if georef.georeferenced:
            feats.append(Feature(dissolved_polygons(path, georef), georef.crs_wkt,
                                 {"scene": scene_uri, "query": query, "chips": len(members),
                                  "triplet_ids": ",".join(str(r.id) for r, _ in members)}))
    return feats
