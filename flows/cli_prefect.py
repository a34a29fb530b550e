"""``geolabel prefect start | stop | status``: the data dir's local Prefect server (:mod:`flows.prefect_server`).

Every loop command uses that server (started on first use) unless ``PREFECT_API_URL`` names another one; its run
history and artifacts live in ``<data_dir>/prefect/prefect.db`` and its UI at the URL ``status`` prints.
"""

from __future__ import annotations

from pathlib import Path

import typer

prefect_app = typer.Typer(help="The data dir's local Prefect server (run history, artifacts, UI).",
                          no_args_is_help=True)
DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: GEOLABEL_DATA_DIR or ./.geolabel).")


def _server(data_dir: Path | None):  # -> flows.prefect_server.PrefectServer
    from flows.prefect_server import PrefectServer
    from flows.runtime import settings_from

    return PrefectServer.for_data_dir(settings_from({"data_dir": str(data_dir)} if data_dir else None).data_dir)


@prefect_app.command("start")
def start(
    timeout: float = typer.Option(180.0, help="Seconds to wait until its API answers."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Start the local Prefect server (or find it running) and print its UI URL."""
    for line in _server(data_dir).start(timeout=timeout).lines():
        typer.echo(line)


@prefect_app.command("stop")
def stop(data_dir: Path | None = DATA_DIR) -> None:
    """Stop the local Prefect server (its process group); its database is kept."""
    typer.echo("stopped" if _server(data_dir).stop() else "not running")


@prefect_app.command("status")
def status(data_dir: Path | None = DATA_DIR) -> None:
    """Whether the local Prefect server runs, its UI and API URLs."""
    st = _server(data_dir).status()
    for line in st.lines():
        typer.echo(line)
    if not st.running:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(prefect_app, name="prefect")
