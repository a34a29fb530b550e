"""``geolabel labelstudio``: a local Label Studio server (start / stop / status) and the webhook receiver.

The server's files live under ``<data_dir>/labelstudio`` (``labeling.server``); every other command finds its URL
and token there (``flows.runtime.with_local_label_studio``, ``labeling.server.token_for``), so nothing needs
exporting. An explicit ``GEOLABEL_LABEL_STUDIO_URL`` (and the token variable) still wins.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import DataDir, Json, Project, print_json, settings_for

ls_app = typer.Typer(help="Local Label Studio server and the annotation webhook receiver.", no_args_is_help=True)
app = typer.Typer()
app.add_typer(ls_app, name="labelstudio")


def _server(data_dir: Path | None, port: int | None = None, imagery: str | None = None) -> tuple[Any, Any]:
    """The local server of the data dir (-> labeling.server.LabelStudioServer, Settings)."""
    from urllib.parse import urlparse

    from labeling.server import LabelStudioServer

    settings = settings_for(data_dir)
    parsed = urlparse(settings.label_studio_url)
    kw = {"imagery_root": imagery} if imagery else {}
    host = parsed.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost"):
        raise typer.BadParameter(
            f"GEOLABEL_LABEL_STUDIO_URL points at {host}: the local server only listens on 127.0.0.1"
        )
    return LabelStudioServer.from_settings(settings, port=port or parsed.port or 8080, **kw), settings


def _status_dict(st: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(st)  # no secret in it: the token's variable name and file only


@ls_app.command("start")
def start(
    port: Annotated[
        int | None,
        typer.Option("--port", help="Port (default: the one in GEOLABEL_LABEL_STUDIO_URL, else 8080).",
                     show_default=False),
    ] = None,
    imagery: Annotated[
        str | None,
        typer.Option("--imagery", help="Local-files root (default: the first GEOLABEL_IMAGERY_ROOTS, else the data "
                                       "dir).", show_default=False),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait until the server is healthy.")] = 300.0,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Start Label Studio from .venv-ls (data under <data_dir>/labelstudio) and wait until it is healthy."""
    srv, _settings = _server(data_dir, port, imagery)
    typer.echo(f"starting Label Studio in {srv.root} (first start runs migrations: can take minutes)…", err=True)
    st = srv.start(timeout=timeout)
    if as_json:
        print_json(_status_dict(st))
        return
    for line in st.lines():
        typer.echo(line)
    typer.echo("the other geolabel commands on this data dir find it (URL and token) by themselves")


@ls_app.command("stop")
def stop(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Stop the server started by `geolabel labelstudio start` (or by `geolabel demo`)."""
    srv, _ = _server(data_dir)
    stopped = srv.stop()
    if as_json:
        print_json({"stopped": stopped})
        return
    typer.echo("stopped" if stopped else "not running")


@ls_app.command("status")
def status(data_dir: DataDir = None, as_json: Json = False) -> None:
    """The Label Studio the other commands use: reachable, version, whether the token works (never the token);
    and the local server of this data dir."""
    srv, settings = _server(data_dir)
    from labeling.server import probe_label_studio

    used = probe_label_studio(settings)
    local = srv.status()
    if as_json:
        print_json({"used": used, "local_server": _status_dict(local)})
    else:
        if used["reachable"]:
            token = {True: "token works", False: "token REJECTED", None: used.get("detail", "token not checked")}
            version = used["version"] or "?"
            typer.echo(f"commands use Label Studio {version} at {used['url']}: {token[used['token_ok']]}")
        else:
            typer.echo(f"commands use {used['url']}: not reachable ({used.get('detail', 'unhealthy')})")
        for line in local.lines():
            typer.echo(f"local server: {line}")
    if not (used["reachable"] and used["token_ok"]):
        raise typer.Exit(1)


@ls_app.command("webhook")
def webhook(
    project: Project = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8765,
    public_url: Annotated[
        str | None,
        typer.Option("--public-url", help="URL Label Studio should call (default http://HOST:PORT/webhook).",
                     show_default=False),
    ] = None,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Create/update the project's webhook in Label Studio.")
    ] = True,
    data_dir: DataDir = None,
) -> None:
    """Run the webhook receiver (ASGI, uvicorn); the shared secret comes from GEOLABEL_WEBHOOK_SECRET."""
    import uvicorn

    from flows.labeling_flows import label_studio_client, review_project
    from flows.runtime import open_runtime
    from labeling.webhook import make_webhook_app, register_webhook

    settings = settings_for(data_dir)
    secret = settings.webhook_secret()
    if not secret:
        raise typer.BadParameter(
            f"set the shared secret in the environment variable {settings.webhook_secret_env} (16+ characters)"
        )
    rt = open_runtime(settings, init_schema=False)  # a receiver never migrates: `geolabel db upgrade` does
    with label_studio_client(settings) as client, rt.session() as session:
        handle = review_project(client, session, settings, project)
        url = public_url or f"http://{host}:{port}/webhook"
        if register:
            register_webhook(client, handle, url, secret.get_secret_value())
            typer.echo(f"webhook registered for project {handle.ls_project_id}: {url}")
    asgi = make_webhook_app(rt.engine, rt.blobs, handle, secret.get_secret_value())
    typer.echo(f"listening on http://{host}:{port}/webhook (secret from {settings.webhook_secret_env})")
    uvicorn.run(asgi, host=host, port=port, log_level="info")
