"""Storage faults (issue 9, part 3) during a real ``ingest_flow`` (Prefect test harness):

* PostgreSQL: our own session's backend is killed mid-transaction with ``pg_terminate_backend`` (the server we do
  not own keeps running); once -> the Prefect task retry completes the ingest; every time -> a clear error, and after
  recovery a re-run completes. Exact row counts, nothing lost, nothing twice.
* S3: the blob store talks to the session's real moto_server through a TCP relay that is stopped mid-upload (moto
  keeps its objects in memory, so the relay -- not a moto restart -- plays "S3 went away"); botocore's retries with
  backoff, then Prefect's, then a clear error; relay back -> a re-run completes and every image blob is there.
"""

from __future__ import annotations

import io
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image as PILImage

from tests.helpers.faults import TcpProxy

pytestmark = [pytest.mark.slow]
N_IMAGES = 6


def _imagery(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "imagery"
    src.mkdir()
    lines = ["image,query"]
    for i in range(N_IMAGES):
        buf = io.BytesIO()
        PILImage.fromarray(np.full((12, 12, 3), 10 * i + 5, np.uint8)).save(buf, format="PNG")
        (src / f"tile_{i}.png").write_bytes(buf.getvalue())
        lines += [f"tile_{i}.png,the roof number {i}", f"tile_{i}.png,the road number {i}"]
    q = tmp_path / "queries.csv"
    q.write_text("\n".join(lines) + "\n")
    return src, q


def _counts(rt) -> tuple[int, int, int, int]:
    from storage.models import Image, Item

    pairs = sa.select(Item.image_id, Item.query).distinct().subquery()
    with rt.session() as s:
        return (
            s.scalar(sa.select(sa.func.count()).select_from(Image)),
            s.scalar(sa.select(sa.func.count(sa.distinct(Image.sha256)))),
            s.scalar(sa.select(sa.func.count()).select_from(Item)),
            s.scalar(sa.select(sa.func.count()).select_from(pairs)),
        )


# --- PostgreSQL ------------------------------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("persistent", [False, True], ids=["once", "every-time"])
def test_postgres_connection_killed_mid_transaction(prefect_harness, pg_schema_url, tmp_path, persistent):
    from flows.ingest import ingest_flow
    from flows.runtime import forget_runtimes, open_runtime, settings_from
    from storage.db import make_engine

    forget_runtimes()
    src, q = _imagery(tmp_path)
    over = {"data_dir": str(tmp_path / "data"), "database_url": pg_schema_url}
    rt = open_runtime(settings_from(over))
    admin = make_engine(pg_schema_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    killed: list[int] = []

    def kill_mid_transaction(conn, cursor, statement, params, context, executemany):
        # inside the items upsert's transaction (the images of the batch are already written in it)
        if statement.lstrip().upper().startswith("INSERT INTO ITEM ") and (persistent or not killed):
            pid = conn.connection.dbapi_connection.info.backend_pid
            with admin.connect() as a:
                assert a.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            killed.append(pid)

    sa.event.listen(rt.engine, "before_cursor_execute", kill_mid_transaction)
    try:
        if persistent:
            with pytest.raises(sa.exc.OperationalError, match="terminat|closed the connection"):
                ingest_flow(str(src), str(q), settings_overrides=over)
            assert len(killed) == 3  # the task ran 1 + 2 retries, each killed
            assert _counts(rt)[2] == 0  # no item half-written
        else:
            rep = ingest_flow(str(src), str(q), settings_overrides=over)
            assert len(killed) == 1 and rep.items_new == 2 * N_IMAGES and not rep.issues
    finally:
        sa.event.remove(rt.engine, "before_cursor_execute", kill_mid_transaction)
    rep = ingest_flow(str(src), str(q), settings_overrides=over)  # recovered: a plain re-run
    assert not rep.issues
    assert _counts(rt) == (N_IMAGES, N_IMAGES, 2 * N_IMAGES, 2 * N_IMAGES)
    admin.dispose()
    forget_runtimes()


# --- S3 (moto_server) ------------------------------------------------------------------------------------------------


def test_s3_gone_mid_upload_then_back(prefect_harness, moto_server, s3_client, s3_bucket, tmp_path, monkeypatch):
    from flows.ingest import ingest_flow
    from flows.runtime import forget_runtimes, open_runtime, settings_from
    from storage.models import Image
    from tests.fixtures.storage import MOTO_CREDENTIALS, MOTO_REGION

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", MOTO_CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", MOTO_CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", MOTO_REGION)
    forget_runtimes()
    target = urlparse(moto_server)
    relay = TcpProxy(target.hostname, target.port)
    relay.start()
    src, q = _imagery(tmp_path)
    over = {
        "data_dir": str(tmp_path / "data"),
        "blob_url": f"s3://{s3_bucket}/blobs",
        "s3_endpoint_url": f"http://127.0.0.1:{relay.port}",
    }
    rt = open_runtime(settings_from(over))
    puts: list[str] = []

    def stop_on_third_put(**kw):
        puts.append(kw.get("request").url if kw.get("request") is not None else "?")
        if len(puts) == 3:
            relay.stop()  # S3 goes away in the middle of the upload

    rt.blobs.client.meta.events.register("before-send.s3.PutObject", stop_on_third_put)
    try:
        with pytest.raises(Exception, match="Could not connect to the endpoint URL") as ei:
            ingest_flow(str(src), str(q), settings_overrides=over, batch_size=2)
        assert f"127.0.0.1:{relay.port}" in str(ei.value)
        imgs, _, items, _ = _counts(rt)
        assert imgs <= 2 and items == 0  # at most one batch (2 images + blobs) committed before the fault
    finally:
        rt.blobs.client.meta.events.unregister("before-send.s3.PutObject", stop_on_third_put)
    relay.start()  # S3 is back
    rep = ingest_flow(str(src), str(q), settings_overrides=over, batch_size=2)
    assert not rep.issues and rep.items_new == 2 * N_IMAGES
    assert _counts(rt) == (N_IMAGES, N_IMAGES, 2 * N_IMAGES, 2 * N_IMAGES)
    with rt.session() as s:
        shas = list(s.scalars(sa.select(Image.sha256)))
    assert all(rt.blobs.exists(sha) for sha in shas)  # no image row without its blob
    for sha in shas:
        rt.blobs.get(sha)  # verified read (hash checked)
    relay.stop()
    forget_runtimes()
