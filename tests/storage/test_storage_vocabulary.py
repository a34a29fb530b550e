"""The shared vocabulary (levels, domains, query keys), the one batching helper, "blob, else source" image bytes and
the repository's guarded item deletion."""

from __future__ import annotations

import hashlib

import pytest

from geoseg.vocabulary import DOMAINS, LEVELS, normalise_domain, normalise_level, normalise_query, query_key
from storage import repo
from storage.records import ImageRecord, ItemRecord, PredictionRecord
from storage.repo.base import chunked
from storage.sources import SourceError
from tests.fixtures.storage import add_image


@pytest.mark.parametrize("raw,level", [("L2", "L2"), (" l3 ", "L3"), ("1", "L1"), (2, "L2"), ("hard", "L3"),
                                       ("", None), (None, None)])
def test_normalise_level(raw, level):
    assert normalise_level(raw) == level


@pytest.mark.parametrize("raw", ["L4", "0", True, 2.0, "L 1"])
def test_bad_level_is_one_clear_error(raw):
    with pytest.raises(ValueError, match=r"^level must be L1, L2 or L3 \(or empty\), got "):
        normalise_level(raw)


def test_domains_and_query_keys():
    assert [normalise_domain(d.upper()) for d in DOMAINS] == list(DOMAINS) and LEVELS == ("L1", "L2", "L3")
    assert normalise_domain("  ") is None and normalise_domain(" traffic ") == "Traffic"
    with pytest.raises(ValueError, match="domain must be one of Urban, Rural, Traffic, Nature"):
        normalise_domain("Ocean")
    assert normalise_query(" the\u3000red\t\n roof ") == "the red roof"  # ideographic space is whitespace
    assert query_key("ＴＨＥ Red\u00a0Roof") == query_key("the red roof") == "the red roof"
    assert query_key("Straße") == query_key("STRASSE")  # casefold, not lower
    with pytest.raises(ValueError, match="must be text"):
        normalise_query(3)


def test_chunked_one_helper_for_sequences_and_iterators():
    assert list(chunked([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(chunked((x for x in range(5)), 3)) == [[0, 1, 2], [3, 4]]
    assert list(chunked([], 3)) == []
    with pytest.raises(ValueError, match="batch size must be >= 1"):
        list(chunked([1], 0))


def test_image_bytes_blob_first_then_source(tmp_path, blob_store):
    from storage.ingest import image_bytes

    f = tmp_path / "a.png"
    f.write_bytes(b"source bytes")
    sha = hashlib.sha256(b"source bytes").hexdigest()
    assert image_bytes(blob_store, sha, str(f)) == b"source bytes"  # not in the blob store: read from its URI
    blob_store.put(b"source bytes")
    f.unlink()
    assert image_bytes(blob_store, sha, str(f)) == b"source bytes"  # the blob store's copy, source gone
    with pytest.raises(SourceError, match="not in the blob store, and .*no such file"):
        image_bytes(blob_store, "0" * 64, str(f))


def test_delete_untouched_items_keeps_items_with_work(session):
    img = add_image(session, ImageRecord(sha256="d" * 64, uri="/d.png", width=4, height=4))
    ids = repo.upsert_items(session, [ItemRecord(img, "untouched"), ItemRecord(img, "predicted")])
    repo.upsert_predictions(session, [PredictionRecord(ids[(img, "predicted")], "mv", error="boom")])
    assert repo.item_work(session, list(ids.values())) == {ids[(img, "predicted")]: "1 prediction(s)"}
    assert repo.delete_untouched_items(session, list(ids.values())) == [ids[(img, "untouched")]]
    session.commit()
    assert repo.item_keys(session, [img]) == {(img, "predicted")}
