"""``geolabel prefect start | stop | status``: the data dir's local Prefect server (:mod:`flows.prefect_server`).

Every loop command uses that server (started on first use) unless ``PREFECT_API_URL`` names another one; its run
history and artifacts live in ``<data_dir>/prefect/prefect.db`` and its UI at the URL ``status`` prints.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DataDir, Json, print_json

app = typer.Typer()
prefect_app = typer.Typer(help="The data dir's local Prefect server (run history, artifacts, UI).",
                          no_args_is_help=True)
app.add_typer(prefect_app, name="prefect")


def _server(data_dir: Path | None):  # -> flows.prefect_server.PrefectServer
    from flows.prefect_server import PrefectServer
    from flows.runtime import settings_from

    return PrefectServer.for_data_dir(settings_from({"data_dir": str(data_dir)} if data_dir else None).data_dir)


@prefect_app.command("start")
def start(
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait until its API answers.")] = 180.0,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Start the local Prefect server (or find it running) and print its UI URL."""
    _echo(_server(data_dir).start(timeout=timeout), as_json)


def _echo(st, as_json: bool) -> None:  # noqa: ANN001 - flows.prefect_server.PrefectStatus
    if as_json:
        print_json(asdict(st))
        return
    for line in st.lines():
        typer.echo(line)


@prefect_app.command("stop")
def stop(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Stop the local Prefect server (its process group); its database is kept."""
    stopped = _server(data_dir).stop()
    if as_json:
        print_json({"stopped": bool(stopped)})
        return
    typer.echo("stopped" if stopped else "not running")


@prefect_app.command("status")
def status(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Whether the local Prefect server runs, its UI and API URLs."""
    st = _server(data_dir).status()
    _echo(st, as_json)
    if not st.running:
        raise typer.Exit(1)
