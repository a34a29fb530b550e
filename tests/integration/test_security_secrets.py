"""Security: secrets stay secret, the webhook refuses strangers, SQL is never built from text (issue 9, part 4).

* webhook receiver on a real uvicorn: missing / wrong secret -> 401, oversized body (declared or streamed) -> 413,
  junk -> 400, and the handler is never reached by a refused call;
* tokens and passwords never appear in logs (caplog + captured stdout/stderr), reprs, Prefect flow-run parameters or
  logs, or the database, after a real push/sync cycle against Label Studio;
* Label Studio credentials file 0600 in a 0700 directory;
* SQL only through the ORM / bound parameters: a static scan of every module for SQL assembled from strings, and
  SQL-looking values through the queries that take user text.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import stat
import uuid
from pathlib import Path

import httpx
import pytest

from tests.fixtures.storage import add_image

ROOT = Path(__file__).resolve().parents[2]
SECRET = "whsec-" + uuid.uuid4().hex  # generated per run, not a real secret


# --- webhook ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def webhook():
    from labeling.sync import SyncReport
    from labeling.webhook import WebhookApp
    from tests.helpers.faults import ThreadedAsgi

    calls: list[dict] = []

    def handler(payload):
        calls.append(payload)
        return SyncReport()

    app = WebhookApp(handler, SECRET, max_body=4096)
    with ThreadedAsgi(app) as srv:
        yield srv.url, calls


def _event() -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "task": {"id": 1}, "annotation": {"id": 1}}


@pytest.mark.parametrize(
    "headers",
    [{}, {"X-Geolabel-Secret": "wrong-" + SECRET[6:]}, {"X-Geolabel-Secret": ""}, {"X-Geolabel-Secret": SECRET[:-1]},
     {"Authorization": f"Bearer {SECRET}"}],
    ids=["missing", "wrong", "empty", "prefix", "other-header"],
)
def test_webhook_rejects_missing_or_wrong_secret(webhook, headers, caplog):
    url, calls = webhook
    before = len(calls)
    caplog.set_level(logging.DEBUG)
    r = httpx.post(url + "/webhook", json=_event(), headers=headers)
    assert r.status_code == 401 and "X-Geolabel-Secret" in r.json()["error"]
    assert len(calls) == before  # nothing was applied
    assert SECRET not in caplog.text and SECRET not in r.text


def test_webhook_rejects_oversized_bodies_declared_and_streamed(webhook):
    url, calls = webhook
    before = len(calls)
    big = json.dumps({**_event(), "pad": "x" * 10_000}).encode()
    r = httpx.post(url + "/webhook", content=big, headers={"X-Geolabel-Secret": SECRET})
    assert r.status_code == 413
    # chunked, no Content-Length: caught while reading

    def gen():
        for _ in range(10):
            yield b"x" * 1024

    r = httpx.post(url + "/webhook", content=gen(), headers={"X-Geolabel-Secret": SECRET})
    assert r.status_code == 413
    r = httpx.post(url + "/webhook", content=b"[1, 2", headers={"X-Geolabel-Secret": SECRET})
    assert r.status_code == 400
    assert len(calls) == before
    r = httpx.post(url + "/webhook", json=_event(), headers={"X-Geolabel-Secret": SECRET})
    assert r.status_code == 200 and len(calls) == before + 1  # the right secret still works


def test_webhook_secret_must_be_long_and_is_not_in_repr():
    from labeling.sync import SyncReport
    from labeling.webhook import WebhookApp

    with pytest.raises(ValueError, match="at least 16"):
        WebhookApp(lambda p: SyncReport(), "short")
    assert SECRET not in repr(WebhookApp(lambda p: SyncReport(), SECRET))


# --- secrets in reprs and error messages ---------------------------------------------------------------------------


def test_settings_and_clients_never_show_secrets(monkeypatch):
    from labeling.client import LabelStudioClient
    from storage.settings import Settings

    pw = "pw-" + uuid.uuid4().hex
    s = Settings.load(database_url=f"postgresql+psycopg://geo:{pw}@db.example:5432/geo", data_dir="/tmp/x")
    assert pw not in repr(s) and pw not in str(s) and pw not in json.dumps(s.describe())
    tok = uuid.uuid4().hex
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", tok)
    assert tok not in repr(s.label_studio_token()) and tok not in str(s.label_studio_token())
    c = LabelStudioClient("http://127.0.0.1:1", tok)
    assert tok not in repr(c)
    c.close()
    with pytest.raises(TypeError):  # a SecretStr cannot be pickled into a Prefect result by accident
        __import__("pickle").dumps(s.label_studio_token())


def test_database_password_not_in_connection_errors(caplog):
    import sqlalchemy as sa

    from storage.db import make_engine

    pw = "pw-" + uuid.uuid4().hex
    caplog.set_level(logging.DEBUG)
    engine = make_engine(f"postgresql+psycopg://postgres:{pw}@127.0.0.1:9/test", poolclass=sa.pool.NullPool)
    with pytest.raises(sa.exc.OperationalError) as ei, engine.connect():
        pass
    assert pw not in str(ei.value) and pw not in repr(engine) and pw not in caplog.text


def test_label_studio_token_rejected_is_named_not_shown(labelstudio_server, caplog):
    from labeling.client import LabelStudioAuthError, LabelStudioClient

    caplog.set_level(logging.DEBUG)
    wrong = uuid.uuid4().hex
    c = LabelStudioClient(labelstudio_server.url, wrong, retries=1)
    with pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_USER_TOKEN") as ei:
        c.whoami()
    c.close()
    assert wrong not in str(ei.value) and wrong not in caplog.text


def test_credentials_file_is_private(labelstudio_server):
    srv = labelstudio_server.server
    assert stat.S_IMODE(os.stat(srv.credentials_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(srv.root).st_mode) == 0o700
    assert labelstudio_server.token not in srv.log_file.read_text(errors="replace") if srv.log_file.exists() else True


def test_secrets_absent_from_logs_prefect_parameters_and_database(
    prefect_harness, labelstudio_server, monkeypatch, tmp_path, caplog, capfd
):
    """A real ingest -> push -> sync on SQLite (the database-password case is above); the Label Studio token travels
    by env var only. Afterwards every place a secret could leak is searched for it."""
    import asyncio

    from prefect.client.orchestration import get_client

    from flows.ingest import ingest_flow
    from flows.labeling_flows import push_flow, sync_flow
    from flows.runtime import forget_runtimes

    token = labelstudio_server.token
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", token)
    caplog.set_level(logging.DEBUG)
    src = labelstudio_server.imagery_root / f"sec-{uuid.uuid4().hex[:6]}"
    src.mkdir()
    import numpy as np
    from PIL import Image as PILImage

    PILImage.fromarray(np.full((16, 16, 3), 99, np.uint8)).save(src / "a.png")
    q = tmp_path / "q.csv"
    q.write_text("image,query\na.png,the grey field\n")
    data_dir = tmp_path / "data"
    over = {"data_dir": str(data_dir), "label_studio_url": labelstudio_server.url}
    title = f"secrets {uuid.uuid4().hex[:6]}"
    ingest_flow(str(src), str(q), settings_overrides=over)
    push_flow("tiny", settings_overrides=over, model_version="no-predictions-yet", project_title=title)
    sync_flow(settings_overrides=over, project_title=title)
    forget_runtimes()

    out, err = capfd.readouterr()
    for text in (caplog.text, out, err):
        assert token not in text

    async def runs():
        async with get_client() as client:
            frs = await client.read_flow_runs()
            logs = await client.read_logs()
            return [fr.parameters for fr in frs], [lg.message for lg in logs]

    params, logs = asyncio.run(runs())
    assert params and token not in json.dumps(params, default=str)
    assert token not in "\n".join(logs)
    for f in data_dir.rglob("*"):  # database file, WAL, blobs
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f


# --- SQL only through the ORM / bound parameters ---------------------------------------------------------------------

_SQL_CALLS = {"text", "execute", "exec_driver_sql", "executescript"}


def _string_built(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return True
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format"


def test_no_sql_is_assembled_from_strings():
    allowed = {("storage/db.py", "PRAGMA busy_timeout")}  # an int constant of the module, not input
    offenders = []
    for pkg in ("storage", "flows", "labeling", "geoseg", "migrations"):
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not node.args:
                    continue
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in _SQL_CALLS and _string_built(node.args[0]):
                    src = ast.get_source_segment(path.read_text(encoding="utf-8"), node) or ""
                    rel = path.relative_to(ROOT).as_posix()
                    if not any(rel == f and tag in src for f, tag in allowed):
                        offenders.append(f"{rel}:{node.lineno}: {src[:100]}")
    assert not offenders, offenders


SQLISH = ["'; DROP TABLE images; --", "x' OR '1'='1", "\" OR 1=1 --", "Robert'); DELETE FROM items;--", "%' OR ''='"]


def test_sqlish_values_through_queries_and_filters(engine, session):
    import sqlalchemy as sa

    from storage import repo
    from storage.datasets.select import DatasetFilter, triplet_ids
    from storage.models import Image, Item
    from storage.records import ImageRecord, ItemRecord

    img = add_image(session, ImageRecord(sha256="a" * 64, uri="/x/" + SQLISH[0], width=4, height=4))
    ids = repo.upsert_items(session, [ItemRecord(image_id=img, query=q, domain="Urban") for q in SQLISH])
    session.commit()
    assert {q for (_, q) in ids} == set(SQLISH)
    assert session.scalar(sa.select(sa.func.count()).select_from(Item)) == len(SQLISH)
    assert session.scalar(sa.select(Image.uri)) == "/x/" + SQLISH[0]
    for bad in SQLISH:  # user text as filter values matches nothing and breaks nothing
        rows = list(session.scalars(triplet_ids(session, DatasetFilter(domains=(bad,)))))
        assert rows == []
    assert session.scalar(sa.select(sa.func.count()).select_from(Item)) == len(SQLISH)


# --- no SSRF through task data (ML backend image fetch) -----------------------------------------------------------


@pytest.fixture
def two_http_servers():
    """'ls' (Label Studio's address) and 'internal' (a service the task data must not reach), real HTTP servers;
    'ls' also has a /redirect that points at 'internal'."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    hits: list[str] = []

    def make(name, other):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802 (http.server API)
                hits.append(f"{name}{self.path}")
                if self.path.startswith("/redirect"):
                    self.send_response(302)
                    self.send_header("Location", other[0] + "/secret")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = f"{name}-bytes".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return H

    internal_url: list[str] = []
    ls = ThreadingHTTPServer(("127.0.0.1", 0), make("ls", internal_url))
    internal = ThreadingHTTPServer(("127.0.0.1", 0), make("internal", []))
    internal_url.append(f"http://127.0.0.1:{internal.server_address[1]}")
    for s in (ls, internal):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{ls.server_address[1]}", internal_url[0], hits
    finally:
        for s in (ls, internal):
            s.shutdown()
            s.server_close()


def test_ml_backend_fetches_task_images_only_from_label_studio_or_allowed_origins(two_http_servers):
    from labeling.ml_backend import GeoSegMLBackend, MLBackendConfig

    ls_url, internal_url, hits = two_http_servers
    b = GeoSegMLBackend(lambda: None, MLBackendConfig(label_studio_url=ls_url, label_studio_token="t" * 40))
    assert b.image_bytes("/data/local-files/?d=a.png") == b"ls-bytes"  # relative: Label Studio
    assert b.image_bytes(ls_url + "/data/upload/1/a.png") == b"ls-bytes"  # absolute, same origin
    for url in (internal_url + "/secret", "http://169.254.169.254/latest/meta-data/", "http://localhost:5432/"):
        with pytest.raises(ValueError, match="refusing to fetch the task image"):
            b.image_bytes(url)
    with pytest.raises(ValueError, match="HTTP 302"):  # a redirect is not followed off the allowed origin
        b.image_bytes(ls_url + "/redirect")
    for url in ("file:///etc/passwd", "gopher://127.0.0.1/", "ftp://x/y"):
        with pytest.raises(ValueError, match="neither http"):
            b.image_bytes(url)
    assert not any(h.startswith("internal") for h in hits)
    cfg = MLBackendConfig(label_studio_url=ls_url, allowed_image_origins=(internal_url,))
    allowed = GeoSegMLBackend(lambda: None, cfg)
    assert allowed.image_bytes(internal_url + "/x.png") == b"internal-bytes"  # opted in by configuration
