"""Large georeferenced scenes in: tiling plan, windowed reads, one rendition per scene, chips as image records.

A **scene** is a raster too large to label whole (a 10k x 10k GeoTIFF, often a COG on S3). It is cut into **chips**;
each chip is an ordinary ``Image`` row (so pre-annotation, Label Studio and export see it like any image) that also
names its parent scene, its pixel window in the scene, its own geotransform and the scene's CRS.

Tiling plan (:func:`plan_windows`)
    Windows of ``tile_size`` x ``tile_size`` pixels stepping by ``tile_size - overlap``. **Edge chips are shifted
    inside the scene**: the last window of a row/column starts at ``dim - tile_size``, so every chip is full-size and
    holds only real pixels -- there is no padding, hence no mask on padding. (The last step is therefore shorter and
    those chips overlap more than ``overlap``.) A scene side shorter than ``tile_size`` gives chips of that side's
    length (a scene smaller than a tile is one chip of the scene's size).
Reads (:func:`open_scene`)
    rasterio windowed reads only -- the scene is never decoded whole. Local paths, ``s3://bucket/key`` (GDAL's
    ``/vsis3``; ``AWS_S3_ENDPOINT``/``AWS_HTTPS``/``AWS_VIRTUAL_HOSTING`` from the configured S3 endpoint, credentials
    from boto3's usual chain through rasterio's ``AWSSession``) and ``http(s)://`` COGs (``/vsicurl``, range requests).
Rendition (:func:`scene_stretch`, :func:`render_chip`)
    The band choice is :mod:`geoseg.imagery`'s (explicit ``bands``, else the red/green/blue tags, else the first three
    bands, else grey). uint8 bands are used as they are; other dtypes get a linear 2-98 % stretch whose limits come
    from the **whole scene** -- its coarsest overview of at least ``STATS_SIDE`` px where the file has overviews, else
    a fixed grid of ``STATS_GRID`` x ``STATS_GRID`` sample windows -- so adjacent chips look the same. Nodata pixels
    (every chosen band masked) are black.
Chips (:func:`chip_bytes`)
    A chip is stored as a small 3-band uint8 GeoTIFF (ZSTD level 1) in the blob store, with
    its transform, the scene CRS and the tags ``GEOLABEL_SCENE`` and ``GEOLABEL_WINDOW``, so identical pixels at two
    places (black nodata corners) are still two chips. The encoding is deterministic: a re-ingest finds the same
    sha256, hence the same image rows.
CRS
    Kept as the WKT rasterio reads (``crs.to_wkt()``); never reduced to a guessed EPSG code. A scene without a CRS is
    chipped in pixel space (chip transforms are pixel offsets; outputs are pixel-only). A CRS GDAL cannot parse into
    a geographic or projected CRS (an unknown EPSG code in the GeoTIFF keys makes GDAL fall back to a ``LOCAL_CS``),
    or a scene whose chip count exceeds ``max_chips``, is refused with one clear line before any chip is registered.
    Rotated/skewed geotransforms are handled: the chip transform is the scene's composed with the window offset, and
    every output uses the full affine.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np

#: Defaults of ``geolabel ingest --tile-size/--tile-overlap`` (GeoSeg-Bench uses 810 and 1024 px images).
DEFAULT_TILE_SIZE = 1024
DEFAULT_TILE_OVERLAP = 128
#: Most chips one scene may produce (env ``GEOLABEL_MAX_CHIPS``); more is refused as a per-source error.
DEFAULT_MAX_CHIPS = 10_000
#: Scene statistics: the coarsest overview with a longer side of at least this many px; else a sample grid.
STATS_SIDE = 1024
STATS_GRID = 8
STATS_WINDOW = 128
STRETCH_PERCENTILES = (2.0, 98.0)
#: Extensions tried as scenes (everything else is ingested whole, as before).
SCENE_EXTENSIONS = (".tif", ".tiff", ".gtiff")
CHIP_SUFFIX = "#chip="
#: GDAL block cache for scene reads, MB (env ``GEOLABEL_GDAL_CACHEMAX``).
GDAL_CACHEMAX_MB = 256
#: Threads rendering + encoding chips while the calling thread reads the next windows.
ENCODE_WORKERS = 1


def source_name(uri: str) -> str:
    """The file name a decoder should judge an image by: a chip's URI (``<scene>#chip=col,row,w,h``) without its
    window, any other URI unchanged."""
    return uri.split(CHIP_SUFFIX, 1)[0]


class SceneError(ValueError):
    """A scene that cannot be chipped; the message names it and says why (one line)."""


@dataclass(frozen=True, order=True)
class ChipWindow:
    """A pixel window of a scene: column/row offset and size."""

    col: int
    row: int
    width: int
    height: int

    def as_list(self) -> list[int]:
        return [self.col, self.row, self.width, self.height]

    def text(self) -> str:
        return f"{self.col},{self.row},{self.width},{self.height}"

    def to_rasterio(self) -> Any:
        from rasterio.windows import Window

        return Window(self.col, self.row, self.width, self.height)


def _starts(dim: int, tile: int, step: int) -> list[int]:
    if dim <= tile:
        return [0]
    out = list(range(0, dim - tile, step))
    if out[-1] != dim - tile:
        out.append(dim - tile)  # the edge chip, shifted inside
    return out


def plan_windows(width: int, height: int, tile_size: int = DEFAULT_TILE_SIZE, overlap: int = DEFAULT_TILE_OVERLAP
                 ) -> list[ChipWindow]:
    """The chip windows of a ``width`` x ``height`` scene, row-major (module docstring: edges shifted inside)."""
    tile_size, overlap = int(tile_size), int(overlap)
    if tile_size < 16:
        raise SceneError(f"tile size must be at least 16 px, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise SceneError(f"tile overlap must be in [0, tile size {tile_size}), got {overlap}")
    if width <= 0 or height <= 0:
        raise SceneError(f"scene size must be positive, got {width}x{height}")
    step = tile_size - overlap
    tw, th = min(tile_size, width), min(tile_size, height)
    return [ChipWindow(c, r, tw, th) for r in _starts(height, tile_size, step) for c in _starts(width, tile_size, step)]


def count_windows(width: int, height: int, tile_size: int, overlap: int) -> int:
    step = tile_size - overlap
    n = lambda d: 1 if d <= tile_size else math.ceil((d - tile_size) / step) + 1  # noqa: E731
    return n(width) * n(height)


def chip_transform(scene_transform: Sequence[float], window: ChipWindow) -> tuple[float, ...]:
    """The chip's geotransform: the scene's, moved to the window's upper-left pixel (rotation/skew carried over)."""
    from affine import Affine

    a = Affine(*scene_transform[:6]) @ Affine.translation(window.col, window.row)
    return tuple(float(v) for v in tuple(a)[:6])


def max_chips_setting() -> int:
    raw = os.environ.get("GEOLABEL_MAX_CHIPS", "").strip()
    if not raw:
        return DEFAULT_MAX_CHIPS
    try:
        v = int(raw.replace("_", ""))
    except ValueError:
        raise SceneError(f"GEOLABEL_MAX_CHIPS must be a positive integer, got {raw!r}") from None
    if v <= 0:
        raise SceneError(f"GEOLABEL_MAX_CHIPS must be a positive integer, got {raw!r}")
    return v


def chip_uri(scene_uri: str, window: ChipWindow) -> str:
    return f"{scene_uri}{CHIP_SUFFIX}{window.text()}"


# --- opening scenes -------------------------------------------------------------------------------------------------


def is_remote(uri: str) -> bool:
    return str(uri).startswith(("s3://", "http://", "https://"))


def gdal_options(uri: str, s3_endpoint_url: str | None = None) -> dict[str, Any]:
    """GDAL config for reading ``uri``: S3 endpoint/HTTPS/path-style for ``s3://``, curl limits for http(s)."""
    opts: dict[str, Any] = {
        # GDAL's block cache (default 5 % of RAM): enough for a row of chips' shared blocks, bounded on any machine
        "GDAL_CACHEMAX": int(os.environ.get("GEOLABEL_GDAL_CACHEMAX") or GDAL_CACHEMAX_MB) * 1024 * 1024,  # bytes
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing to find sidecar files
        "GDAL_HTTP_TIMEOUT": os.environ.get("GEOLABEL_HTTP_TIMEOUT", "30"),
        "GDAL_HTTP_CONNECTTIMEOUT": "10",
        "GDAL_HTTP_MAX_RETRY": "2",
        "GDAL_HTTP_RETRY_DELAY": "0.5",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.gtiff,.TIF,.TIFF",
    }
    if str(uri).startswith("s3://"):
        endpoint = s3_endpoint_url or os.environ.get("GEOLABEL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            p = urlparse(endpoint)
            opts["AWS_S3_ENDPOINT"] = p.netloc or p.path
            opts["AWS_HTTPS"] = "NO" if p.scheme == "http" else "YES"
            opts["AWS_VIRTUAL_HOSTING"] = "FALSE"
    return opts


def gdal_session(uri: str, s3_endpoint_url: str | None = None) -> Any:
    """rasterio's AWSSession for ``s3://`` (credentials from boto3's usual chain, unsigned when there are none)."""
    if not str(uri).startswith("s3://"):
        return None
    import boto3
    from rasterio.session import AWSSession

    endpoint = s3_endpoint_url or os.environ.get("GEOLABEL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    host = None
    if endpoint:
        p = urlparse(endpoint)
        host = p.netloc or p.path
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    session = boto3.Session(region_name=region)
    if session.get_credentials() is None:
        return AWSSession(aws_unsigned=True, region_name=region, endpoint_url=host)
    return AWSSession(session=session, endpoint_url=host)


@contextlib.contextmanager
def open_scene(uri: str, s3_endpoint_url: str | None = None) -> Iterator[Any]:
    """A rasterio dataset for a local path, ``s3://`` or ``http(s)://`` URI (inside a matching ``rasterio.Env``)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    text = str(uri)
    if text.startswith("file://"):
        text = urlparse(text).path
    env = rasterio.Env(session=gdal_session(text, s3_endpoint_url), **gdal_options(text, s3_endpoint_url))
    with env, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            ds = rasterio.open(text)
        except RasterioIOError as exc:
            raise SceneError(f"{uri}: cannot open: {_one_line(exc)}") from None
        try:
            yield ds
        finally:
            ds.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


# --- facts, statistics and rendition --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneInfo:
    """What chipping a scene needs: size, bands chosen for R, G, B, dtype, CRS WKT (or None), transform."""

    uri: str
    width: int
    height: int
    count: int
    dtype: str
    chosen: tuple[int, ...]
    crs_wkt: str | None
    transform: tuple[float, ...]
    georeferenced: bool

    @property
    def rotated(self) -> bool:
        return bool(self.transform[1] or self.transform[3])


def scene_info(ds: Any, uri: str, bands: tuple[int, ...] | None = None) -> SceneInfo:
    """Facts of an open dataset; raises :class:`SceneError` for a band choice it lacks or a CRS it cannot parse."""
    from rasterio.enums import ColorInterp
    from rasterio.errors import CRSError

    count = ds.count
    interp = list(ds.colorinterp)
    if bands is not None:
        if max(bands) > count:
            raise SceneError(f"{uri}: band {max(bands)} requested but the scene has {count} band(s)")
        chosen = tuple(bands)
    else:
        tagged = {ci: i + 1 for i, ci in enumerate(interp)}
        rgb = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        non_alpha = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
        if all(t in tagged for t in rgb):
            chosen = tuple(tagged[t] for t in rgb)
        elif len(non_alpha) >= 3:
            chosen = tuple(non_alpha[:3])
        else:
            chosen = (non_alpha[0] if non_alpha else 1,)
    try:
        crs = ds.crs
        wkt = crs.to_wkt() if crs else None
        placed = bool(crs) and (crs.is_geographic or crs.is_projected)
    except CRSError as exc:
        raise SceneError(f"{uri}: the CRS cannot be parsed: {_one_line(exc)}") from None
    if wkt is not None and not placed:
        # e.g. an unknown EPSG code in the GeoTIFF keys: GDAL falls back to a LOCAL_CS that no tool can place on Earth
        raise SceneError(f"{uri}: the CRS cannot be parsed into a geographic or projected CRS (got {wkt[:80]}...)")
    t = tuple(float(v) for v in tuple(ds.transform)[:6])
    return SceneInfo(uri, ds.width, ds.height, count, str(ds.dtypes[chosen[0] - 1]), chosen, wkt, t,
                     georeferenced=wkt is not None)


def scene_stretch(ds: Any, info: SceneInfo) -> list[tuple[float, float]] | None:
    """Per chosen band, the scene's 2-98 % (lo, hi); None for uint8 scenes (used as they are)."""
    if info.dtype in ("uint8", "bool"):
        return None
    sample = _stats_sample(ds, info)
    valid = ~np.ma.getmaskarray(sample).all(axis=0)
    raw = np.ma.getdata(sample).astype(np.float64)
    out: list[tuple[float, float]] = []
    for b in raw:
        ok = valid & np.isfinite(b)
        if not ok.any():
            out.append((0.0, 0.0))
            continue
        lo, hi = np.percentile(b[ok], STRETCH_PERCENTILES)
        out.append((float(lo), float(hi)))
    return out


def _stats_sample(ds: Any, info: SceneInfo) -> np.ma.MaskedArray:
    from rasterio.windows import Window

    band = info.chosen[0]
    factors = [f for f in (ds.overviews(band) or []) if max(ds.width, ds.height) / f >= STATS_SIDE]
    if factors or max(ds.width, ds.height) <= STATS_SIDE * 2:
        f = max(factors) if factors else 1
        shape = (len(info.chosen), max(1, ds.height // f), max(1, ds.width // f))
        return ds.read(list(info.chosen), out_shape=shape, masked=True)  # GDAL reads the matching overview
    parts = []
    n, w = STATS_GRID, STATS_WINDOW
    for i in range(n):
        for j in range(n):
            row = int((ds.height - w) * (i + 0.5) / n)
            col = int((ds.width - w) * (j + 0.5) / n)
            parts.append(ds.read(list(info.chosen), window=Window(col, row, w, w), masked=True))
    return np.ma.concatenate(parts, axis=2)


def stretch_lut(dtype: str, lo: float, hi: float) -> np.ndarray | None:
    """For 8/16-bit integer bands, the stretch as a lookup table indexed by ``value - offset`` (None otherwise)."""
    info = {"uint8": (0, 256), "int8": (-128, 256), "uint16": (0, 65536), "int16": (-32768, 65536)}.get(dtype)
    if info is None or not hi > lo:
        return None
    offset, n = info
    v = np.arange(offset, offset + n, dtype=np.float64)
    return np.rint(np.clip((v - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


def render_chip(arr: np.ndarray, stretch: list[tuple[float, float]] | None, colormap: Any = None,
                valid: np.ndarray | None = None) -> np.ndarray:
    """(bands, h, w) read -> (3, h, w) uint8 with the scene's stretch; pixels not ``valid`` (nodata) black.

    ``arr`` may be a masked array (its mask gives ``valid``: a pixel is nodata when every chosen band is masked).
    8/16-bit integers go through a lookup table (one gather per band), other dtypes through float32 arithmetic;
    both give ``rint(clip((v - lo) / (hi - lo), 0, 1) * 255)``.
    """
    if isinstance(arr, np.ma.MaskedArray):
        valid = ~np.ma.getmaskarray(arr).all(axis=0)
        arr = np.ma.getdata(arr)
    raw = arr
    if colormap is not None:
        lut = np.zeros((256, 3), dtype=np.uint8)
        for k, v in colormap.items():
            if 0 <= k < 256:
                lut[k] = v[:3]
        rgb = lut[raw[0].astype(np.int64).clip(0, 255)].transpose(2, 0, 1)
        if valid is not None:
            rgb[:, ~valid] = 0
        return np.ascontiguousarray(rgb)
    planes = []
    for i in range(raw.shape[0]):
        b = raw[i]
        if stretch is None:
            p = b.astype(np.uint8, copy=False) if b.dtype != np.bool_ else b.astype(np.uint8) * 255
        elif not stretch[i][1] > stretch[i][0]:
            p = np.zeros(b.shape, dtype=np.uint8)
        elif (lut := stretch_lut(str(b.dtype), *stretch[i])) is not None:
            p = lut[b - np.iinfo(b.dtype).min] if np.iinfo(b.dtype).min else lut[b]
        else:
            lo, hi = stretch[i]
            f = b.astype(np.float32)
            f -= np.float32(lo)
            f *= np.float32(255.0 / (hi - lo))
            np.clip(f, 0, 255, out=f)
            np.nan_to_num(f, copy=False, nan=0.0)
            p = np.rint(f, out=f).astype(np.uint8)
        planes.append(p)
    if len(planes) == 1:
        planes = planes * 3
    out = np.stack(planes)
    if valid is not None and not valid.all():
        out[:, ~valid] = 0
    return out


def chip_bytes(rgb: np.ndarray, transform: Sequence[float], crs_wkt: str | None, scene_uri: str,
               window: ChipWindow) -> bytes:
    """The chip as a deterministic 3-band uint8 GeoTIFF (ZSTD, 512 px tiles when the chip allows it)."""
    import rasterio
    from affine import Affine
    from rasterio.io import MemoryFile

    _, h, w = rgb.shape
    profile: dict[str, Any] = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8",
                               "transform": Affine(*transform[:6]), "compress": "ZSTD", "zstd_level": 1,
                               "photometric": "RGB"}
    if crs_wkt:
        profile["crs"] = rasterio.crs.CRS.from_wkt(crs_wkt)
    if w % 16 == 0 and h % 16 == 0 and min(w, h) >= 256:
        profile.update(tiled=True, blockxsize=min(512, w), blockysize=min(512, h))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(rgb)
                dst.update_tags(GEOLABEL_SCENE=scene_uri, GEOLABEL_WINDOW=window.text())
            return mem.read()


@dataclass(frozen=True)
class Chip:
    """One chip ready to register: its blob bytes' sha256, window, transform and the scene's facts."""

    sha256: str
    window: ChipWindow
    transform: tuple[float, ...]
    nbytes: int


def iter_chips(ds: Any, info: SceneInfo, windows: Sequence[ChipWindow], put: Any = None, pipeline: bool = True
               ) -> Iterator[Chip]:
    """Read, render, encode and (``put(bytes)``) store each window in turn, yielding chips in window order.

    ``pipeline``: the next window is read (GDAL, GIL released) while :data:`ENCODE_WORKERS` threads render, encode
    and store the previous ones; at most ``ENCODE_WORKERS + 1`` chips are in memory. The dataset is only ever used
    from the calling thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    from rasterio.enums import ColorInterp, MaskFlags
    from rasterio.errors import RasterioError

    stretch = scene_stretch(ds, info)
    colormap = None
    if len(info.chosen) == 1 and ds.colorinterp[info.chosen[0] - 1] == ColorInterp.palette:
        with contextlib.suppress(ValueError):
            colormap = ds.colormap(info.chosen[0])
    all_valid = all(MaskFlags.all_valid in ds.mask_flag_enums[b - 1] for b in info.chosen)

    def read(win: ChipWindow) -> Any:
        try:  # masked reads only where the file has nodata or a mask band (they cost a mask per band)
            return ds.read(list(info.chosen), window=win.to_rasterio(), masked=not all_valid)
        except RasterioError as exc:
            raise SceneError(f"{info.uri}: cannot read chip window {win.text()} (corrupt block or truncated file?): "
                             f"{_one_line(exc)}") from None

    def finish(win: ChipWindow, arr: Any) -> Chip:
        t = chip_transform(info.transform, win)
        data = chip_bytes(render_chip(arr, stretch, colormap), t, info.crs_wkt, info.uri, win)
        sha = put(data) if put is not None else hashlib.sha256(data).hexdigest()
        return Chip(sha, win, t, len(data))

    if not pipeline:
        for win in windows:
            yield finish(win, read(win))
        return
    from collections import deque

    with ThreadPoolExecutor(max_workers=ENCODE_WORKERS, thread_name_prefix="chip-encode") as pool:
        pending: deque[Any] = deque()
        for win in windows:
            arr = read(win)
            pending.append(pool.submit(finish, win, arr))
            del arr
            if len(pending) > ENCODE_WORKERS:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --- registration ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredScene:
    """Outcome of chipping one scene: its chips' image ids and windows, or the one-line error (nothing registered)."""

    name: str
    uri: str
    chips: tuple[tuple[int, ChipWindow], ...] = ()
    created: int = 0
    known: int = 0
    crs_wkt: str | None = None
    transform: tuple[float, ...] | None = None
    error: str | None = None

    def chip_ids(self, bbox: Sequence[float] | None = None) -> list[int]:
        """Image ids of the chips, or only those whose footprint intersects ``bbox`` (minx, miny, maxx, maxy) given
        in the scene's CRS (pixel coordinates for a scene without one)."""
        if bbox is None:
            return [i for i, _ in self.chips]
        import shapely

        box = shapely.box(*bbox)
        return [i for i, w in self.chips if chip_footprint(self.transform or (1, 0, 0, 0, 1, 0), w).intersects(box)]


def chip_footprint(scene_transform: Sequence[float], window: ChipWindow) -> Any:
    """The chip's outline in scene CRS units (a polygon; rotated scenes give a rotated outline)."""
    import shapely
    from affine import Affine

    a = Affine(*scene_transform[:6])
    c0, r0, c1, r1 = window.col, window.row, window.col + window.width, window.row + window.height
    return shapely.Polygon([a @ (c0, r0), a @ (c1, r0), a @ (c1, r1), a @ (c0, r1)])


def register_scene(
    session_factory: Any,
    blobs: Any,
    uri: str,
    name: str,
    source: str | None = None,
    *,
    tile_size: int = DEFAULT_TILE_SIZE,
    overlap: int = DEFAULT_TILE_OVERLAP,
    bands: tuple[int, ...] | None = None,
    max_chips: int | None = None,
    max_pixels: int | None = None,
    s3_endpoint_url: str | None = None,
) -> RegisteredScene:
    """Chip one scene and register every chip as an ``Image`` row, all in one transaction.

    Errors (unreadable scene, unparseable CRS, too many chips, a chip over the pixel limit, a corrupt block, an
    unreachable URL) come back as ``RegisteredScene.error`` with no row written: chips are read, encoded and put into
    the (content-addressed) blob store first, and only when all of them succeeded are their rows inserted. A blob put
    before a failure stays unreferenced (harmless: same bytes, same key, next time).
    """
    from rasterio.errors import RasterioError

    from geoseg.imagery import max_pixels_setting

    try:
        limit_chips = int(max_chips) if max_chips else max_chips_setting()
        limit_px = int(max_pixels) if max_pixels else max_pixels_setting()
        if min(tile_size, 1 << 30) ** 2 > limit_px:
            raise SceneError(f"tile size {tile_size} gives chips of {tile_size * tile_size:,} pixels, over the limit "
                             f"of {limit_px:,} (GEOLABEL_MAX_PIXELS)")
        with open_scene(uri, s3_endpoint_url) as ds:
            info = scene_info(ds, uri, bands)
            n = count_windows(info.width, info.height, tile_size, overlap)
            if n > limit_chips:
                raise SceneError(f"{uri}: {info.width}x{info.height} px in {tile_size} px chips with {overlap} px "
                                 f"overlap makes {n:,} chips, over the limit of {limit_chips:,} per scene "
                                 "(GEOLABEL_MAX_CHIPS / --max-chips); raise it or use larger tiles")
            windows = plan_windows(info.width, info.height, tile_size, overlap)
            chips = list(iter_chips(ds, info, windows, put=blobs.put if blobs is not None else None))
    except SceneError as exc:
        return RegisteredScene(name, uri, error=str(exc))
    except RasterioError as exc:
        return RegisteredScene(name, uri, error=f"{uri}: cannot read pixels (corrupt block or truncated file?): "
                                                f"{_one_line(exc)}")
    except Exception as exc:  # GDAL/curl surfaces corrupt blocks and network faults as assorted errors
        return RegisteredScene(name, uri, error=f"{uri}: {type(exc).__name__}: {_one_line(exc)}")
    with session_factory() as s:
        ids, created = upsert_chips(s, chips, info, source)
    return RegisteredScene(name, uri, tuple((ids[c.sha256], c.window) for c in chips), created, len(chips) - created,
                           info.crs_wkt, info.transform)


def upsert_chips(
    session: Any, chips: Sequence[Chip], info: SceneInfo, source: str | None
) -> tuple[dict[str, int], int]:
    """Insert the chips' ``Image`` rows (first write wins on sha256); returns ({sha256: id}, how many were new)."""
    import sqlalchemy as sa

    from storage.models import Image, utcnow
    from storage.repo.base import chunked, dialect_insert

    shas = sorted({c.sha256 for c in chips})
    known: set[str] = set()
    for part in chunked(shas):
        known.update(session.scalars(sa.select(Image.sha256).where(Image.sha256.in_(part))))
    now = utcnow()
    rows = [{"sha256": c.sha256, "uri": chip_uri(info.uri, c.window), "width": c.window.width,
             "height": c.window.height, "bands": 3, "dtype": "uint8", "crs": info.crs_wkt,
             "transform": list(c.transform), "format": "GTiff", "source": source, "created_at": now,
             "scene_uri": info.uri, "scene_width": info.width, "scene_height": info.height,
             "window_col": c.window.col, "window_row": c.window.row} for c in chips if c.sha256 not in known]
    stmt = dialect_insert(session, Image).on_conflict_do_nothing(index_elements=["sha256"])
    for part in chunked(rows):
        session.execute(stmt, part)
    ids: dict[str, int] = {}
    for part in chunked(shas):
        ids.update(session.execute(sa.select(Image.sha256, Image.id).where(Image.sha256.in_(part))).tuples().all())
    return ids, len({r["sha256"] for r in rows})


def probe_size(uri: str, s3_endpoint_url: str | None = None) -> tuple[int, int] | None:
    """(width, height) from the header, or None when it cannot be opened (the whole-image path then reports why)."""
    try:
        with open_scene(uri, s3_endpoint_url) as ds:
            return ds.width, ds.height
    except Exception:  # noqa: BLE001 - decided by the caller's path
        return None


def is_scene_candidate(uri: str) -> bool:
    text = str(uri).split("?", 1)[0]
    return text.startswith(("http://", "https://")) or PurePosixPath(text).suffix.lower() in SCENE_EXTENSIONS


# --- query rows naming a scene (ingest) ----------------------------------------------------------------------------


def split_scenes(objects: list[Any], tile_size: int | None, s3_endpoint_url: str | None = None,
                 roots: tuple[Path, ...] | None = None) -> tuple[list[Any], list[Any]]:
    """(scene objects, whole-image objects) of a source listing: a (Geo)TIFF (or any ``http(s)://`` raster) wider or
    taller than ``tile_size`` is a scene, everything else goes the whole-image path; ``tile_size`` 0 turns tiling
    off. An object outside ``roots`` goes the whole-image path, which refuses it with its usual message."""
    from storage.sources import SourceError, check_within_roots, is_http, is_s3

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
    """(image id, row) for every chip of ``scene`` the query row applies to (only those whose footprint intersects
    the row's ``bbox``, in the scene's CRS, when it has one), or an error message."""
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
