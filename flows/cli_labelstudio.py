"""``geolabel labelstudio``: a local Label Studio server (start / stop / status) and the webhook receiver."""

from __future__ import annotations

from pathlib import Path

import typer

ls_app = typer.Typer(help="Local Label Studio server and the annotation webhook receiver.", no_args_is_help=True)


DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: GEOLABEL_DATA_DIR or ./.geolabel).")


def _settings(data_dir: Path | None):  # -> storage.settings.Settings
    from flows.runtime import settings_from

    return settings_from({"data_dir": str(data_dir)} if data_dir else None)


def _server(port: int | None = None, imagery: str | None = None, data_dir: Path | None = None):
    """The local server for the settings (-> labeling.server.LabelStudioServer, Settings)."""
    from urllib.parse import urlparse

    from labeling.server import LabelStudioServer

    settings = _settings(data_dir)
    parsed = urlparse(settings.label_studio_url)
    kw = {}
    if imagery:
        kw["imagery_root"] = imagery
    host = parsed.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost"):
        raise typer.BadParameter(
            f"GEOLABEL_LABEL_STUDIO_URL points at {host}: the local server only listens on 127.0.0.1"
        )
    return LabelStudioServer.from_settings(settings, port=port or parsed.port or 8080, **kw), settings


@ls_app.command("start")
def start(
    port: int | None = typer.Option(None, help="Port (default: the one in GEOLABEL_LABEL_STUDIO_URL, else 8080)."),
    imagery: str | None = typer.Option(None, help="Local-files root (default: the first GEOLABEL_IMAGERY_ROOTS)."),
    timeout: float = typer.Option(300.0, help="Seconds to wait until the server is healthy."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Start Label Studio from .venv-ls (data under <data_dir>/labelstudio) and wait until it is healthy."""
    srv, settings = _server(port, imagery, data_dir)
    typer.echo(f"starting Label Studio in {srv.root} (first start runs migrations: can take minutes)…")
    st = srv.start(timeout=timeout)
    for line in st.lines():
        typer.echo(line)
    typer.echo(
        f"to use it: export {settings.label_studio_token_env}=<the \"token\" in {srv.credentials_file}> "
        f"and GEOLABEL_LABEL_STUDIO_URL={st.url}"
    )


@ls_app.command("stop")
def stop(data_dir: Path | None = DATA_DIR) -> None:
    """Stop the server started by `geolabel labelstudio start` (or by `geolabel demo`)."""
    srv, _ = _server(data_dir=data_dir)
    typer.echo("stopped" if srv.stop() else "not running")


@ls_app.command("status")
def status(data_dir: Path | None = DATA_DIR) -> None:
    """URL, version and whether the stored token works (never prints the token)."""
    srv, _ = _server(data_dir=data_dir)
    st = srv.status()
    for line in st.lines():
        typer.echo(line)
    if not st.running:
        raise typer.Exit(1)


@ls_app.command("webhook")
def webhook(
    project: str = typer.Option("GeoSeg verification", help="Label Studio project title (created if missing)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8765, help="Port to listen on."),
    public_url: str | None = typer.Option(
        None, help="URL Label Studio should call (default http://HOST:PORT/webhook)."
    ),
    register: bool = typer.Option(True, help="Create/update the project's webhook in Label Studio."),
    data_dir: Path | None = DATA_DIR,
) -> None:
    """Run the webhook receiver (ASGI, uvicorn); the shared secret comes from GEOLABEL_WEBHOOK_SECRET."""
    import uvicorn

    from flows.runtime import open_runtime
    from labeling.client import LabelStudioClient
    from labeling.project import ensure_project
    from labeling.webhook import make_webhook_app, register_webhook

    settings = _settings(data_dir)
    secret = settings.webhook_secret()
    if not secret:
        raise typer.BadParameter(
            f"set the shared secret in the environment variable {settings.webhook_secret_env} (16+ characters)"
        )
    rt = open_runtime(settings, init_schema=False)  # a receiver never migrates: `geolabel db upgrade` does
    with LabelStudioClient.from_settings(settings) as client, rt.session() as session:
        handle = ensure_project(client, session, project)
        session.commit()
        url = public_url or f"http://{host}:{port}/webhook"
        if register:
            register_webhook(client, handle, url, secret.get_secret_value())
            typer.echo(f"webhook registered for project {handle.ls_project_id}: {url}")
    app = make_webhook_app(rt.engine, rt.blobs, handle, secret.get_secret_value())
    typer.echo(f"listening on http://{host}:{port}/webhook (secret from {settings.webhook_secret_env})")
    uvicorn.run(app, host=host, port=port, log_level="info")


def register(app: typer.Typer) -> None:
    app.add_typer(ls_app, name="labelstudio")
