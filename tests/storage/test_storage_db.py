"""Engines, models, the item state machine, and Alembic migrations on SQLite and the live PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import db
from storage.models import (
    TRANSITIONS,
    Base,
    IllegalTransitionError,
    Image,
    Item,
    ItemStatus,
    check_transition,
    transition,
)


def test_sqlite_engine_pragmas(tmp_path):
    engine = db.make_engine(f"sqlite:///{tmp_path / 'sub' / 'dir' / 'g.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
        assert (tmp_path / "sub" / "dir" / "g.db").exists()
    finally:
        engine.dispose()


def test_url_handling():
    assert db.normalise_url("postgresql://u:p@h/d").drivername == "postgresql+psycopg"
    assert db.normalise_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    assert db.safe_url("postgresql://u:secretpw@h/d") == "postgresql://u:***@h/d"
    with pytest.raises(ValueError, match="unsupported database"):
        db.normalise_url("mysql://u@h/d")
    with pytest.raises(ValueError, match="not a database URL"):
        db.normalise_url("::::")


def test_unreachable_database_is_a_clear_error():
    engine = db.make_engine("postgresql://nobody:pw-not-shown@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    with pytest.raises(
        db.DatabaseError, match=r"cannot connect to postgresql\+psycopg://nobody:\*\*\*@127.0.0.1:1"
    ) as e:
        db.check_connection(engine)
    assert "pw-not-shown" not in str(e.value)


def test_foreign_keys_and_checks_enforced(session: Session):
    session.add(Item(image_id=12345, query="q"))
    with pytest.raises(sa.exc.IntegrityError):
        session.flush()
    session.rollback()
    session.add(Image(sha256="a" * 64, uri="x", width=0, height=4))
    with pytest.raises(sa.exc.IntegrityError):
        session.flush()
    session.rollback()
    im = Image(sha256="b" * 64, uri="x", width=4, height=4)
    session.add(im)
    session.flush()
    with pytest.raises(sa.exc.IntegrityError):
        session.execute(
            sa.insert(Item).values(
                image_id=im.id,
                query="q",
                level="L9",
                created_at=datetime.now(UTC),
                updated_at=datetime.now(UTC),
                status="new",
            )
        )
    session.rollback()


def test_timestamps_are_utc_aware(engine):
    local = timezone(timedelta(hours=5, minutes=30))
    with db.session_scope(engine) as s:
        s.add(
            Image(sha256="c" * 64, uri="x", width=2, height=2, created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=local))
        )
    with db.session_scope(engine) as s:
        got = s.scalars(sa.select(Image)).one().created_at
        assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
        assert got == datetime(2026, 1, 1, 21, 34, 5, tzinfo=UTC)
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), db.session_scope(engine) as s:
        s.add(Image(sha256="d" * 64, uri="x", width=2, height=2, created_at=datetime(2026, 1, 1)))


def test_session_scope_rolls_back(engine):
    with pytest.raises(RuntimeError), db.session_scope(engine) as s:
        s.add(Image(sha256="e" * 64, uri="x", width=2, height=2))
        s.flush()
        raise RuntimeError("boom")
    with db.session_scope(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Image)) == 0


def test_state_machine():
    item = Item(image_id=1, query="q", status=ItemStatus.NEW)
    for step in ("predicted", "in_review", "accepted", "in_review", "no_target", "in_review", "rejected"):
        transition(item, step)
        assert item.status == ItemStatus(step)
    transition(item, "rejected")  # staying put is a no-op
    with pytest.raises(IllegalTransitionError, match="cannot move rejected -> accepted"):
        transition(item, "accepted")
    with pytest.raises(IllegalTransitionError, match="unknown item status"):
        transition(item, "done")
    assert check_transition("new", "in_review") == ItemStatus.IN_REVIEW  # labelled from scratch
    illegal = [(a, b) for a in ItemStatus for b in ItemStatus if a != b and b not in TRANSITIONS[a]]
    for a, b in illegal:
        with pytest.raises(IllegalTransitionError):
            check_transition(a, b)
    assert (ItemStatus.PREDICTED, ItemStatus.NEW) in illegal and (ItemStatus.ACCEPTED, ItemStatus.REJECTED) in illegal


def _compare(url: str):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = db.make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = db.make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_round_trip_and_match_models(db_url):
    assert db.current(db_url) is None
    db.upgrade(db_url)
    head = db.head_revision()
    assert db.current(db_url) == head
    assert _tables(db_url) >= {t.name for t in Base.metadata.sorted_tables}
    assert _compare(db_url) == []  # autogenerate finds no difference between models and migrated schema
    db.downgrade(db_url, "base")
    assert db.current(db_url) is None
    assert _tables(db_url) <= {"alembic_version"}
    db.upgrade(db_url, "head")
    assert db.current(db_url) == head and _compare(db_url) == []
    db.upgrade(db_url)  # idempotent
    # the migrated schema works with the repository layer
    from storage.records import ImageRecord
    from tests.fixtures.storage import add_image

    engine = db.make_engine(db_url)
    try:
        with db.session_scope(engine) as s:
            assert add_image(s, ImageRecord("f" * 64, "x.png", 8, 8)) == 1
    finally:
        engine.dispose()


def test_cli_db_commands(db_url, capsys):
    from typer.testing import CliRunner

    from flows.cli_db import db_app

    runner = CliRunner()
    res = runner.invoke(db_app, ["current", "--url", db_url])
    assert res.exit_code == 0, res.output
    assert "revision (none)" in res.output and "not migrated" in res.output
    res = runner.invoke(db_app, ["upgrade", "--url", db_url])
    assert res.exit_code == 0, res.output
    assert f"at revision {db.head_revision()}" in res.output
    res = runner.invoke(db_app, ["current", "--url", db_url])
    assert "up to date" in res.output
    res = runner.invoke(db_app, ["downgrade", "base", "--url", db_url])
    assert res.exit_code != 0 and "--yes" in res.output
    res = runner.invoke(db_app, ["downgrade", "base", "--url", db_url, "--yes"])
    assert res.exit_code == 0 and "at revision (none)" in res.output
