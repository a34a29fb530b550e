"""The bad-input catalogue (issue 9, part 2): every case names the clear error it must give AND proves that the rest of
the batch went on (a good neighbour in the same batch is stored / parsed / synced).

Layers, each through the real code path the loop uses:

* imagery -> ``flows.ingest.register_images`` (the ingest task body: read, decode, hash, blob, upsert) on SQLite;
* queries files -> ``flows.ingest.parse_queries`` / ``load_queries`` + ``register_items``;
* grounder answers -> a real ``GeoSegPipeline.run_batch`` whose grounder is the OpenAI-compatible client talking to a
  real local HTTP chat server that answers the hostile text, with the tiny CLIP Surgery + tiny SAM3 models (their
  masks are meaningless: only the mechanics are checked);
* annotations -> ``labeling.sync.sync_annotations`` against the session's real Label Studio;
* exports -> the evaluation CSV writer and the COCO export keep formula-looking text inert.

``CASES`` counts the catalogue; ``test_catalogue_size`` keeps it >= 40.
"""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from geoseg.types import TINY_MODEL_WARNING, BackendSpec, GeoSegConfig

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
GOOD_NAME = "good.png"


def _png(rgb: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(rgb, **kw).save(buf, format="PNG")
    return buf.getvalue()


def _good_png() -> bytes:
    return _png(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8))


def _tiff(arr: np.ndarray, crs: str | None = None, photometric: str | None = None) -> bytes:
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    count, h, w = arr.shape
    prof = dict(driver="GTiff", width=w, height=h, count=count, dtype=arr.dtype.name)
    if crs:
        prof.update(crs=crs, transform=from_origin(500000, 4000000, 1.0, 1.0))
    if photometric:
        prof["photometric"] = photometric
    with MemoryFile() as mf:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with mf.open(**prof) as dst:
                dst.write(arr)
        return mf.read()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (8-bit RGB) with a token IDAT: the 'huge image' case."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


# --- imagery ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    from flows.runtime import open_runtime, settings_from

    return open_runtime(settings_from({"data_dir": str(tmp_path_factory.mktemp("badinputs"))}))


def _register(rt, tmp_path: Path, files: dict[str, bytes]) -> dict[str, object]:
    """register_images on the good PNG + ``files`` in ONE batch; asserts the good one went through."""
    from flows.ingest import register_images
    from storage.sources import list_images

    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / GOOD_NAME).write_bytes(_good_png())
    for name, data in files.items():
        (src / name).write_bytes(data)
    objects = list_images(src, extensions=(".png", ".jpg", ".tif", ".tiff", ".txt", ".jpeg", ".bmp"))
    out = {r.name: r for r in register_images(rt, objects, str(src))}
    good = out[GOOD_NAME]
    assert good.error is None and good.image_id is not None, good  # the rest of the batch went on
    assert rt.blobs.exists(good.sha256)
    return out


def _image_row(rt, sha: str):
    from storage.models import Image

    with rt.session() as s:
        row = s.query(Image).filter_by(sha256=sha).one()
        return {c: getattr(row, c) for c in ("width", "height", "bands", "dtype", "crs", "format")}


REJECTED_IMAGES = {
    # name: (bytes factory, substring of the clear error)
    "empty.png": (lambda: b"", "empty file (0 bytes)"),
    "truncated.png": (lambda: _good_png()[:60], "truncated or corrupt"),
    "truncated.tif": (lambda: _tiff(np.ones((3, 64, 64), np.uint8))[:300], "TIFF"),
    "notes.png": (lambda: b"just some text, definitely not pixels\n" * 4, "not a supported image"),
    "page.jpg": (lambda: b"<html><body>404</body></html>", "not a supported image"),
    "photo.tif": (lambda: _good_png(), "does not match the content"),
    "huge.png": (lambda: _png_header_only(20_000, 20_000), "tile the image first"),
    "zero.png": (lambda: _png_header_only(0, 10), ""),
}


@pytest.mark.parametrize("name", sorted(REJECTED_IMAGES))
def test_rejected_image_is_recorded_and_batch_goes_on(rt, tmp_path, name):
    factory, message = REJECTED_IMAGES[name]
    out = _register(rt, tmp_path, {name: factory()})
    bad = out[name]
    assert bad.image_id is None and bad.error, bad
    assert message in bad.error and name in bad.error  # clear: names the file and the problem


def test_wrong_extension_text_file_is_not_even_listed(tmp_path):
    from storage.sources import list_images

    (tmp_path / GOOD_NAME).write_bytes(_good_png())
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "image.bmp").write_bytes(b"BM" + b"\0" * 60)
    assert [o.name for o in list_images(tmp_path)] == [GOOD_NAME]


ACCEPTED_IMAGES = {
    # name: (bytes factory, expected stored facts)
    "uint16.tif": (lambda: _tiff(np.arange(3 * 32 * 32, dtype=np.uint16).reshape(3, 32, 32) * 20), {"dtype": "uint16"}),
    "uint16.png": (lambda: _png(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60), {"bands": 1}),
    "four_band.tif": (lambda: _tiff(np.full((4, 16, 24), 7, np.uint8)), {"bands": 4, "width": 24, "height": 16}),
    "one_band.tif": (lambda: _tiff(np.full((1, 16, 16), 9, np.uint8)), {"bands": 1}),
    "paletted.png": (lambda: _paletted(), {"width": 20}),
    "no_crs.tif": (lambda: _tiff(np.full((3, 16, 16), 5, np.uint8)), {"crs": None}),
    "utm.tif": (lambda: _tiff(np.full((3, 16, 16), 6, np.uint8), crs="EPSG:32633"), {"format": "GTiff"}),
    "rgba.png": (lambda: _png(np.full((12, 12, 4), 200, np.uint8)), {"width": 12}),
}


def _paletted() -> bytes:
    im = PILImage.fromarray(np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8)).quantize(16)
    assert im.mode == "P"
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(ACCEPTED_IMAGES))
def test_unusual_but_valid_image_is_ingested_with_its_facts(rt, tmp_path, name):
    factory, facts = ACCEPTED_IMAGES[name]
    out = _register(rt, tmp_path, {name: factory()})
    reg = out[name]
    assert reg.error is None and reg.image_id is not None, reg
    row = _image_row(rt, reg.sha256)
    for k, v in facts.items():
        assert row[k] == v, (k, row)
    if name == "utm.tif":
        assert "32633" in row["crs"]


def test_duplicate_image_under_two_names_is_one_image(rt, tmp_path):
    data = _png(np.full((10, 10, 3), 77, np.uint8))
    out = _register(rt, tmp_path, {"a.png": data, "copy_of_a.png": data})
    a, b = out["a.png"], out["copy_of_a.png"]
    assert a.image_id == b.image_id and a.sha256 == b.sha256
    assert [a.created, b.created].count(True) <= 1  # the second name is not a new image


# --- queries files ---------------------------------------------------------------------------------------------------


def test_queries_file_missing_columns_is_a_clear_error():
    from flows.ingest import QueriesError, parse_queries

    with pytest.raises(QueriesError, match="must name the columns image and query"):
        parse_queries("picture,question\na.png,the road\n", name="q.csv")


def test_queries_file_empty_and_not_utf8(tmp_path):
    from flows.ingest import QueriesError, load_queries, parse_queries

    with pytest.raises(QueriesError, match="empty"):
        parse_queries("  \n", name="q.csv")
    p = tmp_path / "latin1.csv"
    p.write_bytes("image,query\na.png,caf\xe9 roof\n".encode("latin-1"))
    with pytest.raises(QueriesError, match="not UTF-8"):
        load_queries(str(p))
    with pytest.raises(QueriesError, match="no such file"):
        load_queries(str(tmp_path / "missing.csv"))


QUERY_ROWS = {
    # label: (row text, substring of the issue message or None when accepted)
    "blank query": ('a.png,"   "', "empty query"),
    "missing image": (",the road", "missing image"),
    "bad level": ("a.png,the road,L9", "level must be L1, L2 or L3"),
    "extra fields": ("a.png,the road,L1,Urban,surplus", "more fields than the header"),
    "long domain": ("a.png,the road,L1," + "d" * 80, "domain longer than 64"),
    "duplicate row": ("good.png,the red roof", "duplicate of line 2"),
}


@pytest.mark.parametrize("label", sorted(QUERY_ROWS))
def test_bad_query_row_is_reported_with_its_line_and_others_go_on(label):
    from flows.ingest import parse_queries

    row, message = QUERY_ROWS[label]
    text = "image,query,level,domain\ngood.png,the red roof\n" + row + "\ngood.png,the second red roof\n"
    rows, issues = parse_queries(text, name="q.csv")
    assert [r.query for r in rows] == ["the red roof", "the second red roof"]
    assert len(issues) == 1 and message in issues[0].message and issues[0].line == 3, issues


def test_jsonl_bad_lines_reported_others_kept():
    from flows.ingest import parse_queries

    text = '{"image": "a.png", "query": "the road"}\n{not json\n[1, 2]\n{"image": "b.png", "query": "the lake"}\n'
    rows, issues = parse_queries(text, name="q.jsonl")
    assert [r.image for r in rows] == ["a.png", "b.png"]
    got = [(i.line, i.message.split(":")[0]) for i in issues]
    assert got == [(2, "not valid JSON"), (3, "expected a JSON object, got list")]


def _items(rt, image_id: int, queries: list[str]):
    from flows.ingest import QueryRow, register_items

    rows = [(image_id, QueryRow("good.png", q, None, None, n)) for n, q in enumerate(queries, start=2)]
    return register_items(rt, rows)


@pytest.fixture
def good_image_id(rt, tmp_path) -> int:
    return _register(rt, tmp_path, {})[GOOD_NAME].image_id


def test_ten_thousand_character_query_refused_others_stored(rt, good_image_id):
    out = _items(rt, good_image_id, ["q" * 10_000, "the small pond"])
    (long_row, long_id, _, long_err), (ok_row, ok_id, _, ok_err) = out
    assert long_id is None and "longer than 1000 characters" in long_err
    assert ok_id is not None and ok_err is None


UNICODE_QUERIES = {
    "accents": "le toit rouge près de l'église",
    "cjk": "最大的建筑物",
    "rtl arabic": "المبنى الأكبر بجانب الطريق",
    "rtl hebrew with bidi marks": "\u202bהבניין הגדול\u202c",
    "emoji": "the 🏠 with a 🌳 beside it",
    "sql-ish": "x'); DROP TABLE items; --",
}


@pytest.mark.parametrize("label", sorted(UNICODE_QUERIES))
def test_unicode_rtl_and_sqlish_queries_stored_exactly(rt, good_image_id, label):
    from storage.models import Item

    q = UNICODE_QUERIES[label]
    out = _items(rt, good_image_id, [q, f"control {label}"])
    assert all(err is None and item_id for _, item_id, _, err in out), out
    with rt.session() as s:
        assert s.get(Item, out[0][1]).query == q  # byte-exact, bound parameters, nothing dropped
        assert s.query(Item).count() >= 2  # the table is still there


# --- CSV injection kept inert in exports -----------------------------------------------------------------------------

INJECTIONS = ["=cmd|' /C calc'!A0", "+SUM(1,2)", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1"]


@pytest.mark.parametrize("text", INJECTIONS)
def test_csv_injection_query_parses_as_plain_text(text):
    from flows.ingest import parse_queries

    buf = io.StringIO()
    csv.writer(buf).writerows([["image", "query"], ["a.png", text], ["b.png", "the road"]])
    rows, issues = parse_queries(buf.getvalue(), name="q.csv")
    assert not issues and rows[0].query == " ".join(text.split()) and rows[1].query == "the road"


def test_csv_injection_inert_in_evaluation_csv(tmp_path):
    from geoseg.evaluation.report import write_csv

    rows = [{"query": t, "iou": -0.5, "n": 3} for t in INJECTIONS] + [{"query": "the road", "iou": 0.25, "n": 1}]
    path = write_csv(tmp_path / "samples.csv", rows)
    back = list(csv.DictReader(path.open(encoding="utf-8")))
    for row, text in zip(back, INJECTIONS, strict=False):
        assert row["query"][0] not in "=+-@\t\r", row  # a spreadsheet shows it as text, never runs it
        assert row["query"].lstrip("'") == text  # and nothing is lost
    assert back[0]["iou"] == "-0.5" and back[-1]["query"] == "the road"  # numbers stay numbers


# --- grounder answers through the real pipeline ----------------------------------------------------------------------

GROUNDER_ANSWERS = {
    # label: (answer text, expected outcome: "error:<substring>" or "box:<n boxes>")
    "empty": ("", "error:empty answer"),
    "prose": ("There is a big building in the top left corner.", "error:no JSON grounding"),
    "truncated json": ('{"bbox": [100, 200, 4', "error:"),
    "outside image": ('{"bbox": [1200, 1300, 1900, 1800], "prompt": "roof"}', "error:"),
    "inverted": ('{"bbox": [600, 700, 200, 300], "prompt": "roof"}', "box:1"),
    "zero area": ('{"bbox": [300, 300, 300, 300], "prompt": "roof"}', "error:"),
    "nan": ('{"bbox": [NaN, 1, 2, 3], "prompt": "roof"}', "error:"),
    "pixel convention on a norm1000 grid": ('{"bbox": [10, 20, 30, 40], "prompt": "roof"}', "box:1"),
    "norm1 convention": ('{"bbox": [0.1, 0.2, 0.5, 0.6], "prompt": "roof"}', "any"),
    "several boxes": (
        '[{"bbox_2d": [0, 0, 400, 400], "label": "a"}, {"bbox_2d": [500, 500, 900, 900], "label": "b"}]',
        "box:2",
    ),
    "strings for numbers": ('{"bbox": ["a", "b", "c", "d"]}', "error:"),
    "huge answer": ("x" * 200_000 + '{"bbox": [1, 2, 3, 4]}', "any"),
}


@pytest.fixture(scope="module")
def served_pipeline(chat_server_session, tiny_matcher, tiny_segmenter):
    from geoseg.grounding import build_grounder
    from geoseg.pipeline import GeoSegPipeline

    opts = {"base_url": chat_server_session.base_url, "max_retries": 0, "concurrency": 1}
    g = build_grounder(BackendSpec("openai", "bad-input-model", opts))
    cfg = GeoSegConfig(profile="tiny-served")
    return GeoSegPipeline(cfg, grounder=g, matcher=tiny_matcher, segmenter=tiny_segmenter)


GOOD_ANSWER = '{"bbox": [200, 300, 600, 700], "prompt": "tree crown"}'


@pytest.mark.parametrize("label", list(GROUNDER_ANSWERS))
def test_hostile_grounder_answer_gives_clear_result_and_batch_goes_on(chat_server, served_pipeline, label):
    text, expect = GROUNDER_ANSWERS[label]
    chat_server.queue({"answer": text}, {"answer": GOOD_ANSWER})
    rgb = np.random.default_rng(3).integers(0, 255, (64, 80, 3), dtype=np.uint8)
    out = dict(served_pipeline.run_batch([("bad", rgb, f"query {label}"), ("good", rgb, "the tree crown")]))
    bad, good = out["bad"], out["good"]
    assert not isinstance(good, Exception) and good.box is not None, good  # the batch went on
    assert good.note == TINY_MODEL_WARNING  # tiny models: the mask itself is meaningless
    assert not isinstance(bad, Exception), bad  # garbage from the model is a result with a reason, not a crash
    assert bad.mask.shape == (64, 80) and bad.grounding.raw_text == text  # raw text kept for audit
    kind, _, detail = expect.partition(":")
    if kind == "error":
        assert bad.box is None and bad.route == "empty" and bad.grounding.error, bad.grounding
        assert detail in bad.grounding.error and bad.reason
        assert not bad.mask.any()
    elif kind == "box":
        assert len(bad.grounding.boxes) == int(detail)
        for b in bad.grounding.boxes:  # in the image, ordered, non-empty
            assert 0 <= b.x1 < b.x2 <= 80 and 0 <= b.y1 < b.y2 <= 64
    json.dumps(bad.summary())


# --- annotations from Label Studio -----------------------------------------------------------------------------------


@pytest.mark.labelstudio
@pytest.mark.slow
def test_annotations_with_wrong_size_unknown_label_or_garbage_rle_are_reported_and_others_synced(ls_project):
    from labeling.brush import mask_to_rle
    from labeling.push import brush_result
    from labeling.sync import sync_annotations
    from tests.helpers.labelstudio import pushed as _pushed
    from tests.helpers.labelstudio import verdict as _verdict

    p = ls_project
    c = p.ls.client
    ids, lts = _pushed(p, 5, tag="bad")
    t_good, t_size, t_label, t_rle, t_verdict = (lts[i].ls_task_id for i in ids)
    h, w = 48, 64
    good_mask = np.zeros((h, w), bool)
    good_mask[5:20, 5:30] = True
    a_good = c.create_annotation(t_good, [*brush_result(good_mask), _verdict("accept")])
    a_size = c.create_annotation(t_size, [*brush_result(np.ones((h * 2, w), bool)), _verdict("accept")])
    region = brush_result(good_mask)[0]
    unknown = json.loads(json.dumps(region))
    unknown["value"]["brushlabels"] = ["Swimming pool"]
    a_label = c.create_annotation(t_label, [unknown, _verdict("accept")])
    garbage = json.loads(json.dumps(region))
    garbage["value"]["rle"] = mask_to_rle(good_mask)[:7]
    a_rle = c.create_annotation(t_rle, [garbage, _verdict("accept")])
    a_verdict = c.create_annotation(t_verdict, [_verdict("perhaps")])

    rep = sync_annotations(c, p.session, p.blobs, p.handle)
    bad = dict(rep.malformed)
    assert rep.upserted == 1, rep
    assert "96x64" not in bad[a_size["id"]] and f"{w}x{h * 2}" in bad[a_size["id"]]
    assert "unknown labels" in bad[a_label["id"]] and "Swimming pool" in bad[a_label["id"]]
    assert "brush RLE" in bad[a_rle["id"]]
    assert "perhaps" in bad[a_verdict["id"]]
    assert a_good["id"] not in bad


def test_catalogue_size():
    n = (
        len(REJECTED_IMAGES) + 1 + len(ACCEPTED_IMAGES) + 1 + 2 + len(QUERY_ROWS) + 1 + 1 + len(UNICODE_QUERIES)
        + len(INJECTIONS) + 1 + len(GROUNDER_ANSWERS) + 4 + 2
    )
    assert n >= 40, n


@pytest.mark.parametrize(
    "text",
    ['image,query\na.png,"' + "x" * 200_000 + '"\n', "image,query\na.png,the\rroof\nb.png,ok\n"],
    ids=["200k-character-field", "stray-carriage-return"],
)
def test_malformed_csv_is_a_clear_error_not_a_crash(text):
    from flows.ingest import QueriesError, parse_queries

    try:
        rows, issues = parse_queries(text, name="q.csv")
    except QueriesError as exc:
        assert "q.csv" in str(exc) and "line" in str(exc)
        return
    # an unquoted CR ends a line (old Mac line endings): the stray half-row is reported, the others go on
    assert [r.image for r in rows] == ["a.png", "b.png"] and [i.line for i in issues] == [3]
