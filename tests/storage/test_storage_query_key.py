"""Item identity by query key: migration 0002 merges the duplicates the new rule makes (SQLite and PostgreSQL), and
the same query typed with other case/spacing/Unicode form through CSV, JSONL and intake is one item."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import sqlalchemy as sa

from storage import db, repo
from storage.models import Item
from storage.records import ImageRecord, ItemRecord

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _insert(conn, table: str, **values) -> int:
    t = sa.Table(table, sa.MetaData(), autoload_with=conn)
    return conn.execute(t.insert().values(**values).returning(t.c.id)).scalar_one()


def _item(conn, image_id: int, query: str, minutes: int, status: str = "new", level=None, domain=None) -> int:
    ts = (T0 + timedelta(minutes=minutes)).replace(tzinfo=None)
    return _insert(conn, "item", image_id=image_id, query=query, status=status, level=level, domain=domain,
                   created_at=ts, updated_at=ts)


def _pred(conn, item_id: int, mv: str, error: str | None = None) -> int:
    return _insert(conn, "prediction", item_id=item_id, model_version=mv, error=error, mask_sha256=None if error
                   else "a" * 64, created_at=T0.replace(tzinfo=None))


def test_upgrade_merges_items_the_query_key_joins(db_url, caplog):
    db.upgrade(db_url, "0001")
    engine = db.make_engine(db_url)
    naive = T0.replace(tzinfo=None)
    try:
        with engine.begin() as conn:
            img = _insert(conn, "image", sha256="1" * 64, uri="/a.png", width=8, height=8, bands=3, dtype="uint8",
                          created_at=naive)
            img2 = _insert(conn, "image", sha256="2" * 64, uri="/b.png", width=8, height=8, bands=3, dtype="uint8",
                           created_at=naive)
            keep = _item(conn, img, "Red roof", 0, "in_review", domain="Urban")
            dup = _item(conn, img, "red  roof", 5, "accepted", level="L2")
            dup2 = _item(conn, img, "ＲＥＤ ROOF", 9)  # fullwidth letters: NFKC makes them ASCII
            other = _item(conn, img, "blue roof", 1)
            elsewhere = _item(conn, img2, "red roof", 2)
            failed_a = _pred(conn, keep, "mv-a", error="RuntimeError: boom")
            ok_a = _pred(conn, dup, "mv-a")
            b_keep, b_dup = _pred(conn, dup, "mv-b"), _pred(conn, dup2, "mv-b")
            p1 = _insert(conn, "label_project", label_studio_url="http://ls", ls_project_id=1, created_at=naive)
            p2 = _insert(conn, "label_project", label_studio_url="http://ls", ls_project_id=2, created_at=naive)
            t_keep = _insert(conn, "label_task", label_project_id=p1, item_id=keep, ls_task_id=10,
                             prediction_id=failed_a, pushed_at=naive)
            t_dup = _insert(conn, "label_task", label_project_id=p1, item_id=dup, ls_task_id=11, prediction_id=ok_a,
                            pushed_at=naive)
            t_other_project = _insert(conn, "label_task", label_project_id=p2, item_id=dup2, ls_task_id=20,
                                      prediction_id=b_dup, pushed_at=naive)
            ann = _insert(conn, "annotation", ls_annotation_id=100, label_task_id=t_dup, item_id=dup,
                          verdict="accept", mask_sha256="b" * 64, created_at=naive, updated_at=naive,
                          retracted=False, synced_at=naive)
            trip = _insert(conn, "triplet", annotation_id=ann, item_id=dup, image_id=img, query="red  roof",
                           mask_sha256="b" * 64, withdrawn=False, created_at=naive)
        with caplog.at_level(logging.WARNING, logger="geolabel.migrations"):
            db.upgrade(db_url)
        log = caplog.text
        assert f"item {keep} 'Red roof'" in log and f"absorbed item(s) {dup} 'red  roof', {dup2}" in log, log
        assert f"prediction {failed_a} (mv-a) dropped for {ok_a}" in log and "Label Studio task 11" in log, log
        assert "2 duplicate item(s) merged into 1 item(s)" in log

        md = sa.MetaData()
        md.reflect(engine)
        item, pred, task, annotation, triplet = (md.tables[n] for n in
                                                  ("item", "prediction", "label_task", "annotation", "triplet"))
        with engine.connect() as conn:
            items = {r.id: r for r in conn.execute(sa.select(item))}
            assert set(items) == {keep, other, elsewhere}  # one item per (image, key); other images untouched
            survivor = items[keep]
            assert survivor.query_key == "red roof" and survivor.query == "Red roof"
            assert (survivor.status, survivor.level, survivor.domain) == ("accepted", "L2", "Urban")
            preds = {(r.model_version, r.id) for r in conn.execute(sa.select(pred).where(pred.c.item_id == keep))}
            assert preds == {("mv-a", ok_a), ("mv-b", b_keep)}  # the failed one gave way; one per model version
            assert conn.execute(sa.select(sa.func.count()).select_from(pred)).scalar_one() == 2
            tasks = {r.id: r for r in conn.execute(sa.select(task))}
            assert set(tasks) == {t_keep, t_other_project} and {t.item_id for t in tasks.values()} == {keep}
            assert tasks[t_keep].prediction_id == ok_a  # re-pointed from the dropped failed prediction
            assert tasks[t_other_project].prediction_id == b_keep  # its prediction b_dup gave way to b_keep
            a = conn.execute(sa.select(annotation)).one()
            assert (a.id, a.item_id, a.label_task_id) == (ann, keep, t_keep)
            assert conn.execute(sa.select(triplet.c.id, triplet.c.item_id)).one() == (trip, keep)
        with db.session_scope(engine) as s:  # the new key is the upsert key
            ids = repo.upsert_items(s, [ItemRecord(img, " RED\u00a0roof "), ItemRecord(img, "a new one")])
            assert ids[(img, "RED roof")] == keep and ids[(img, "a new one")] not in items
        db.downgrade(db_url, "0001")  # reversible (merged items stay merged)
        db.upgrade(db_url)
    finally:
        engine.dispose()


def test_same_query_through_csv_jsonl_and_intake_is_one_item(engine, tmp_path):
    from labeling.intake import intake_result, parse_intake_result
    from storage.ingest import register_items
    from storage.queries_file import parse_queries

    store = SimpleNamespace(session=lambda: db.session_scope(engine))
    with db.session_scope(engine) as s:
        img = repo.upsert_images(s, [ImageRecord(sha256="c" * 64, uri="/a.png", width=4, height=4)])["c" * 64]
    csv_rows, csv_issues = parse_queries("image,query,level,domain\na.png,Red Roof,l1,urban\n", name="q.csv")
    jsonl_rows, jsonl_issues = parse_queries('{"image": "a.png", "query": "  red\\t\\troof "}\n', name="q.jsonl")
    assert not csv_issues and not jsonl_issues
    assert (csv_rows[0].level, csv_rows[0].domain) == ("L1", "Urban")
    first = register_items(store, [(img, csv_rows[0])])
    again = register_items(store, [(img, jsonl_rows[0])])
    assert first[0][1] == again[0][1] and first[0][2] is True and again[0][2] is False
    # intake: the annotator typed it with fullwidth letters and a no-break space; the pull's storage lookups
    (intake_q,) = parse_intake_result(intake_result(["ＲＥＤ\u00a0roof"]))
    with db.session_scope(engine) as s:
        existing = repo.items_on_images(s, [img])
        assert ItemRecord(img, intake_q.query).query_key in {k for _, k in existing} and len(existing) == 1
        assert repo.upsert_items(s, [ItemRecord(img, intake_q.query)])[(img, intake_q.query)] == first[0][1]
        assert repo.count_rows(s, Item) == 1
    rows, issues = parse_queries("image,query\na.png,Red Roof\na.png,red  ROOF\n", name="dup.csv")
    assert len(rows) == 1 and issues[0].message == "duplicate of line 2 (same image and query)"
    with pytest.raises(ValueError, match="domain must be one of Urban, Rural, Traffic, Nature"):
        ItemRecord(img, "x", domain="Ocean")


def _upgrade(url: str) -> str | None:
    try:
        db.upgrade(url)
    except Exception as exc:  # noqa: BLE001 - reported to the parent process
        return f"{type(exc).__name__}: {exc}"[:300]
    return None


@pytest.mark.postgres
def test_concurrent_upgrades_on_postgresql_serialise(pg_schema_url):
    """Runtimes upgrade the schema when they open: three processes at once on a fresh database all succeed (an
    advisory lock in migrations/env.py; without it the losers fail on the alembic_version table)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(3) as pool:
        errors = [e for e in pool.map(_upgrade, [pg_schema_url] * 3) if e]
    assert errors == [] and db.current(pg_schema_url) == db.head_revision()


def test_failed_upgrade_leaves_the_schema_as_it_was(db_url, monkeypatch):
    """0002 fails halfway (after the item table was rebuilt with the new column): nothing of it stays."""
    import geoseg.vocabulary

    db.upgrade(db_url, "0001")
    engine = db.make_engine(db_url)
    try:
        with engine.begin() as conn:
            img = _insert(conn, "image", sha256="3" * 64, uri="/c.png", width=8, height=8, bands=3, dtype="uint8",
                          created_at=T0.replace(tzinfo=None))
            _item(conn, img, "a roof", 0)

        def broken(text):
            raise RuntimeError("simulated crash during the backfill")

        monkeypatch.setattr(geoseg.vocabulary, "query_key", broken)
        with pytest.raises(RuntimeError, match="simulated crash"):
            db.upgrade(db_url)
        assert db.current(db_url) == "0001"
        insp = sa.inspect(engine)
        assert "query_key" not in {c["name"] for c in insp.get_columns("item")}
        assert not [t for t in insp.get_table_names() if t.startswith("_alembic_tmp")]
        monkeypatch.undo()
        db.upgrade(db_url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT query, query_key FROM item")).one() == ("a roof", "a roof")
    finally:
        engine.dispose()
