"""Fuzzing (issue 9, part 5) with hypothesis: the grounder-output parser, the brush RLE decoder and the queries-file
reader take hostile input and either answer or raise their documented error type -- nothing else -- in bounded time
and memory (e.g. an RLE whose header claims 10^9 pixels is refused from the header, before anything is allocated).
"""

from __future__ import annotations

import json
import resource
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

# --- grounder output parser ---

_num = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6), st.none()
)
_box = st.lists(_num, min_size=0, max_size=6)
_obj = st.fixed_dictionaries(
    {},
    optional={
        "bbox": _box, "bbox_2d": _box, "BBOX": _box, "prompt": st.text(max_size=30), "label": st.text(max_size=30),
        "positive_points": st.lists(st.lists(_num, max_size=3), max_size=4), "point_2d": _box,
    },
)
_answer_json = st.one_of(_obj, st.lists(_obj, max_size=4), st.lists(_box, max_size=3))


def _render(value, wrap: int, prefix: str, cut: int | None) -> str:
    text = json.dumps(value, allow_nan=True)
    text = [text, f"```json\n{text}\n```", f"<think>{prefix}</think>{text}", f"{prefix} {text} {prefix}"][wrap % 4]
    return text[:cut] if cut is not None else text


def _check_grounding(g, w: int, h: int) -> None:
    from geoseg.types import Grounding

    assert isinstance(g, Grounding)
    assert isinstance(g.raw_text, str)
    if not g.boxes:
        assert g.error or g.boxes == ()
    for b in g.boxes:
        vals = (b.x1, b.y1, b.x2, b.y2)
        assert all(np.isfinite(v) for v in vals), vals
        assert 0 <= b.x1 <= b.x2 <= w and 0 <= b.y1 <= b.y2 <= h, (vals, w, h)


@FUZZ
@given(text=st.text(max_size=400), conv=st.sampled_from(["pixel", "norm1000", "norm1"]),
       w=st.integers(1, 5000), h=st.integers(1, 5000))
def test_parser_never_raises_on_arbitrary_text(text, conv, w, h):
    from geoseg.grounding import parse_grounding

    _check_grounding(parse_grounding(text, image_size=(w, h), convention=conv), w, h)


@FUZZ
@given(value=_answer_json, wrap=st.integers(0, 3), prefix=st.text(max_size=20), cut=st.none() | st.integers(0, 200),
       conv=st.sampled_from(["pixel", "norm1000", "norm1"]), w=st.integers(1, 4000), h=st.integers(1, 4000))
def test_parser_on_grounding_shaped_json(value, wrap, prefix, cut, conv, w, h):
    from geoseg.grounding import parse_grounding

    _check_grounding(parse_grounding(_render(value, wrap, prefix, cut), image_size=(w, h), convention=conv), w, h)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000, "{" * 50_000 + "}" * 50_000, '{"bbox": [' + "1," * 200_000 + "1]}",
     "```json\n" * 20_000, "<think>" * 30_000, '{"bbox": [1e308, 1e308, -1e308, 1e999]}'],
    ids=["deep-brackets", "deep-braces", "huge-list", "many-fences", "many-think", "extreme-floats"],
)
def test_parser_bounded_time_on_hostile_text(text):
    from geoseg.grounding import parse_grounding

    t0 = time.perf_counter()
    g = parse_grounding(text, image_size=(1000, 1000))
    assert time.perf_counter() - t0 < 5.0
    _check_grounding(g, 1000, 1000)


# --- brush RLE decoder ---


def _rle_errors():
    from labeling.brush import BrushRLEError

    return (BrushRLEError, ValueError)


@FUZZ
@given(data=st.lists(st.integers(0, 255), max_size=300), h=st.integers(1, 64), w=st.integers(1, 64))
def test_rle_decoder_random_bytes(data, h, w):
    from labeling.brush import rle_to_mask

    try:
        m = rle_to_mask(data, h, w)
    except _rle_errors():
        return
    assert m.shape == (h, w) and m.dtype == np.bool_


@FUZZ
@given(mask=st.integers(1, 24).flatmap(lambda h: st.integers(1, 24).flatmap(
    lambda w: st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(lambda v: np.array(v).reshape(h, w)))),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.none() | st.integers(0, 400))
def test_rle_decoder_mutated_valid_rles(mask, flips, cut):
    """Round trip when intact; a corrupted / truncated RLE decodes to a mask of the right shape or a clear error."""
    from labeling.brush import mask_to_rle, rle_to_mask

    rle = mask_to_rle(mask)
    h, w = mask.shape
    if not flips and cut is None:
        np.testing.assert_array_equal(rle_to_mask(rle, h, w), mask)
        return
    bad = list(rle)
    for pos, val in flips:
        bad[pos % len(bad)] = val
    if cut is not None:
        bad = bad[:cut]
    try:
        m = rle_to_mask(bad, h, w)
    except _rle_errors():
        return
    assert m.shape == (h, w)


def _header(num: int, ws: int = 8, sizes=(3, 4, 7, 15)) -> list[int]:
    """A brush RLE header (num: 32 bits, word size - 1: 5 bits, four rle sizes - 1: 4 bits each) and no body."""
    h = (num << 21) | ((ws - 1) << 16) | sum((s << (12 - 4 * i)) for i, s in enumerate(sizes))
    return list((h << (56 - 53)).to_bytes(7, "big"))


def test_rle_claiming_a_billion_pixels_is_refused_from_the_header():
    from labeling.brush import BrushRLEError, decode_rle_values, rle_header, rle_to_mask

    claim = _header(10**9 * 4 // 4 * 4 // 4)  # 10^9 values
    assert rle_header(claim)[0] == 10**9
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(BrushRLEError, match="needs"):
        rle_to_mask(claim, 100, 100)  # size mismatch: refused before decoding
    with pytest.raises(BrushRLEError, match="truncated"):
        decode_rle_values(claim + [0] * 16)  # the body cannot deliver what the header claims
    with pytest.raises(BrushRLEError, match="truncated"):
        rle_to_mask(_header(4 * 20_000 * 20_000), 20_000, 20_000)  # right size, empty body: no 1.6 GB allocation
    assert time.perf_counter() - t0 < 2.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200, grown_mb


@FUZZ
@given(junk=st.one_of(st.text(max_size=30), st.lists(st.integers(-1000, 1000), max_size=30),
                      st.lists(st.floats(allow_nan=True), max_size=10), st.none(), st.integers(), st.dictionaries(
                          st.text(max_size=5), st.integers(), max_size=3)))
def test_rle_decoder_wrong_types(junk):
    from labeling.brush import rle_to_mask

    try:
        rle_to_mask(junk, 8, 8)
    except (*_rle_errors(), TypeError):
        pass


# --- queries-file reader ---


@FUZZ
@given(text=st.text(max_size=600), ext=st.sampled_from(["q.csv", "q.jsonl", "q.tsv", "queries"]))
def test_queries_reader_arbitrary_text(text, ext):
    from flows.ingest import QueriesError, parse_queries

    try:
        rows, issues = parse_queries(text, name=ext)
    except QueriesError:
        return
    for r in rows:
        assert r.image and r.query and r.level in (None, "L1", "L2", "L3") and r.line >= 1
    for i in issues:
        assert i.message and i.kind == "query"


_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)


@FUZZ
@given(rows=st.lists(st.tuples(_cell, _cell, _cell, _cell), max_size=25), jsonl=st.booleans())
def test_queries_reader_structured_rows_keep_every_good_row(rows, jsonl):
    import csv
    import io

    from flows.ingest import QueriesError, parse_queries

    if jsonl:
        text = "\n".join(json.dumps({"image": a, "query": b, "level": c, "domain": d}) for a, b, c, d in rows)
        name = "q.jsonl"
    else:
        buf = io.StringIO()
        csv.writer(buf).writerows([("image", "query", "level", "domain"), *rows])
        text, name = buf.getvalue(), "q.csv"
    try:
        got, issues = parse_queries(text, name=name)
    except QueriesError:
        assert not text.strip() or not rows
        return
    assert len(got) + len(issues) <= max(len(rows), 1) + text.count("\r")  # every row accounted for, none invented
    assert len({(r.image, r.query) for r in got}) == len(got)  # duplicates reported, not kept twice


def test_queries_reader_bounded_time_on_a_big_hostile_file():
    from flows.ingest import parse_queries

    text = "image,query\n" + "".join(f'a{i}.png,"=cmd|{"x" * 50}"\n' for i in range(50_000)) + '"unclosed,\n'
    t0 = time.perf_counter()
    rows, issues = parse_queries(text, name="q.csv")
    assert time.perf_counter() - t0 < 10.0
    assert len(rows) == 50_000
