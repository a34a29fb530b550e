"""Security: image URIs and local-file paths cannot escape the imagery roots (issue 9, part 4).

The roots are the configured ``imagery_roots`` (Settings), or the ingested source directory itself when none are
configured. Escapes tried: ``../`` in a queries file, absolute paths in a queries file, a symlink planted in the
imagery folder pointing outside, ``file://`` URIs, a source outside the roots, and Label Studio local-files URLs.
Each refusal is a clear, named error; the legitimate images of the same batch are still ingested.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    """imagery/ (the root, one good image), secret/ outside it (a real PNG someone must not read)."""
    root = tmp_path / "imagery"
    root.mkdir()
    (root / "good.png").write_bytes(_png(10))
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "private.png").write_bytes(_png(200))
    return {"root": root, "secret": secret / "private.png", "tmp": tmp_path}


def _register(layout, uris: list[str], roots=None):
    from flows.ingest import register_images
    from flows.runtime import open_runtime, settings_from
    from storage.sources import SourceObject, list_images

    over = {"data_dir": str(layout["tmp"] / "data")}
    if roots is not None:
        over["imagery_roots"] = [str(r) for r in roots]
    rt = open_runtime(settings_from(over))
    objects = list_images(layout["root"]) + [SourceObject(uri=u, name=u, size=0) for u in uris]
    return rt, {r.name: r for r in register_images(rt, objects, str(layout["root"]))}


def test_absolute_path_outside_the_source_is_refused(layout):
    rt, out = _register(layout, [str(layout["secret"])])
    bad = out[str(layout["secret"])]
    assert bad.image_id is None and "outside the configured imagery roots" in bad.error
    assert out["good.png"].image_id is not None
    assert not rt.blobs.exists(__import__("hashlib").sha256(_png(200)).hexdigest())  # not copied anywhere


@pytest.mark.parametrize("form", ["dotdot", "file_uri", "dotdot_inside_then_out"])
def test_dotdot_and_file_uris_are_resolved_before_the_check(layout, form):
    root = layout["root"]
    uri = {
        "dotdot": f"{root}/../secret/private.png",
        "file_uri": f"file://{layout['secret']}",
        "dotdot_inside_then_out": f"{root}/sub/../../secret/private.png",
    }[form]
    _, out = _register(layout, [uri])
    assert out[uri].image_id is None and "outside the configured imagery roots" in out[uri].error
    assert out["good.png"].image_id is not None


def test_symlink_planted_in_the_imagery_folder_is_refused(layout):
    link = layout["root"] / "innocent.png"
    link.symlink_to(layout["secret"])
    _, out = _register(layout, [])
    assert out["innocent.png"].image_id is None and "outside the configured imagery roots" in out["innocent.png"].error
    assert out["good.png"].image_id is not None


def test_symlink_inside_the_roots_is_fine(layout):
    (layout["root"] / "alias.png").symlink_to(layout["root"] / "good.png")
    _, out = _register(layout, [])
    assert out["alias.png"].image_id == out["good.png"].image_id


def test_configured_roots_win_over_the_source(layout):
    other = layout["tmp"] / "other_root"
    other.mkdir()
    (other / "elsewhere.png").write_bytes(_png(50))
    # with roots = [imagery, other], an absolute path into `other` is allowed, the secret still is not
    _, out = _register(layout, [str(other / "elsewhere.png"), str(layout["secret"])], roots=[layout["root"], other])
    assert out[str(other / "elsewhere.png")].image_id is not None
    assert out[str(layout["secret"])].image_id is None


def test_check_within_roots_unit(tmp_path):
    from storage.sources import SourceError, check_within_roots

    root = tmp_path / "r"
    (root / "a").mkdir(parents=True)
    assert check_within_roots(root / "a" / ".." / "a", [root]) == (root / "a").resolve()
    for bad in (tmp_path, root / ".." / "x", Path("/etc/passwd"), root.parent / (root.name + "2")):
        with pytest.raises(SourceError, match="outside the configured imagery roots"):
            check_within_roots(bad, [root])
    with pytest.raises(SourceError):
        check_within_roots(root, [])  # no roots: nothing local may be read


def test_queries_file_dotdot_names_are_never_fetched(layout):
    from flows.ingest import QueryRow, resolve_image

    _, out = _register(layout, [])
    by_ref = {r.name: r for r in out.values()}
    assert resolve_image(QueryRow("../secret/private.png", "q", None, None, 2), by_ref) is None
    assert resolve_image(QueryRow("./good.png", "q", None, None, 3), by_ref) is not None


def test_ingest_flow_refuses_a_source_outside_the_configured_roots(layout, prefect_harness):
    from flows.ingest import ingest_flow
    from storage.sources import SourceError

    q = layout["tmp"] / "q.csv"
    q.write_text("image,query\nprivate.png,the roof\n")
    over = {"data_dir": str(layout["tmp"] / "data2"), "imagery_roots": [str(layout["root"])]}
    with pytest.raises(SourceError, match="outside the configured imagery roots"):
        ingest_flow(str(layout["secret"].parent), str(q), settings_overrides=over)


def test_ingest_flow_queries_file_with_escapes_keeps_good_rows(layout, prefect_harness):
    from flows.ingest import ingest_flow

    q = layout["tmp"] / "q.csv"
    q.write_text(
        "image,query\n"
        "good.png,the grey square\n"
        f"{layout['secret']},the private roof\n"
        "../secret/private.png,the private roof again\n"
    )
    rep = ingest_flow(str(layout["root"]), str(q), settings_overrides={"data_dir": str(layout["tmp"] / "data3")})
    assert rep.items_new == 1 and rep.images_new == 1
    msgs = [(i.line, i.message) for i in rep.issues if i.kind == "query"]
    assert any(line == 3 and "outside the configured imagery roots" in m for line, m in msgs), msgs
    assert any(line == 4 and "is not in" in m for line, m in msgs), msgs


def test_label_studio_local_files_urls_cannot_escape_the_served_root(tmp_path):
    from labeling.push import ImageUrlError, ImageUrlResolver

    root = tmp_path / "imagery"
    root.mkdir()
    (root / "ok.png").write_bytes(_png(1))
    outside = tmp_path / "outside.png"
    outside.write_bytes(_png(2))
    (root / "link.png").symlink_to(outside)
    r = ImageUrlResolver(root, document_root=tmp_path)
    assert r(str(root / "ok.png")) == "/data/local-files/?d=imagery/ok.png"
    for uri in (str(outside), f"{root}/../outside.png", str(root / "link.png")):
        with pytest.raises(ImageUrlError, match="outside the imagery root"):
            r(uri)
