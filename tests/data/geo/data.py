#!/usr/bin/env python3
"""Generate the georeferenced rasters the geo tests use (torchgeo style: a script, no binary fixtures in git).

Each ``make_*`` function writes one real GeoTIFF with rasterio and returns its path; the tests call them into their
``tmp_path``. Run as a script to write a sample set into this directory (ignored by git) for a look in QGIS:
``python tests/data/geo/data.py``.

Pixel content is smooth (sums of sines + a little seeded noise) so compression and percentiles behave like imagery;
``blob_mask`` makes masks with holes and several parts.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

#: A projected CRS given as WKT with no AUTHORITY anywhere (no EPSG code exists for it): an Albers equal-area
#: with made-up standard parallels on a made-up sphere-ish ellipsoid.
CUSTOM_WKT = (
    'PROJCS["geolabel test Albers",GEOGCS["geolabel test geographic",DATUM["geolabel_test_datum",'
    'SPHEROID["geolabel test spheroid",6378100,298.3]],PRIMEM["Greenwich",0],'
    'UNIT["degree",0.0174532925199433]],PROJECTION["Albers_Conic_Equal_Area"],'
    'PARAMETER["latitude_of_center",41.5],PARAMETER["longitude_of_center",-3.25],'
    'PARAMETER["standard_parallel_1",38.75],PARAMETER["standard_parallel_2",44.25],'
    'PARAMETER["false_easting",250000],PARAMETER["false_northing",125000],UNIT["metre",1],'
    'AXIS["Easting",EAST],AXIS["Northing",NORTH]]'
)

UTM33 = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_650_000.0)  # 10 m pixels in EPSG:32633 / 25833 (central Italy)


def pattern(height: int, width: int, count: int = 3, dtype: str = "uint16", seed: int = 0, row0: int = 0
            ) -> np.ndarray:
    """(count, height, width) smooth values; rows start at ``row0`` so strips of one scene join seamlessly."""
    rng = np.random.default_rng(seed + row0)
    yy, xx = np.mgrid[row0:row0 + height, 0:width].astype(np.float32)
    out = []
    for b in range(count):
        v = np.sin(xx / (37.0 + 11 * b)) + np.cos(yy / (53.0 + 7 * b)) + 0.5 * np.sin((xx + yy) / 211.0)
        v = (v + 2.5) / 5.0 + rng.normal(0, 0.02, size=v.shape).astype(np.float32)
        out.append(v)
    a = np.clip(np.stack(out), 0, 1)
    if dtype == "uint8":
        return (a * 255).astype(np.uint8)
    if dtype == "uint16":
        return (a * 4000 + 200).astype(np.uint16)
    return (a * 0.6).astype(dtype)


def make_scene(path: str | Path, width: int, height: int, *, count: int = 3, dtype: str = "uint16",
               crs: Any = "EPSG:32633", transform: tuple[float, ...] | None = UTM33, blocksize: int = 256,
               compress: str = "DEFLATE", overviews: tuple[int, ...] = (), nodata: float | None = None,
               seed: int = 0, strip_rows: int = 1024, driver: str = "GTiff") -> Path:
    """A tiled GeoTIFF written in strips (memory: one strip); ``overviews`` e.g. (2, 4, 8) builds them."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype,
                               "tiled": True, "blockxsize": blocksize, "blockysize": blocksize,
                               "compress": compress}
    if transform is not None:
        profile["transform"] = Affine(*transform)
    if crs is not None:
        profile["crs"] = rasterio.crs.CRS.from_user_input(crs)
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, height, strip_rows):
            h = min(strip_rows, height - r)
            dst.write(pattern(h, width, count, dtype, seed, r), window=Window(0, r, width, h))
        if overviews:
            dst.build_overviews(list(overviews), Resampling.average)
    if driver == "COG":
        from rasterio.shutil import copy

        cog = path.with_name(path.stem + ".cog.tif")
        copy(path, cog, driver="COG", compress=compress, blocksize=blocksize, overviews="AUTO")
        path.unlink()
        cog.rename(path)
    return path


def corrupt_block(path: str | Path, col_block: int, row_block: int, band: int = 1) -> Path:
    """Overwrite the compressed bytes of one internal tile with garbage (a corrupt block mid-file)."""
    import rasterio

    with rasterio.open(path) as ds:
        off = int(ds.get_tag_item(f"BLOCK_OFFSET_{col_block}_{row_block}", "TIFF", bidx=band))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{col_block}_{row_block}", "TIFF", bidx=band))
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(bytes((i * 37 + 11) % 256 for i in range(size)))
    return Path(path)


def break_epsg_key(path: str | Path, code: int = 32633, bad: int = 32699) -> Path:
    """Replace the ProjectedCSTypeGeoKey's EPSG code by one that does not exist (an unparseable CRS)."""
    p = Path(path)
    b = bytearray(p.read_bytes())
    i = b.find(struct.pack("<HHHH", 3072, 0, 1, code))
    if i < 0:
        raise ValueError(f"{p}: no ProjectedCSTypeGeoKey = {code}")
    b[i + 6:i + 8] = struct.pack("<H", bad)
    p.write_bytes(bytes(b))
    return p


def blob_mask(height: int, width: int, seed: int = 0, threshold: float = 0.55, sigma: float = 6.0) -> np.ndarray:
    """A bool mask with several blobs, some with holes (smoothed noise thresholded in a band)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    f = ndimage.gaussian_filter(rng.random((height, width)), sigma)
    f = (f - f.min()) / (f.max() - f.min() + 1e-12)
    return (f > threshold) & ~((f > threshold + 0.12) & (f < threshold + 0.16))


def ring_mask(height: int, width: int) -> np.ndarray:
    """Two separate squares, one with a square hole: a multipolygon with a hole, known exactly."""
    m = np.zeros((height, width), dtype=bool)
    m[10:60, 10:60] = True
    m[25:45, 25:45] = False
    m[70:90, 5:30] = True
    return m


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    make_scene(here / "scene_utm.tif", 2500, 1800, overviews=(2, 4))
    make_scene(here / "scene_custom_wkt.tif", 1200, 900, crs=CUSTOM_WKT, transform=(5.0, 0, 10_000, 0, -5.0, 90_000))
    make_scene(here / "scene_4326.tif", 1500, 1100, crs="EPSG:4326", transform=(1e-4, 0, 12.3, 0, -1e-4, 42.1))
    make_scene(here / "scene_rotated.tif", 1300, 1300, transform=(8.66, -5.0, 500_000, -5.0, -8.66, 4_650_000))
    make_scene(here / "scene_no_crs.tif", 1300, 1000, crs=None, transform=None)
    print("written to", here)
