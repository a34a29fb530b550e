"""``geolabel db``: migrate the database (Alembic) and show where it stands."""

from __future__ import annotations

import typer

db_app = typer.Typer(help="Database schema: upgrade, current revision, downgrade.", no_args_is_help=True)

_URL_OPTION = typer.Option(None, "--url", help="Database URL (default: GEOLABEL_DATABASE_URL or the settings).")


def _url(url: str | None) -> str:
    if url:
        return url
    from storage.settings import Settings

    return Settings.load().database_url


def _check(url: str) -> None:
    from storage import db

    engine = db.make_engine(url)
    try:
        db.check_connection(engine)
    finally:
        engine.dispose()


@db_app.command("upgrade")
def upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    url: str | None = _URL_OPTION,
) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from storage import db

    target = _url(url)
    _check(target)
    db.upgrade(target, revision)
    typer.echo(f"{db.safe_url(target)}: at revision {db.current(target)}")


@db_app.command("current")
def current(url: str | None = _URL_OPTION) -> None:
    """Print the database's revision and the newest one this code knows."""
    from storage import db

    target = _url(url)
    rev = db.current(target)
    head = db.head_revision()
    state = "up to date" if rev == head else ("not migrated" if rev is None else "behind: run `geolabel db upgrade`")
    typer.echo(f"{db.safe_url(target)}: revision {rev or '(none)'}; head {head} ({state})")


@db_app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. -1 or base (base drops every table)."),
    url: str | None = _URL_OPTION,
    yes: bool = typer.Option(False, "--yes", help="Confirm: downgrading can drop tables and their data."),
) -> None:
    """Migrate the database down to REVISION."""
    from storage import db

    if not yes:
        raise typer.BadParameter("downgrading can drop tables and data; pass --yes to confirm", param_hint="--yes")
    target = _url(url)
    _check(target)
    db.downgrade(target, revision)
    typer.echo(f"{db.safe_url(target)}: at revision {db.current(target) or '(none)'}")


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")
