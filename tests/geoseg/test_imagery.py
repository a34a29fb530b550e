"""geoseg.imagery.read_image on the real aerial imagery in tests/data/aerial and on broken inputs derived from it."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from geoseg.imagery import ImageError, LoadedImage, read_image, stretch_to_uint8

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"


def test_geotiff_rgb_keeps_georeferencing():
    img = read_image(AERIAL / "OSBS_029.tif")
    assert isinstance(img, LoadedImage)
    assert (img.width, img.height, img.bands, img.dtype, img.format) == (400, 400, 3, "uint8", "GTiff")
    assert img.crs == "EPSG:32617"
    assert img.transform is not None
    a, b, c, d, e, f = img.transform
    assert a == pytest.approx(0.1) and e == pytest.approx(-0.1) and b == 0 and d == 0
    assert c == pytest.approx(404211.9) and f == pytest.approx(3285142.9)
    assert img.rgb.shape == (400, 400, 3) and img.rgb.dtype == np.uint8
    assert "red/green/blue" in img.rendition


def test_geotiff_matches_pixels_read_directly_with_rasterio():
    import rasterio

    with rasterio.open(AERIAL / "OSBS_029.tif") as ds:
        assert ds.nodata == 255  # the file declares 255 as nodata on every band
        direct = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
    got = read_image(AERIAL / "OSBS_029.tif").rgb
    all_nodata = (direct == 255).all(axis=-1)
    assert 0 < all_nodata.sum() < 0.01 * all_nodata.size
    assert (got[all_nodata] == 0).all()  # only pixels nodata on every band turn black
    assert np.array_equal(got[~all_nodata], direct[~all_nodata])  # a saturated single channel is kept


def test_multiband_landsat_first_three_and_chosen_bands():
    auto = read_image(AERIAL / "L7_ETMs.tif")
    assert (auto.width, auto.height, auto.bands) == (349, 352, 6)
    assert auto.crs == "EPSG:31985"
    assert "first three bands 1-2-3" in auto.rendition
    true_colour = read_image(AERIAL / "L7_ETMs.tif", bands=(3, 2, 1))
    assert np.array_equal(true_colour.rgb[..., 0], auto.rgb[..., 2])
    assert np.array_equal(true_colour.rgb[..., 2], auto.rgb[..., 0])
    with pytest.raises(ImageError, match="band 7 requested but the image has 6"):
        read_image(AERIAL / "L7_ETMs.tif", bands=(7, 2, 1))


def test_paletted_single_band_expands_through_colour_table():
    import rasterio

    img = read_image(AERIAL / "lc.tif")
    assert img.bands == 1 and "colour table" in img.rendition
    with rasterio.open(AERIAL / "lc.tif") as ds:
        cmap = ds.colormap(1)
        idx = ds.read(1)
    # every pixel gets its class colour from the file's own table
    expect = np.array([cmap[int(v)][:3] for v in idx.ravel()], dtype=np.uint8).reshape(idx.shape + (3,))
    assert np.array_equal(img.rgb, expect)


def test_png_and_jpeg(tmp_path):
    png = read_image(AERIAL / "SOAP_031.png")
    assert (png.format, png.width, png.height, png.bands, png.crs, png.transform) == ("PNG", 400, 400, 3, None, None)
    jpg = read_image(AERIAL / "AWPE_pigeon_lake_drone.jpg")
    assert (jpg.format, jpg.width, jpg.height) == ("JPEG", 480, 452)
    same = read_image((AERIAL / "SOAP_031.png").read_bytes(), name="s3://bucket/SOAP_031.png")
    assert np.array_equal(same.rgb, png.rgb)


def test_sixteen_bit_geotiff_gets_percentile_stretch(tmp_path):
    import rasterio

    with rasterio.open(AERIAL / "L7_ETMs.tif") as ds:
        profile = ds.profile
        bands = ds.read([3, 2, 1]).astype(np.uint16) * 40 + 1000  # real radiometry, rescaled to a 16-bit range
    profile.update(count=3, dtype="uint16", nodata=None)
    p = tmp_path / "l7_uint16.tif"
    with rasterio.open(p, "w", **profile) as dst:
        dst.write(bands)
    img = read_image(p)
    assert img.dtype == "uint16" and img.bands == 3 and img.crs == "EPSG:31985"
    assert "percentile stretch" in img.rendition
    for i in range(3):
        expect = stretch_to_uint8(bands[i])
        assert np.array_equal(img.rgb[..., i], expect)
        lo, hi = np.percentile(bands[i], [2, 98])
        assert img.rgb[..., i][bands[i] <= lo].max() == 0
        assert img.rgb[..., i][bands[i] >= hi].min() == 255


def test_nodata_is_black_and_excluded_from_stretch(tmp_path):
    import rasterio

    with rasterio.open(AERIAL / "L7_ETMs.tif") as ds:
        profile = ds.profile
        band = ds.read(4).astype(np.int16) * 10
    band[:20, :] = -9999
    profile.update(count=1, dtype="int16", nodata=-9999)
    p = tmp_path / "nir_nodata.tif"
    with rasterio.open(p, "w", **profile) as dst:
        dst.write(band[None])
    img = read_image(p)
    assert img.bands == 1 and (img.rgb[:20] == 0).all()
    assert np.array_equal(img.rgb[..., 0], img.rgb[..., 1])
    assert img.rgb[20:].max() == 255  # the stretch was computed on valid pixels only


def test_single_band_grey_and_rgba_png(tmp_path):
    from PIL import Image

    rgb = np.asarray(Image.open(AERIAL / "SOAP_061.png").convert("RGB"))
    Image.fromarray(rgb[..., 1]).save(tmp_path / "g.png")
    g = read_image(tmp_path / "g.png")
    assert g.bands == 1 and np.array_equal(g.rgb[..., 0], rgb[..., 1]) and np.array_equal(g.rgb[..., 2], rgb[..., 1])
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(tmp_path / "a.png")
    a = read_image(tmp_path / "a.png")
    assert a.bands == 4 and np.array_equal(a.rgb, rgb) and "alpha dropped" in a.rendition
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    p = read_image(tmp_path / "p.png")
    assert p.rgb.shape == rgb.shape and "palette" in p.rendition
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 200).save(tmp_path / "g16.png")
    g16 = read_image(tmp_path / "g16.png")
    assert g16.dtype == "uint16" and g16.rgb.max() == 255 and g16.rgb.min() == 0


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_declaring(width: int, height: int) -> bytes:
    """A small PNG file whose header declares width x height (its pixel data is a few hundred bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def test_declared_huge_png_rejected_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    p.write_bytes(_png_declaring(20000, 20000))
    with pytest.raises(ImageError, match=r"20000x20000 = 400,000,000 pixels exceeds the limit"):
        read_image(p)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_declared_huge_geotiff_rejected_before_decoding(tmp_path):
    import rasterio

    p = tmp_path / "huge.tif"
    with rasterio.open(
        p, "w", driver="GTiff", width=20000, height=20000, count=3, dtype="uint8", tiled=True, sparse_ok=True
    ):
        pass
    assert p.stat().st_size < 2_000_000
    with pytest.raises(ImageError, match="exceeds the limit"):
        read_image(p)
    with pytest.raises(ImageError, match="exceeds the limit of 1,000"):
        read_image(AERIAL / "OSBS_029.tif", max_pixels=1000)


def test_max_pixels_from_env(monkeypatch):
    monkeypatch.setenv("GEOLABEL_MAX_PIXELS", "100000")
    with pytest.raises(ImageError, match="exceeds the limit of 100,000"):
        read_image(AERIAL / "OSBS_029.tif")
    monkeypatch.setenv("GEOLABEL_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="GEOLABEL_MAX_PIXELS must be a positive integer"):
        read_image(AERIAL / "OSBS_029.tif")


@pytest.mark.parametrize("source", ["OSBS_029.tif", "SOAP_031.png", "AWPE_pigeon_lake_drone.jpg"])
def test_truncated_files_raise_clear_error(tmp_path, source):
    data = (AERIAL / source).read_bytes()
    p = tmp_path / source
    p.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match=r"truncated|corrupt|cannot decode"):
        read_image(p)


def test_bad_inputs_have_clear_messages(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        read_image(empty)
    text = tmp_path / "notes.png"
    text.write_text("image,query\n")
    with pytest.raises(ImageError, match="not a supported image.*looks like text"):
        read_image(text)
    wrong = tmp_path / "really_a_jpeg.png"
    wrong.write_bytes((AERIAL / "AWPE_pigeon_lake_drone.jpg").read_bytes())
    with pytest.raises(ImageError, match="extension '.png' does not match the content, which is JPEG"):
        read_image(wrong)
    odd = tmp_path / "scene.bmp"
    odd.write_bytes((AERIAL / "SOAP_031.png").read_bytes())
    with pytest.raises(ImageError, match="unsupported extension '.bmp'"):
        read_image(odd)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.tif")
    with pytest.raises(ImageError, match="is a directory"):
        read_image(tmp_path)
    with pytest.raises(ImageError, match="empty file"):
        read_image(b"", name="s3://b/k.png")
    assert issubclass(ImageError, ValueError)
