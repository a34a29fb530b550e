"""``geolabel db``: migrate the database (Alembic) and show where it stands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DataDir, Json, print_json

db_app = typer.Typer(help="Database schema: upgrade, current revision, downgrade.", no_args_is_help=True)
app = typer.Typer()
app.add_typer(db_app, name="db")

Url = Annotated[
    str | None,
    typer.Option("--url", help="Database URL (default: the data dir's settings, GEOLABEL_DATABASE_URL).",
                 show_default=False),
]


def _url(url: str | None, data_dir: Path | None) -> str:
    if url:
        return url
    from storage.settings import Settings

    return Settings.load(**({"data_dir": str(data_dir)} if data_dir else {})).database_url


def _check(url: str) -> None:
    from storage import db

    engine = db.make_engine(url)
    try:
        db.check_connection(engine)
    finally:
        engine.dispose()


@db_app.command("upgrade")
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: Url = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Migrate the database up to REVISION (default: head)."""
    from storage import db

    target = _url(url, data_dir)
    _check(target)
    db.upgrade(target, revision)
    if as_json:
        print_json({"database": db.safe_url(target), "revision": db.current(target)})
        return
    typer.echo(f"{db.safe_url(target)}: at revision {db.current(target)}")


@db_app.command("current")
def current(url: Url = None, data_dir: DataDir = None, as_json: Json = False) -> None:
    """Print the database's revision and the newest one this code knows."""
    from storage import db

    target = _url(url, data_dir)
    rev = db.current(target)
    head = db.head_revision()
    state = "up to date" if rev == head else ("not migrated" if rev is None else "behind: run `geolabel db upgrade`")
    if as_json:
        print_json({"database": db.safe_url(target), "revision": rev, "head": head, "state": state})
        return
    typer.echo(f"{db.safe_url(target)}: revision {rev or '(none)'}; head {head} ({state})")


def _rows_line(rows: dict[str, int]) -> str:
    return ", ".join(f"{t} {n}" for t, n in rows.items() if n) or "no rows"


@db_app.command("downgrade", context_settings={"ignore_unknown_options": True})
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, e.g. -1 (one step) or base (drops every table).")],
    url: Url = None,
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: downgrading can drop tables and their data.")] = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Migrate the database down to REVISION; says how many rows the dropped tables held."""
    from storage import db

    target = _url(url, data_dir)
    _check(target)
    before = db.table_rows(target)
    if not yes:
        raise typer.BadParameter(
            f"downgrading can drop tables and their data (now: {_rows_line(before)}); pass --yes to confirm",
            param_hint="--yes",
        )
    db.downgrade(target, revision)
    after = db.table_rows(target)
    dropped = {t: n for t, n in before.items() if t not in after}
    rev = db.current(target)
    if as_json:
        print_json({"database": db.safe_url(target), "revision": rev, "dropped_tables": dropped,
                    "dropped_rows": sum(dropped.values())})
        return
    typer.echo(f"{db.safe_url(target)}: at revision {rev or '(none)'}; dropped {len(dropped)} table(s) holding "
               f"{sum(dropped.values())} row(s)" + (f" ({_rows_line(dropped)})" if any(dropped.values()) else ""))
