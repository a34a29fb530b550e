"""Task images through Label Studio storage connections, against the session's real Label Studio and a real
moto_server: local-files storages per imagery root, an S3 source storage that presigns at view time (tasks hold
``s3://`` URIs), and the migration of a project whose tasks hold push-time presigned links (rewritten in place,
annotations kept), checked after that link's would-be expiry."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
pytestmark = pytest.mark.labelstudio


def _project(ls, title: str) -> int:
    from labeling.project import label_config

    return int(ls.client.create_project(f"{title} {uuid.uuid4().hex[:6]}", label_config())["id"])


def _signed_until(url: str) -> datetime:
    q = parse_qs(urlparse(url).query)
    signed = datetime.strptime(q["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return signed + timedelta(seconds=int(q["X-Amz-Expires"][0]))


def _resolve(ls, task_id: int, uri: str) -> httpx.Response:
    """What the labeling UI does for a storage URI: the task's resolve endpoint, which redirects to a fresh link."""
    fileuri = base64.urlsafe_b64encode(uri.encode()).decode()
    return httpx.get(f"{ls.url}/tasks/{task_id}/resolve/", params={"fileuri": fileuri},
                     headers={"Authorization": f"Token {ls.token}"}, follow_redirects=False, timeout=30)


def test_local_files_storage_per_imagery_root(labelstudio_server, tmp_path):
    from labeling.push import ImageUrlResolver

    ls = labelstudio_server
    roots = [tmp_path / "root-a", tmp_path / "root-b"]  # two imagery roots below the server's document root
    for r, name in zip(roots, ("SOAP_031.png", "SOAP_061.png"), strict=True):
        r.mkdir()
        shutil.copy(AERIAL / name, r / name)
    pid = _project(ls, "local storages")
    resolver = ImageUrlResolver(roots, document_root=ls.server.document_root)
    urls = [resolver(str(roots[0] / "SOAP_031.png")), resolver(str(roots[1] / "SOAP_061.png"))]
    assert resolver.needs.local_roots == {r.resolve() for r in roots}
    ids = resolver.needs.ensure(ls.client, pid)
    assert resolver.needs.ensure(ls.client, pid) == ids  # idempotent: found by path
    assert sorted(s["path"] for s in ls.client.local_storages(pid)) == sorted(str(r.resolve()) for r in roots)
    ls.client.import_tasks(pid, [{"data": {"image": u, "query": "q"}} for u in urls])
    for url, src in zip(urls, (AERIAL / "SOAP_031.png", AERIAL / "SOAP_061.png"), strict=True):
        r = httpx.get(ls.url + url, headers={"Authorization": f"Token {ls.token}"}, timeout=30)
        assert r.status_code == 200 and r.content == src.read_bytes()


def test_s3_storage_presigns_at_view_time_and_migrates_old_links(
    labelstudio_server, moto_server, s3_client, s3_bucket, monkeypatch, capsys, tmp_path
):
    from flows.cli import main
    from labeling.push import ImageUrlResolver
    from labeling.storages import S3Connection, migrate_project_images, s3_storages, unresolved_uri
    from tests.fixtures.storage import MOTO_CREDENTIALS

    ls = labelstudio_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MOTO_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MOTO_CREDENTIALS["aws_secret_access_key"])
    body = (AERIAL / "SOAP_031.png").read_bytes()
    s3_client.put_object(Bucket=s3_bucket, Key="tiles/a.png", Body=body)
    s3_client.put_object(Bucket=s3_bucket, Key="tiles/b.png", Body=body)
    conn = S3Connection(endpoint_url=moto_server, region="us-east-1", presign_ttl_min=1)
    pid = _project(ls, "s3 storage")

    # a task pushed the old way: a link presigned at push time, here with a 2-second expiry
    old = ImageUrlResolver(s3_mode="presign", s3_client=s3_client, presign_expires=2)(f"s3://{s3_bucket}/tiles/b.png")
    new = ImageUrlResolver()
    uri = new(f"s3://{s3_bucket}/tiles/a.png")
    assert uri == f"s3://{s3_bucket}/tiles/a.png" and new.needs.buckets == {s3_bucket}
    new.needs.ensure(ls.client, pid, conn)
    new_tid, old_tid = ls.client.import_tasks(pid, [{"data": {"image": uri, "query": "a", "item_id": 1}},
                                                    {"data": {"image": old, "query": "b", "item_id": 2}}])
    ann = ls.client.create_annotation(old_tid, [{"from_name": "verdict", "to_name": "image", "type": "choices",
                                                 "value": {"choices": ["accept"]}}])

    # the command a user runs: `geolabel storages migrate --project TITLE --json`
    monkeypatch.setenv("GEOLABEL_LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", ls.token)
    monkeypatch.setenv("GEOLABEL_S3_ENDPOINT_URL", moto_server)
    title = ls.client.get_project(pid)["title"]
    main(["storages", "migrate", "--project", title, "--presign-ttl", "1", "--json", "--data-dir", str(tmp_path)])
    rep = json.loads(capsys.readouterr().out)[title]
    assert (rep["updated"], rep["already"], rep["failed"]) == (1, 1, []), rep
    assert len(s3_storages(ls.client, pid)) == 1  # the existing storage was found, not duplicated
    again = migrate_project_images(ls.client, pid, s3=conn)
    assert (again.updated, again.already) == (0, 2)
    migrated = ls.client.get_task(old_tid)
    # the task API shows the view-time form (the resolve endpoint), never a fixed link; behind it: the URI
    assert migrated["data"]["image"].startswith(f"/tasks/{old_tid}/resolve/?fileuri="), migrated["data"]
    assert unresolved_uri(migrated["data"]["image"]) == f"s3://{s3_bucket}/tiles/b.png"
    assert migrated["data"]["query"] == "b"
    assert [a["id"] for a in ls.client.task_annotations(old_tid)] == [ann["id"]]  # annotation kept, same task

    # after the push-time link's would-be expiry, every task still resolves to a link signed now
    while datetime.now(UTC) <= _signed_until(old):
        time.sleep(0.5)
    for tid, key in ((new_tid, "tiles/a.png"), (old_tid, "tiles/b.png")):
        r = _resolve(ls, tid, f"s3://{s3_bucket}/{key}")
        assert r.status_code == 303, (r.status_code, r.text[:200])
        link = r.headers["location"]
        assert link.startswith(moto_server) and _signed_until(link) > datetime.now(UTC) > _signed_until(old)
        assert parse_qs(urlparse(link).query)["X-Amz-Expires"] == ["60"]  # presign_ttl: 1 minute
        got = httpx.get(link, timeout=30)  # no Label Studio credentials: the presigned link alone
        assert got.status_code == 200 and got.content == body


def test_document_root_is_fixed_at_first_start(tmp_path):
    """A new loopback server serves from the filesystem root (each project's storages gate what is served); a data
    dir started before the record keeps the imagery root's parent, since its tasks' URLs are relative to it."""
    from labeling.server import LabelStudioServer

    new = LabelStudioServer(tmp_path / "a" / "labelstudio", imagery_root=tmp_path / "img")
    assert new.document_root == Path("/")
    assert LabelStudioServer(tmp_path / "b", imagery_root=tmp_path / "img", host="0.0.0.0").document_root == tmp_path
    legacy = LabelStudioServer(tmp_path / "c", imagery_root=tmp_path / "img")
    (legacy.ls_data_dir).mkdir(parents=True)
    (legacy.ls_data_dir / "label_studio.sqlite3").write_bytes(b"")
    assert legacy.document_root == tmp_path
    legacy.document_root_file.write_text("/srv/data\n")
    assert legacy.document_root == Path("/srv/data")  # the record wins


def test_a_data_dir_anywhere_is_served_and_a_wrong_document_root_is_caught(labelstudio_server):
    """A second data dir outside every directory of the running server (a user's own imagery and database) pushes
    display images that Label Studio serves through the storage made for it; URLs made for another document root
    fail at connect with the reason, instead of broken images in the browser."""
    import tempfile

    from labeling.display import DisplayImages
    from labeling.storages import StorageError
    from storage.blobs import LocalBlobStore, sha256_hex
    from storage.settings import Settings

    ls = labelstudio_server
    d2 = Path(tempfile.mkdtemp(prefix="geolabel-elsewhere-"))  # not below the session's temp dirs
    try:
        img = d2 / "mine" / "SOAP_061.png"
        img.parent.mkdir()
        shutil.copy(AERIAL / "SOAP_061.png", img)
        sha = sha256_hex(img.read_bytes())
        settings = Settings(data_dir=d2, label_studio_url=ls.url)
        display = DisplayImages(settings, LocalBlobStore(d2 / "blobs"))
        assert display.prepare([(sha, str(img), "PNG")]) == []
        pid = _project(ls, "elsewhere")
        display.connect(ls.client, pid)
        r = httpx.get(ls.url + display(str(img)), headers={"Authorization": f"Token {ls.token}"}, timeout=30)
        assert r.status_code == 200 and r.content == img.read_bytes()
        (d2 / "labelstudio").mkdir()
        (d2 / "labelstudio" / "document_root").write_text(str(d2))  # URLs made for a server rooted at d2
        wrong = DisplayImages(settings, LocalBlobStore(d2 / "blobs"))
        wrong.prepare([(sha, str(img), "PNG")])
        with pytest.raises(StorageError, match="does not serve .*LOCAL_FILES_DOCUMENT_ROOT"):
            wrong.connect(ls.client, _project(ls, "wrong root"))
    finally:
        shutil.rmtree(d2, ignore_errors=True)
