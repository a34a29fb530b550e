"""Reading remote-sensing imagery into one typed record with a documented RGB rendition.

``read_image(src)`` accepts a path or the file's bytes (PNG, JPEG or (Geo)TIFF) and returns a :class:`LoadedImage`:
the source's facts (size, band count, dtype, CRS, affine transform, format) and ``rgb``, an (H, W, 3) uint8 rendition
that the models and Label Studio see. The rendition rules, applied in this order:

1. **Band choice** — ``bands=(i, j, k)`` (1-based) picks the bands explicitly, e.g. ``(3, 2, 1)`` for true colour from
   Landsat 4-7 (bands 1-3 are blue, green, red). Otherwise ("auto"): bands tagged red/green/blue in the file's colour
   interpretation are used in that order; else the first three bands. A 1-band raster is shown as grey (R = G = B);
   a 1-band raster with a colour table (paletted) is expanded through the table; a 2-band raster shows band 1 as grey.
   An alpha band is dropped.
2. **Values** — uint8 bands are used as they are. Any other dtype (uint16, int16, float, ...) gets a per-band linear
   2-98 percentile stretch to 0..255, computed over valid pixels (not nodata, finite); a constant band becomes 0.
   A pixel is nodata only when every chosen band is at its nodata value (so a saturated red channel in an RGB photo
   whose file declares nodata = 255 stays red); nodata pixels are rendered black.
3. **Orientation** — JPEG/PNG EXIF orientation is applied (browsers do the same when Label Studio shows the image), so
   ``width``/``height`` and masks refer to the image as displayed.

A declared size over ``max_pixels`` (default :data:`DEFAULT_MAX_PIXELS`, env ``GEOLABEL_MAX_PIXELS``) is rejected from
the header, before any pixel is decoded. Every bad input raises :class:`ImageError` (a ``ValueError``) whose message
names the source and the problem: empty file, truncated data, not an image, extension that does not match the content.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Largest width x height accepted by default (about 8000 x 8000); larger imagery should be tiled before ingest.
DEFAULT_MAX_PIXELS = 64_000_000

#: File extensions accepted for each detected format.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "GTiff": (".tif", ".tiff", ".gtiff"),
    "PNG": (".png",),
    "JPEG": (".jpg", ".jpeg", ".jpe"),
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(e for exts in EXTENSIONS.values() for e in exts)

STRETCH_PERCENTILES: tuple[float, float] = (2.0, 98.0)


class ImageError(ValueError):
    """A source that cannot be read as an image; the message says which source and why."""


@dataclass(frozen=True, eq=False)
class LoadedImage:
    """One image as read: the source's facts plus the (H, W, 3) uint8 ``rgb`` rendition (see the module docstring)."""

    rgb: np.ndarray
    width: int
    height: int
    bands: int
    dtype: str
    crs: str | None
    transform: tuple[float, float, float, float, float, float] | None
    format: str
    rendition: str

    def __post_init__(self) -> None:
        a = self.rgb
        if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
            raise ValueError(f"rgb must be (H, W, 3) uint8, got shape {a.shape} dtype {a.dtype}")
        if a.shape[:2] != (self.height, self.width):
            raise ValueError(f"rgb shape {a.shape[:2]} differs from (height, width) = ({self.height}, {self.width})")

    def facts(self) -> dict[str, Any]:
        """JSON-able description (no pixels)."""
        return {
            "width": self.width,
            "height": self.height,
            "bands": self.bands,
            "dtype": self.dtype,
            "crs": self.crs,
            "transform": list(self.transform) if self.transform else None,
            "format": self.format,
            "rendition": self.rendition,
        }


def max_pixels_setting() -> int:
    """``GEOLABEL_MAX_PIXELS`` when set (a positive integer), else :data:`DEFAULT_MAX_PIXELS`."""
    raw = os.environ.get("GEOLABEL_MAX_PIXELS", "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        v = int(raw.replace("_", ""))
    except ValueError as exc:
        raise ImageError(f"GEOLABEL_MAX_PIXELS must be a positive integer, got {raw!r}") from exc
    if v <= 0:
        raise ImageError(f"GEOLABEL_MAX_PIXELS must be a positive integer, got {raw!r}")
    return v


def sniff_format(head: bytes) -> str | None:
    """The format named by the file's magic bytes: "GTiff", "PNG", "JPEG", or None."""
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "GTiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    return None


def _describe_content(head: bytes) -> str:
    for magic, name in (
        (b"GIF8", "a GIF image"),
        (b"BM", "a BMP image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive"),
        (b"RIFF", "a RIFF (WebP/AVI) file"),
        (b"\x1f\x8b", "gzip data"),
    ):
        if head.startswith(magic):
            return name
    try:
        head.decode("utf-8")
        return "text"
    except UnicodeDecodeError:
        return "unrecognised binary data"


def read_image(
    src: str | Path | bytes,
    *,
    bands: tuple[int, ...] | None = None,
    max_pixels: int | None = None,
    name: str | None = None,
) -> LoadedImage:
    """Read a PNG, JPEG or (Geo)TIFF from a path or from bytes; see the module docstring for the rendition.

    ``bands``: 1-based band indices for R, G, B (three of them; one index for a grey rendition of that band).
    ``max_pixels``: reject images whose declared width x height exceeds it (default: :func:`max_pixels_setting`).
    ``name``: how to call a bytes source in error messages (its key or URL); an extension in it is checked too.
    """
    limit = max_pixels if max_pixels is not None else max_pixels_setting()
    if bands is not None:
        bands = tuple(int(b) for b in bands)
        if len(bands) not in (1, 3) or any(b < 1 for b in bands):
            raise ImageError(f"bands must be one or three 1-based band indices, got {bands}")

    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        label = name or "<bytes>"
        ext = Path(name).suffix.lower() if name else ""
    elif isinstance(src, (str, Path)):
        path = Path(src)
        label = str(path)
        ext = path.suffix.lower()
        if not path.exists():
            raise ImageError(f"{label}: no such file")
        if path.is_dir():
            raise ImageError(f"{label}: is a directory, not an image")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{label}: cannot read file ({exc.strerror or exc})") from exc
    else:
        raise ImageError(f"read_image needs a path or bytes, got {type(src).__name__}")

    if not data:
        raise ImageError(f"{label}: empty file (0 bytes)")
    fmt = sniff_format(data[:16])
    if fmt is None:
        what = _describe_content(data[:512])
        hint = f" (extension {ext})" if ext else ""
        raise ImageError(f"{label}: not a supported image{hint}: content looks like {what}; expected PNG, JPEG or TIFF")
    if ext:
        if ext not in SUPPORTED_EXTENSIONS:
            allowed = ", ".join(SUPPORTED_EXTENSIONS)
            raise ImageError(f"{label}: unsupported extension {ext!r} (content is {fmt}); use one of {allowed}")
        if ext not in EXTENSIONS[fmt]:
            raise ImageError(f"{label}: extension {ext!r} does not match the content, which is {fmt}")

    if fmt == "GTiff":
        return _read_tiff(data, label, bands, limit)
    return _read_pil(data, label, fmt, bands, limit)


def _check_size(label: str, width: int, height: int, limit: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageError(f"{label}: declares an empty size {width}x{height}")
    if width * height > limit:
        raise ImageError(
            f"{label}: declared size {width}x{height} = {width * height:,} pixels exceeds the limit of {limit:,} "
            "(GEOLABEL_MAX_PIXELS); tile the image first"
        )


def stretch_to_uint8(band: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Linear 2-98 percentile stretch of one band to uint8 over its valid, finite pixels; constant band -> 0."""
    a = np.asarray(band, dtype=np.float64)
    ok = np.isfinite(a)
    if valid is not None:
        ok &= valid
    out = np.zeros(a.shape, dtype=np.uint8)
    if not ok.any():
        return out
    lo, hi = np.percentile(a[ok], STRETCH_PERCENTILES)
    if not hi > lo:
        return out
    scaled = np.clip((a - lo) / (hi - lo), 0.0, 1.0) * 255.0
    out = np.rint(np.where(ok, scaled, 0.0)).astype(np.uint8)
    return out


def _to_uint8(band: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    if band.dtype == np.uint8:
        return band if valid is None else np.where(valid, band, 0).astype(np.uint8)
    if band.dtype == np.bool_:
        return (band.astype(np.uint8) * 255) if valid is None else np.where(valid, band, 0).astype(np.uint8) * 255
    return stretch_to_uint8(band, valid)


def _read_tiff(data: bytes, label: str, bands: tuple[int, ...] | None, limit: int) -> LoadedImage:
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.MemoryFile(data) as mem, mem.open() as ds:
                _check_size(label, ds.width, ds.height, limit)
                count = ds.count
                interp = list(ds.colorinterp)
                if bands is not None:
                    if max(bands) > count:
                        raise ImageError(f"{label}: band {max(bands)} requested but the image has {count} band(s)")
                    chosen = list(bands)
                    why = f"bands {'-'.join(map(str, chosen))} as chosen"
                else:
                    tagged = {ci: i + 1 for i, ci in enumerate(interp)}
                    rgb_tags = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
                    non_alpha = [i + 1 for i, ci in enumerate(interp) if ci != ColorInterp.alpha]
                    if all(t in tagged for t in rgb_tags):
                        chosen = [tagged[t] for t in rgb_tags]
                        why = "bands tagged red/green/blue"
                    elif len(non_alpha) >= 3:
                        chosen = non_alpha[:3]
                        why = f"first three bands {'-'.join(map(str, chosen))}"
                    else:
                        chosen = [non_alpha[0] if non_alpha else 1]
                        why = f"band {chosen[0]} as grey"
                arr = ds.read(chosen, masked=True)
                crs = ds.crs.to_string() if ds.crs else None
                transform = None
                if crs is not None or not ds.transform.is_identity:
                    transform = tuple(float(v) for v in tuple(ds.transform)[:6])
                dtype = str(ds.dtypes[chosen[0] - 1])
                colormap = None
                if len(chosen) == 1 and interp[chosen[0] - 1] == ColorInterp.palette:
                    try:
                        colormap = ds.colormap(chosen[0])
                    except ValueError:
                        colormap = None
                width, height = ds.width, ds.height
    except ImageError:
        raise
    except (RasterioIOError, RasterioError) as exc:
        raise ImageError(f"{label}: cannot decode TIFF (truncated or corrupt?): {exc}") from exc
    except Exception as exc:  # GDAL surfaces some corruptions as other errors
        raise ImageError(f"{label}: cannot decode TIFF: {type(exc).__name__}: {exc}") from exc

    pixel_valid = ~np.ma.getmaskarray(arr).all(axis=0)
    raw = np.ma.getdata(arr)
    if colormap is not None:
        lut = np.zeros((256, 3), dtype=np.uint8)
        for k, v in colormap.items():
            if 0 <= k < 256:
                lut[k] = v[:3]
        idx = raw[0].astype(np.int64).clip(0, 255)
        rgb = lut[idx]
        rgb[~pixel_valid] = 0
        why = f"band {chosen[0]} through its colour table (paletted)"
    else:
        valid = None if pixel_valid.all() else pixel_valid
        planes = [_to_uint8(raw[i], valid) for i in range(raw.shape[0])]
        if len(planes) == 1:
            planes = planes * 3
        rgb = np.ascontiguousarray(np.stack(planes, axis=-1))
        if dtype != "uint8":
            why += ", 2-98 percentile stretch to uint8"
    return LoadedImage(
        rgb=rgb,
        width=width,
        height=height,
        bands=count,
        dtype=dtype,
        crs=crs,
        transform=transform,  # type: ignore[arg-type]
        format="GTiff",
        rendition=why,
    )


def _read_pil(data: bytes, label: str, fmt: str, bands: tuple[int, ...] | None, limit: int) -> LoadedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if fmt == "PNG" and len(data) >= 24 and data[12:16] == b"IHDR":
        _check_size(label, int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"), limit)
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: declared size exceeds the limit ({exc}); tile the image first") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: {fmt} signature but the header cannot be parsed (corrupt?)") from exc
    except Exception as exc:
        raise ImageError(f"{label}: cannot open {fmt}: {exc}") from exc
    w, h = im.size
    _check_size(label, w, h, limit)
    mode = im.mode
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit was checked above
            im.load()
        im = ImageOps.exif_transpose(im) or im
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{label}: too large for PIL's decoder ({exc}); tile the image first") from exc
    except OSError as exc:
        raise ImageError(f"{label}: cannot decode {fmt} (truncated or corrupt?): {exc}") from exc
    except Exception as exc:
        raise ImageError(f"{label}: cannot decode {fmt}: {type(exc).__name__}: {exc}") from exc

    n_bands = len(im.getbands())
    dtype = "uint8"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        dtype = "uint16"
    elif mode == "I":
        dtype = "int32"
    elif mode == "F":
        dtype = "float32"
    elif mode == "1":
        dtype = "bool"

    if bands is not None and bands != (1, 2, 3):
        arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[..., None]
        if max(bands) > arr.shape[2]:
            raise ImageError(f"{label}: band {max(bands)} requested but the image has {arr.shape[2]} band(s)")
        planes = [_to_uint8(arr[..., b - 1], None) for b in bands]
        if len(planes) == 1:
            planes = planes * 3
        rgb = np.stack(planes, axis=-1)
        why = f"bands {'-'.join(map(str, bands))} as chosen"
    elif mode in ("RGB",):
        rgb = np.asarray(im)
        why = "RGB as stored"
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        g = stretch_to_uint8(np.asarray(im))
        rgb = np.stack([g, g, g], axis=-1)
        why = "grey, 2-98 percentile stretch to uint8"
    elif mode in ("L", "LA", "1"):
        g = np.asarray(im.convert("L"))
        rgb = np.stack([g, g, g], axis=-1)
        why = "grey as R = G = B"
    elif mode in ("P", "PA"):
        rgb = np.asarray(im.convert("RGB"))
        why = "palette expanded to RGB"
    else:  # RGBA, CMYK, YCbCr, LAB, HSV ...
        rgb = np.asarray(im.convert("RGB"))
        why = f"{mode} converted to RGB" + (" (alpha dropped)" if "A" in mode else "")
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    return LoadedImage(
        rgb=rgb,
        width=rgb.shape[1],
        height=rgb.shape[0],
        bands=n_bands,
        dtype=dtype,
        crs=None,
        transform=None,
        format=fmt,
        rendition=why,
    )
