"""Engines, sessions and migrations.

* SQLite (the default: ``<data_dir>/geolabel.db``): WAL journal, foreign keys on, a busy timeout so that a second
  writer waits instead of failing at once.
* PostgreSQL by URL (``postgresql://…`` is read as psycopg 3, ``postgresql+psycopg://…``).

Schema changes go through Alembic (``migrations/``): :func:`upgrade`, :func:`downgrade`, :func:`current`.
:func:`create_all` builds the schema straight from the models (tests, throwaway databases).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session

from storage.models import Base

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseError(RuntimeError):
    """The database cannot be reached or used; the message says which URL (password masked) and why."""


def default_database_url(data_dir: str | Path) -> str:
    return f"sqlite:///{(Path(data_dir).expanduser().resolve() / 'geolabel.db').as_posix()}"


def normalise_url(url: str | sa.URL) -> sa.URL:
    """Parse ``url``; ``postgresql://`` / ``postgres://`` become psycopg 3 URLs. Raises ValueError on garbage."""
    try:
        u = make_url(str(url)) if not isinstance(url, sa.URL) else url
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"not a database URL: {safe_url(str(url))!r} ({exc})") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database {u.get_backend_name()!r}: use sqlite:/// or postgresql://")
    return u


def safe_url(url: str | sa.URL) -> str:
    """The URL with any password masked, for logs and error messages."""
    try:
        u = url if isinstance(url, sa.URL) else make_url(str(url))
    except Exception:
        return "<unparseable database URL>"
    return u.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API connection
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
    finally:
        cur.close()


def make_engine(url: str | sa.URL, **kwargs) -> Engine:
    """An engine for ``url``: SQLite file (parent directory created; WAL, FKs on) or PostgreSQL via psycopg 3."""
    u = normalise_url(url)
    if u.get_backend_name() == "sqlite":
        db = u.database
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {}).setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = sa.create_engine(u, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    else:
        kwargs.setdefault("pool_pre_ping", True)
        engine = sa.create_engine(u, **kwargs)
    return engine


def check_connection(engine: Engine) -> None:
    """Open one connection; raise :class:`DatabaseError` with a clear message when the database is unreachable."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseError(f"cannot connect to {safe_url(engine.url)}: {reason}") from None


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session committed on success and rolled back (then re-raised) on any error."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def create_all(engine: Engine) -> None:
    """Create every table from the models (tests and throwaway databases; real databases use :func:`upgrade`)."""
    Base.metadata.create_all(engine)


def drop_all(engine: Engine) -> None:
    Base.metadata.drop_all(engine)


# --- Alembic -------------------------------------------------------------------------------------------------------


def alembic_config(url: str | sa.URL):  # -> alembic.config.Config
    """An Alembic config for ``url`` that works from the installed package (no alembic.ini in the cwd needed)."""
    from alembic.config import Config

    import migrations

    # __path__ rather than __file__: an editable install made before migrations/ had an __init__ sees a namespace
    dirs = [Path(p) for p in getattr(migrations, "__path__", []) if (Path(p) / "env.py").is_file()]
    if not dirs:
        raise DatabaseError("the migrations package has no env.py: is geolabel installed completely?")
    pkg_dir = dirs[0].resolve()
    cfg = Config(str(pkg_dir / "alembic.ini"))
    cfg.set_main_option("script_location", str(pkg_dir))
    # The URL goes through attributes, not the ini (ConfigParser would choke on '%' in passwords).
    cfg.attributes["database_url"] = normalise_url(url)
    return cfg


def upgrade(url: str | sa.URL, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the newest)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | sa.URL, revision: str = "-1") -> None:
    """Migrate down to ``revision`` (``base`` removes every table)."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def current(url: str | sa.URL) -> str | None:
    """The revision the database is at (None for an empty, unmigrated database)."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        check_connection(engine)
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def table_rows(url: str | sa.URL) -> dict[str, int]:
    """Rows per table of the database at ``url`` (``alembic_version`` left out): what a downgrade may drop."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            names = [t for t in sa.inspect(conn).get_table_names() if t != "alembic_version"]
            return {t: int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(t))).scalar_one())
                    for t in sorted(names)}
    finally:
        engine.dispose()
