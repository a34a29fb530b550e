"""``geolabel ml-backend``: interactive GeoSeg pre-labels for Label Studio.

``geolabel ml-backend --profile tiny --port 9090`` serves :mod:`labeling.ml_backend` with uvicorn; connect it to the
review project in Label Studio (Settings -> Model -> Connect model, URL ``http://127.0.0.1:9090``, interactive
preannotations on) or with ``--connect``, which registers it through Label Studio's ``/api/ml`` API
(``labeling.client.connect_ml_backend``).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flows.cli_common import DataDir, Profile, Project, settings_for

app = typer.Typer()


def load_geoseg_model(profile: str) -> Any:
    """A ``labeling.ml_backend.ModelHandle`` serving the GeoSeg pipeline of ``profile`` (models loaded here, once)."""
    from geoseg.imagery import read_image
    from geoseg.registry import load_pipeline
    from geoseg.types import TINY_MODEL_WARNING
    from labeling.ml_backend import ModelHandle, Suggestion

    pipeline = load_pipeline(profile)

    def suggest(image: bytes, query: str) -> Suggestion:
        res = pipeline(read_image(image).rgb, query)
        return Suggestion(res.mask, res.model_version, res.score, res.route, res.reason)

    warning = TINY_MODEL_WARNING if pipeline.meaningless else None
    from flows.smart_tools import smart_prompt_handler  # Label Studio's smart tools (a click, a box): SAM3 prompts

    return ModelHandle(suggest=suggest, model_version=pipeline.model_version, warning=warning,
                       prompt=smart_prompt_handler(pipeline))


def _connect(settings: Any, backend_url: str, project: str | None) -> None:
    """Register the backend on the review project (run in a thread while uvicorn serves)."""
    from flows.labeling_flows import label_studio_client, review_project
    from flows.runtime import open_runtime
    from labeling.client import connect_ml_backend
    from labeling.ml_backend import wait_until_healthy

    wait_until_healthy(backend_url)
    try:
        rt = open_runtime(settings)
        with label_studio_client(settings) as client, rt.session() as session:
            handle = review_project(client, session, settings, project)
            row = connect_ml_backend(client, handle.ls_project_id, backend_url)
        typer.echo(f"connected as ML backend {row.get('id')} of {handle.url}/projects/{handle.ls_project_id}", err=True)
    except Exception as exc:  # noqa: BLE001 - the backend keeps serving; connect by hand then
        typer.echo(
            f"error: could not connect the backend to Label Studio at {settings.label_studio_url}: {exc}", err=True
        )


@app.command("ml-backend")
def ml_backend(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 9090,
    profile: Profile = "tiny",
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Predictions that may run at once.")] = 1,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds per interactive prediction (queueing included), per task.")
    ] = 30.0,
    batch_budget: Annotated[
        float,
        typer.Option(
            "--batch-budget", help="Seconds a batch (Retrieve predictions) may take; below Label Studio's 100."
        ),
    ] = 80.0,
    connect: Annotated[
        bool, typer.Option("--connect", help="Connect it to the review project of the configured Label Studio.")
    ] = False,
    project: Project = None,
    allow_image_origin: Annotated[
        list[str] | None,
        typer.Option("--allow-image-origin", help="Extra http(s) origin task images may be fetched from (repeatable).",
                     show_default=False),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Serve GeoSeg pre-labels to Label Studio (ML backend protocol: /health /setup /predict /webhook)."""
    import threading

    import uvicorn

    from geoseg.registry import model_version_of
    from labeling.ml_backend import MLBackendConfig, create_app
    from labeling.server import token_for

    settings = settings_for(data_dir)
    token = token_for(settings)
    cfg = MLBackendConfig(
        max_concurrency=concurrency,
        timeout_s=timeout,
        batch_budget_s=batch_budget,
        label_studio_url=settings.label_studio_url,
        label_studio_token=token.get_secret_value() if token else None,
        allowed_image_origins=tuple(allow_image_origin or ())
        + ((settings.s3_endpoint_url,) if settings.s3_endpoint_url else ()),
    )
    asgi = create_app(lambda: load_geoseg_model(profile), cfg, model_version=model_version_of(profile))
    if profile == "tiny":
        from geoseg.types import TINY_MODEL_WARNING

        typer.echo(f"warning: {TINY_MODEL_WARNING}", err=True)
    if connect:
        args = (settings, f"http://{host}:{port}", project)
        threading.Thread(target=_connect, args=args, name="connect-ml-backend", daemon=True).start()
    typer.echo(f"GeoSeg ML backend on http://{host}:{port} (profile {profile}, {concurrency} at a time)", err=True)
    uvicorn.run(asgi, host=host, port=port, log_level="warning")
