"""The push's fast paths are exact: Fortran-ordered masks brush-encode to the same bytes, decode_mask without the
transpose gives the same mask, and payloads built in a worker thread (overlapping the import requests) give the same
tasks, records and per-item errors as payloads built in line (real Label Studio)."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest

from labeling.brush import mask_to_rle, rle_to_mask
from storage.maskcodec import MaskCodecError, decode_mask, encode_mask

SHAPES = [(1, 1), (1, 7), (7, 1), (2, 2), (3, 5), (5, 3), (48, 64), (64, 48), (97, 131), (256, 256)]


def _random_masks(rng: np.random.Generator, h: int, w: int):
    yield np.zeros((h, w), bool)
    yield np.ones((h, w), bool)
    for p in (0.02, 0.5, 0.97):
        yield rng.random((h, w)) < p
    yy, xx = np.mgrid[:h, :w]
    yield (yy - h * rng.random()) ** 2 + (xx - w * rng.random()) ** 2 < (max(h, w) * rng.random()) ** 2
    m = np.zeros((h, w), bool)  # rectangles touching the borders: row-boundary runs
    m[: max(1, h // 3), :] = True
    m[:, w - max(1, w // 4) :] = True
    yield m
    yield (np.arange(h * w).reshape(h, w) // max(1, w // 2)) % 2 == 0  # runs that span row ends


@pytest.mark.parametrize("shape", SHAPES)
def test_fortran_ordered_mask_encodes_to_the_same_rle(shape):
    rng = np.random.default_rng(sum(shape))
    for mask in _random_masks(rng, *shape):
        f = np.asfortranarray(mask)
        assert f.flags.f_contiguous
        want = mask_to_rle(np.ascontiguousarray(mask))
        assert mask_to_rle(f) == want
        assert mask_to_rle(np.asfortranarray(mask.astype(np.uint8) * 7)) == want  # non-bool, Fortran order
        np.testing.assert_array_equal(rle_to_mask(want, *shape), mask)


def test_fortran_path_on_many_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(2, 60, 2))
        m = rng.random((h, w)) < rng.random()
        if rng.random() < 0.5:  # long runs too
            m = np.repeat(m[:, : max(1, w // 8)], 8, axis=1)[:, :w] if w >= 8 else m
        assert mask_to_rle(np.asfortranarray(m)) == mask_to_rle(np.ascontiguousarray(m))


def test_long_runs_in_fortran_order_split_like_c_order():
    m = np.zeros((300, 300), bool)  # 90,000 pixels = 360,000 values: several 65536-value pieces per run
    m[100:, :] = True
    assert mask_to_rle(np.asfortranarray(m)) == mask_to_rle(m)


@pytest.mark.parametrize("noisy", [False, True])  # RLE codec and the bit-packed codec
def test_decode_mask_without_transpose_is_the_same_mask(noisy):
    rng = np.random.default_rng(3)
    h, w = 83, 120
    yy, xx = np.mgrid[:h, :w]
    mask = rng.random((h, w)) < 0.5 if noisy else (yy - 40) ** 2 + (xx - 70) ** 2 < 900
    data = encode_mask(mask)
    a = decode_mask(data, shape=(h, w))
    b = decode_mask(data, shape=(h, w), contiguous=False)
    assert a.flags.c_contiguous and a.dtype == b.dtype == np.bool_
    np.testing.assert_array_equal(a, mask)
    np.testing.assert_array_equal(b, mask)
    assert mask_to_rle(b) == mask_to_rle(mask)
    # the checks still run on the fast path: wrong shape, damaged area count
    with pytest.raises(MaskCodecError, match="differs"):
        decode_mask(data, shape=(w, h), contiguous=False)
    bad = bytearray(data)
    bad[14:18] = (int(mask.sum()) + 1).to_bytes(4, "little")
    with pytest.raises(MaskCodecError, match="foreground"):
        decode_mask(bytes(bad), contiguous=False)


# --- overlapped payload building against a real Label Studio ---------------------------------------------------------


@pytest.mark.labelstudio
@pytest.mark.slow
def test_overlapped_push_equals_inline_push(ls_project):
    from labeling.project import ensure_project
    from labeling.push import ImageUrlResolver, push_predictions
    from storage import repo
    from tests.helpers.labelstudio import MV
    from tests.helpers.labelstudio import seed as _seed

    p = ls_project
    ids = _seed(p, 23, h=40, w=56, tag="perf")
    # one item in a middle batch has a mask blob that is gone: recorded, the rest goes on, in both modes
    from storage.models import Prediction

    broken = ids[11]
    pred = p.session.query(Prediction).filter_by(item_id=broken).one()
    pred.mask_sha256 = "0" * 64
    p.session.commit()

    resolver = ImageUrlResolver.for_server(p.ls.server)
    threads: set[str] = set()

    def url(uri: str) -> str:
        threads.add(threading.current_thread().name)
        return resolver(uri)

    title = f"perf inline {uuid.uuid4().hex[:8]}"
    other = ensure_project(p.ls.client, p.session, title, imagery_root=p.ls.imagery_root)
    p.session.commit()
    kw = {"image_url": url, "batch_size": 5}
    fast = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, overlap=True, **kw)
    assert any(n.startswith("push-payloads") for n in threads)
    threads.clear()
    slow = push_predictions(p.ls.client, p.session, p.blobs, other, MV, overlap=False, **kw)
    assert threads == {threading.current_thread().name}

    for rep in (fast, slow):
        assert rep.pushed == 22 and rep.reconciled == 0 and [i for i, _ in rep.failed] == [broken]
        assert rep.requests == 1 + 5  # one listing + 5 imports (batches of 5 over 23 items, one item failed)
    assert fast.failed[0][1] == slow.failed[0][1]

    def tasks(handle):
        out = {}
        for t in p.ls.client.iter_tasks(handle.ls_project_id, fields="all"):
            (pr,) = t["predictions"]
            out[t["data"]["item_id"]] = (t["data"], pr["result"], pr["model_version"], pr["score"], t["id"])
        return out

    a, b = tasks(p.handle), tasks(other)
    assert sorted(a) == sorted(b) == sorted(set(ids) - {broken})
    for iid in a:
        assert a[iid][:4] == b[iid][:4]  # identical data and pre-labels
    for handle, got in ((p.handle, a), (other, b)):
        lts = {lt.item_id: lt.ls_task_id for lt in repo.label_tasks(p.session, handle.label_project_id)}
        assert lts == {iid: v[4] for iid, v in got.items()}
    # idempotent afterwards in both modes
    again = push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, overlap=True, **kw)
    assert again.pushed == 0 and again.reconciled == 0 and [i for i, _ in again.failed] == [broken]
