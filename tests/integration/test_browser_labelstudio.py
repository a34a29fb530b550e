"""The annotator's view in a real browser: Debian's chromium driven headless by Playwright against the session's real
Label Studio. The review task is made by the product's own path: a GeoSeg prediction (served grounder answering a
canned box on a real aerial image + tiny CLIP Surgery + tiny SAM3, meaningless masks) stored in the database and
pushed with ``labeling.push.push_predictions``. The test logs in as the server's admin, opens the task and checks that
the image, the query text, the pre-label region and the verdict choices render; screenshots go to a temp dir
(``GEOLABEL_SCREENSHOT_DIR`` to keep them, e.g. for docs/screenshots/).

Skipped, with the reason, only when chromium or the playwright package is missing (``scripts/setup.sh`` installs
both where apt is available); with ``CI`` set, a missing browser fails instead.
"""

from __future__ import annotations

import re
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.browser import chromium_page, screenshot_dir
from tests.fixtures.storage import add_image, add_item, add_prediction

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
pytestmark = pytest.mark.labelstudio


@pytest.fixture
def browser_page():
    """A fresh headless chromium page (tests.fixtures.browser: skips, or fails under CI, without a browser)."""
    with chromium_page(1200, 1080) as page:
        yield page


@pytest.fixture
def geoseg_review_task(ls_project, chat_server, tiny_matcher, tiny_segmenter):
    """A review task pushed from a stored GeoSeg prediction; returns (project, task id, query, mask area)."""
    from geoseg.grounding import build_grounder
    from geoseg.imagery import read_image
    from geoseg.pipeline import GeoSegPipeline
    from geoseg.types import BackendSpec, GeoSegConfig
    from labeling.push import ImageUrlResolver, push_predictions
    from storage.blobs import sha256_hex
    from storage.maskcodec import encode_mask
    from storage.records import ImageRecord, ItemRecord, PredictionRecord

    ls, s = ls_project.ls, ls_project.session
    dst = ls.imagery_root / f"browser-{uuid.uuid4().hex[:6]}" / "SOAP_031.png"
    dst.parent.mkdir()
    shutil.copy(AERIAL / "SOAP_031.png", dst)
    data = dst.read_bytes()
    loaded = read_image(data)
    grounder = build_grounder(
        BackendSpec("openai", "test-served-model", {"base_url": chat_server.base_url, "max_retries": 0})
    )
    pipeline = GeoSegPipeline(GeoSegConfig(profile="tiny-served"), grounder=grounder, matcher=tiny_matcher,
                              segmenter=tiny_segmenter)
    query = "the largest building"  # the chat server's canned answer for it is a box (hand-written, not a model's)
    res = pipeline(loaded.rgb, query)
    image_id = add_image(s, ImageRecord.from_loaded(loaded, sha256_hex(data), str(dst)))
    item_id = add_item(s, ItemRecord(image_id, query, "L1", "Urban"))
    sha = ls_project.blobs.put(encode_mask(res.mask))
    add_prediction(s, PredictionRecord.from_result(item_id, res, sha, score=0.5))
    s.commit()
    rep = push_predictions(ls.client, s, ls_project.blobs, ls_project.handle, res.model_version,
                           image_url=ImageUrlResolver(ls.imagery_root))
    assert rep.pushed == 1, rep
    (task,) = list(ls.client.iter_tasks(ls_project.handle.ls_project_id))
    return ls_project, task["id"], query, res.area


def test_annotator_sees_image_query_prelabel_and_verdicts(geoseg_review_task, browser_page, tmp_path):
    proj, task_id, query, area = geoseg_review_task
    ls = proj.ls
    shots = screenshot_dir(tmp_path)
    creds = ls.server.credentials()
    page = browser_page

    page.goto(ls.url + "/user/login/")
    page.fill("#email", creds["email"])
    page.fill("#password", creds["password"])
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/user/login" not in u, timeout=60_000)

    page.goto(f"{ls.url}/projects/{proj.handle.ls_project_id}/data?tab=0&task={task_id}")
    page.get_by_text("Verdict on the mask").wait_for(timeout=90_000)
    # the image: the task's local-files URL, decoded by the browser at its full size
    page.wait_for_function(
        "() => [...document.images].some(i => i.src.includes('/data/local-files/') && i.naturalWidth === 400)",
        timeout=60_000,
    )
    page.wait_for_timeout(1500)  # let the canvas paint the brush region
    page.screenshot(path=str(shots / "review_task.png"))
    body = page.inner_text("body")
    lines = [ln.strip() for ln in body.splitlines()]
    assert query in lines  # the query text, as the Text tag shows it
    assert area > 0, "the GeoSeg prediction for the browser test is empty; the canned box should give a mask"
    assert "target" in lines  # the pre-label's brush region, listed in the regions panel
    # ... and painted over the image: the label colour (#ff3b30, semi-transparent) is on screen
    from PIL import Image

    px = np.asarray(Image.open(shots / "review_task.png").convert("RGB")).astype(int)
    red = (px[..., 0] > 170) & (px[..., 1] < 110) & (px[..., 2] < 110)
    assert red.sum() > 200, f"no brush region painted ({red.sum()} red pixels)"
    # the verdict choices, below the image: scroll them into view for the second screenshot
    verdict = page.get_by_text("Verdict on the mask")
    verdict.scroll_into_view_if_needed()
    for choice in ("accept", "no target", "reject"):
        loc = page.get_by_text(re.compile(rf"^{choice}(\[\d\])?$"))
        assert loc.count() >= 1 and loc.first.is_visible(), choice
    page.screenshot(path=str(shots / "review_task_verdict.png"))
    assert (shots / "review_task.png").stat().st_size > 10_000


def _login(page, ls) -> None:
    creds = ls.server.credentials()
    page.goto(ls.url + "/user/login/")
    page.fill("#email", creds["email"])
    page.fill("#password", creds["password"])
    page.click("button[type=submit]")
    page.wait_for_url(lambda u: "/user/login" not in u, timeout=60_000)


def test_annotator_writes_a_query_in_the_intake_project(ls_project, browser_page, tmp_path):
    """An annotator opens an intake task in the browser, types a query, picks a level and submits; the pull makes it
    an item."""
    from PIL import Image as PILImage

    from labeling.intake import create_intake_tasks, ensure_intake_project, pull_queries
    from labeling.push import ImageUrlResolver
    from storage.blobs import sha256_hex
    from storage.models import Item
    from storage.records import ImageRecord

    ls, s = ls_project.ls, ls_project.session
    shots = screenshot_dir(tmp_path)
    dst = ls.imagery_root / f"intake-browser-{uuid.uuid4().hex[:6]}" / "SOAP_061.png"
    dst.parent.mkdir()
    shutil.copy(AERIAL / "SOAP_061.png", dst)
    w, h = PILImage.open(dst).size
    add_image(s, ImageRecord(sha256_hex(dst.read_bytes()), str(dst), w, h, format="PNG"))
    s.commit()
    proj = ensure_intake_project(ls.client, s, f"intake browser {uuid.uuid4().hex[:6]}", imagery_root=ls.imagery_root)
    s.commit()
    create_intake_tasks(ls.client, s, proj, ImageUrlResolver(ls.imagery_root))
    (task,) = list(ls.client.iter_tasks(proj.ls_project_id))

    page = browser_page
    _login(page, ls)
    page.goto(f"{ls.url}/projects/{proj.ls_project_id}/data?tab=0&task={task['id']}")
    box = page.locator("textarea").first
    box.wait_for(timeout=90_000)
    box.fill("the gravel road along the clearing")
    box.press("Shift+Enter")  # LSF adds a multi-row TextArea's text with Shift+Enter
    page.get_by_text(re.compile(r"^L2(\[\d\])?$")).first.click()
    page.screenshot(path=str(shots / "intake_task.png"))
    page.get_by_role("button", name="Submit").click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not ls.client.task_annotations(task["id"]):
        time.sleep(0.3)
    rep = pull_queries(ls.client, s, proj)
    assert rep.items_new == 1 and rep.malformed == [], (rep, ls.client.task_annotations(task["id"]))
    s.expire_all()
    (item,) = s.query(Item).all()
    assert (item.query, item.level) == ("the gravel road along the clearing", "L2")


KEYPOINT_HOTKEY, BOX_HOTKEY = "3", "4"  # the KeyPointLabels / RectangleLabels "target" labels of geoseg_config.xml


def test_annotator_corrects_the_mask_with_smart_clicks(geoseg_review_task, browser_page, tiny_models_root,
                                                       monkeypatch, tmp_path):
    """The annotator's correction path: Auto-Annotation on, the pre-label hidden; a box drawn with the smart
    Rectangle (its mask stays inside the box; rejected), then the smart Key Point tool: a click and an Alt-click
    (negative) go through Label Studio to the real GeoSeg ML backend (``load_geoseg_model("tiny")``: tiny random
    SAM3, a meaningless mask), whose region comes back as a suggestion on the canvas; accepted, the old pre-label
    deleted, the verdict chosen and submitted, ``sync_annotations`` stores exactly the mask the backend returned for
    the last click."""
    import dataclasses

    from flows.cli_ml import load_geoseg_model
    from geoseg.profiles import load_profile
    from labeling.brush import rle_to_mask
    from labeling.client import connect_ml_backend
    from labeling.ml_backend import MLBackendConfig, create_app
    from labeling.sync import sync_annotations
    from storage.maskcodec import decode_mask
    from storage.models import Annotation
    from tests.helpers.ml_backend import serve

    proj, task_id, _query, _area = geoseg_review_task
    ls, pid, page = proj.ls, proj.handle.ls_project_id, browser_page
    shots = screenshot_dir(tmp_path)
    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    answered = []  # (the SmartPrompt Label Studio sent, the mask the backend answered with)

    def load():
        handle = load_geoseg_model("tiny")

        def prompt(image, smart):
            suggestion = handle.prompt(image, smart)
            answered.append((smart, suggestion.mask))
            return suggestion

        return dataclasses.replace(handle, prompt=prompt)  # the real handler, recorded

    app = create_app(load, MLBackendConfig(timeout_s=60, label_studio_url=ls.url),
                     model_version=load_profile("tiny").model_version)
    with serve(app) as url:
        connect_ml_backend(ls.client, pid, url)  # before the page opens: the Data Manager reads it at start
        _login(page, ls)
        page.goto(f"{ls.url}/projects/{pid}/data?tab=0&task={task_id}")
        page.get_by_text("Verdict on the mask").wait_for(timeout=90_000)
        page.wait_for_function(
            "() => [...document.images].some(i => i.src.includes('/data/local-files/') && i.naturalWidth === 400)",
            timeout=60_000,
        )
        toggle = page.get_by_test_id("bottombar-auto-annotation-toggle")
        if not toggle.is_checked():
            toggle.locator("xpath=ancestor::label").click()
        page.keyboard.press("Escape")  # nothing selected: a label hotkey would relabel a selected region
        page.get_by_role("button", name="Hide all regions").click()  # clicks land on the image, not the pre-label
        x, y, w, h = max(page.evaluate(
            "() => [...document.querySelectorAll('canvas')].map(c => { const r = c.getBoundingClientRect();"
            " return [r.x, r.y, r.width, r.height]; })"), key=lambda r: r[2] * r[3])

        def wait_answer(n):
            deadline = time.monotonic() + 60
            while len(answered) == n:
                if time.monotonic() > deadline:
                    page.screenshot(path=str(shots / "smart_tool_lost.png"))
                    raise AssertionError(f"the smart tool never reached the ML backend (screenshot in {shots})")
                page.wait_for_timeout(200)

        def tool(name):
            page.locator("button.lsf-tool_smart:visible").first.hover()  # the smart tools' menu
            page.locator(f"button[aria-label='{name}']").click()

        tool("rectangle-tool")  # a box: dragged from 25 % to 50 % of the 400 px image
        page.keyboard.press(BOX_HOTKEY)
        page.mouse.move(x + w * 0.25, y + h * 0.25)
        page.mouse.down()
        page.mouse.move(x + w * 0.5, y + h * 0.5, steps=12)
        page.mouse.up()
        wait_answer(0)
        (boxed, box_mask), = answered
        np.testing.assert_allclose(boxed.box, (100, 100, 200, 200), atol=3)
        outside = np.ones_like(box_mask)
        outside[int(boxed.box[1]) : int(np.ceil(boxed.box[3])), int(boxed.box[0]) : int(np.ceil(boxed.box[2]))] = False
        assert not (box_mask & outside).any()  # the box's mask stays inside the box
        page.get_by_text("1 suggestions").wait_for(timeout=30_000)
        page.get_by_test_id("bottombar-reject-suggestions-button").click()  # not this one
        answered.clear()
        tool("key-point-tool")

        def click(fx, fy, negative=False):
            page.keyboard.press(KEYPOINT_HOTKEY)  # the label, every time: Label Studio drops it after each region
            n = len(answered)
            if negative:
                page.keyboard.down("Alt")
            page.mouse.click(x + w * fx, y + h * fy)
            if negative:
                page.keyboard.up("Alt")
            wait_answer(n)

        click(0.3, 0.4)
        page.get_by_text("1 suggestions").wait_for(timeout=30_000)
        click(0.7, 0.6, negative=True)
        (first, _), (second, mask) = answered
        assert first.labels == (1,) and second.labels == (1, 0)  # the Alt-click is SAM's background point
        np.testing.assert_allclose(second.points, [(120, 160), (280, 240)], atol=3)  # the 400 px image's pixels
        page.wait_for_timeout(1500)  # the second suggestion replaces the first on the canvas
        page.screenshot(path=str(shots / "smart_click_suggestion.png"))
        page.get_by_test_id("bottombar-accept-suggestions-button").click()
        # delete the hidden pre-label (the first region listed), choose the verdict, submit
        page.locator(".lsf-outliner-item").first.click()
        page.keyboard.press("Backspace")
        page.get_by_text(re.compile(r"^accept(\[\d\])?$")).first.click()
        page.get_by_role("button", name="Submit").click()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ls.client.task_annotations(task_id):
            time.sleep(0.3)
    (ann,) = ls.client.task_annotations(task_id)
    brushes = [r for r in ann["result"] if r["type"] == "brushlabels"]
    assert len(brushes) == 1, [r["type"] for r in ann["result"]]
    assert np.array_equal(rle_to_mask(brushes[0]["value"]["rle"], 400, 400), mask)
    rep = sync_annotations(ls.client, proj.session, proj.blobs, proj.handle)
    assert rep.upserted == 1 and not rep.malformed, rep
    (stored,) = proj.session.query(Annotation).all()
    assert stored.verdict == "accept"
    assert np.array_equal(decode_mask(proj.blobs.get(stored.mask_sha256), shape=(400, 400)), mask)
