"""Annotation parsing and the webhook app's HTTP contract, without a server (fast)."""

from __future__ import annotations

import anyio
import httpx
import numpy as np
import pytest

from labeling.brush import mask_to_rle
from labeling.push import brush_result
from labeling.sync import MalformedAnnotationError, SyncReport, iou, parse_result, parse_time
from labeling.webhook import SECRET_HEADER, WebhookApp


def _verdict(v):
    return {"from_name": "verdict", "to_name": "image", "type": "choices", "value": {"choices": [v]}}


def test_parse_result_verdicts_and_union_of_brush_regions():
    a = np.zeros((6, 8), bool)
    a[1:3, 1:3] = True
    b = np.zeros((6, 8), bool)
    b[4:6, 5:8] = True
    verdict, mask = parse_result([*brush_result(a), *brush_result(b), _verdict("accept")], 6, 8)
    assert verdict == "accept"
    np.testing.assert_array_equal(mask, a | b)
    assert parse_result([_verdict("no target")], 6, 8) == ("no_target", None)
    assert parse_result([_verdict("reject")], 6, 8)[0] == "reject"


@pytest.mark.parametrize(
    "result, match",
    [
        ([], "no verdict"),
        ([_verdict("accept"), _verdict("reject")], "several verdicts"),
        ([_verdict("perhaps")], "unknown verdict"),
        (
            [{"from_name": "mask", "type": "brushlabels", "original_width": 8, "original_height": 6,
              "value": {"format": "rle", "rle": mask_to_rle(np.ones((6, 8), bool)), "brushlabels": ["car"]}},
             _verdict("accept")],
            "unknown labels",
        ),
        (
            [{"from_name": "mask", "type": "brushlabels", "original_width": 8, "original_height": 6,
              "value": {"format": "rle", "rle": [1, 2, 3], "brushlabels": ["target"]}}, _verdict("accept")],
            "brush RLE",
        ),
        (
            [{"from_name": "mask", "type": "brushlabels", "original_width": 8, "original_height": 6,
              "value": {"format": "rle", "rle": mask_to_rle(np.ones((4, 4), bool)), "brushlabels": ["target"]}},
             _verdict("accept")],
            "brush RLE",
        ),
        (["not a dict"], "not an object"),
    ],
)  # fmt: skip
def test_parse_result_malformed(result, match):
    with pytest.raises(MalformedAnnotationError, match=match):
        parse_result(result, 6, 8)


def test_iou_and_times():
    a = np.zeros((4, 4), bool)
    assert iou(a, a) == 1.0
    b = a.copy()
    b[0, :2] = True
    c = a.copy()
    c[0, 1:3] = True
    assert iou(b, c) == pytest.approx(1 / 3)
    assert parse_time("2026-11-25T19:10:05.589114Z").utcoffset().total_seconds() == 0
    with pytest.raises(ValueError):
        parse_time("2026-11-25T19:10:05")


def _call(app, method, path, **kw):
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.request(method, path, **kw)

    return anyio.run(go)


def test_webhook_app_contract():
    seen = []

    def handler(payload):
        seen.append(payload)
        return SyncReport(upserted=1)

    secret = "k" * 32
    app = WebhookApp(handler, secret, max_body=200)
    assert _call(app, "GET", "/health").status_code == 200
    assert _call(app, "GET", "/webhook").status_code == 405
    assert _call(app, "POST", "/elsewhere").status_code == 404
    assert _call(app, "POST", "/webhook", json={"action": "X"}).status_code == 401
    assert _call(app, "POST", "/webhook", json={}, headers={SECRET_HEADER: "k" * 31}).status_code == 401
    assert _call(app, "POST", "/webhook", content=b"{" * 300, headers={SECRET_HEADER: secret}).status_code == 413
    assert _call(app, "POST", "/webhook", content=b"[1]", headers={SECRET_HEADER: secret}).status_code == 400
    assert not seen
    r = _call(app, "POST", "/webhook", json={"action": "ANNOTATION_CREATED"}, headers={SECRET_HEADER: secret})
    assert r.status_code == 200 and r.json()["upserted"] == 1 and seen == [{"action": "ANNOTATION_CREATED"}]
    assert secret not in repr(app)
    with pytest.raises(ValueError, match="16"):
        WebhookApp(handler, "short")
