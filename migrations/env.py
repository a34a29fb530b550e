"""Alembic environment: the URL comes from ``config.attributes["database_url"]`` (set by storage.db.alembic_config)
or, for the plain ``alembic`` command, from ``GEOLABEL_DATABASE_URL`` / the settings default."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from storage.db import make_engine
from storage.models import Base

config = context.config
#: PostgreSQL advisory lock key held by a migration run (any fixed 64-bit number; "geolabel" in ASCII).
MIGRATION_LOCK_ID = 0x67656F6C6162656C
target_metadata = Base.metadata


def _url():
    url = config.attributes.get("database_url")
    if url is None:
        from storage.settings import Settings

        url = Settings.load().database_url
    return url


def _configure(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    from storage.db import normalise_url

    context.configure(
        url=normalise_url(_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run(conn) -> None:  # noqa: ANN001
    """Run the migrations on ``conn``. On SQLite, foreign keys are off meanwhile: batch mode rebuilds a table by
    dropping it, and with foreign keys on that DROP would cascade into the rows referencing it (predictions of
    items...). They are checked (``PRAGMA foreign_key_check``) before the transaction commits, and switched back on.
    The whole run is one transaction on both dialects (SQLite: an explicit ``BEGIN IMMEDIATE``, which also makes a
    second process wait for the first), so a migration that fails or is killed halfway leaves the schema as it was."""
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # outside a transaction: SQLite ignores it inside one
        conn.commit()
    try:
        _configure(conn)
        with context.begin_transaction():
            if conn.dialect.name == "postgresql":  # two processes upgrading at once: the second waits, then sees head
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_ID})
            if sqlite:  # pysqlite opens a transaction only before DML: without this, DDL before it would autocommit
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # and a failed or killed migration would leave half a table
            context.run_migrations()
            if sqlite:
                bad = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if bad:
                    raise RuntimeError(f"migration left {len(bad)} dangling foreign key(s), e.g. {bad[:3]}")
    finally:
        if sqlite:
            conn.commit()
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
