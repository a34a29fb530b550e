"""``geolabel ml-backend`` (interactive GeoSeg pre-labels for Label Studio) and ``geolabel intake setup|pull``.

``geolabel ml-backend --profile tiny --port 9090`` serves :mod:`labeling.ml_backend` with uvicorn; connect it to the
review project in Label Studio (Settings -> Model -> Connect model, URL ``http://127.0.0.1:9090``, interactive
preannotations on) or with ``--connect``, which registers it through Label Studio's ``/api/ml`` API.
``geolabel intake setup`` creates the intake project and its tasks (one per registered image); ``geolabel intake
pull`` turns the queries annotators wrote into items (``flows.intake.intake_flow``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from flows.cli_flows import _DATA_DIR, overrides_for


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


def connect_ml_backend(client: Any, ls_project_id: int, url: str, title: str = "GeoSeg") -> dict[str, Any]:
    """Register (or find) the backend on a Label Studio project, interactive pre-annotations on; returns LS's row."""
    rows = client.request("GET", "/api/ml", params={"project": int(ls_project_id)}) or []
    for row in rows:
        if str(row.get("url", "")).rstrip("/") == url.rstrip("/"):
            if not row.get("is_interactive"):
                row = client.request("PATCH", f"/api/ml/{row['id']}", json_body={"is_interactive": True})
            return row
    return client.request(
        "POST",
        "/api/ml",
        json_body={"project": int(ls_project_id), "url": url, "title": title, "is_interactive": True},
    )


def register(app: typer.Typer) -> None:
    @app.command("ml-backend")
    def ml_backend(
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
        port: int = typer.Option(9090, "--port", help="Port to listen on."),
        profile: str = typer.Option("tiny", "--profile", help="GeoSeg profile: tiny, paper or a profile file."),
        concurrency: int = typer.Option(1, "--concurrency", help="Predictions that may run at once."),
        timeout: float = typer.Option(
            30.0, "--timeout", help="Seconds per interactive prediction (queueing included), per task in a batch."
        ),
        batch_budget: float = typer.Option(
            80.0, "--batch-budget", help="Seconds a batch (Retrieve predictions) may take; under Label Studio's 100."
        ),
        connect: bool = typer.Option(
            False, "--connect", help="Connect it to the review project of the configured Label Studio."
        ),
        project_title: str = typer.Option(None, "--project-title", help="Review project (with --connect)."),
        data_dir: Path = _DATA_DIR,
        allow_image_origin: list[str] = typer.Option(  # noqa: B008 - typer's idiom
            [], "--allow-image-origin", help="Extra http(s) origin task images may be fetched from (repeatable)."
        ),
    ) -> None:
        """Serve GeoSeg pre-labels to Label Studio (ML backend protocol: /health /setup /predict /webhook)."""
        import threading

        import uvicorn

        from flows.runtime import settings_from
        from labeling.ml_backend import MLBackendConfig, create_app

        settings = settings_from(overrides_for(data_dir))
        token = settings.label_studio_token()
        cfg = MLBackendConfig(
            max_concurrency=concurrency,
            timeout_s=timeout,
            batch_budget_s=batch_budget,
            label_studio_url=settings.label_studio_url,
            label_studio_token=token.get_secret_value() if token else None,
            allowed_image_origins=tuple(allow_image_origin)
            + ((settings.s3_endpoint_url,) if settings.s3_endpoint_url else ()),
        )
        from geoseg.registry import model_version_of

        app = create_app(lambda: load_geoseg_model(profile), cfg, model_version=model_version_of(profile))
        if profile == "tiny":
            from geoseg.types import TINY_MODEL_WARNING

            typer.echo(f"warning: {TINY_MODEL_WARNING}", err=True)
        if connect:

            def _connect() -> None:
                import time

                import httpx
                from sqlalchemy.orm import Session

                from flows.labeling_flows import _project, label_studio_client
                from flows.runtime import open_runtime

                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:  # Label Studio checks /health when connecting: wait for it
                    try:
                        if httpx.get(f"http://{host}:{port}/health", timeout=2).status_code < 500:
                            break
                    except httpx.HTTPError:
                        time.sleep(0.2)
                try:
                    rt = open_runtime(settings)
                    with label_studio_client(settings) as client, Session(rt.engine) as session:
                        handle = _project(client, session, settings, project_title)
                        row = connect_ml_backend(client, handle.ls_project_id, f"http://{host}:{port}")
                    typer.echo(
                        f"connected as ML backend {row.get('id')} of {handle.url}/projects/{handle.ls_project_id}",
                        err=True,
                    )
                except Exception as exc:  # noqa: BLE001 - the backend keeps serving; connect by hand then
                    typer.echo(f"error: could not connect the backend to Label Studio: {exc}", err=True)

            threading.Thread(target=_connect, name="connect-ml-backend", daemon=True).start()
        typer.echo(f"GeoSeg ML backend on http://{host}:{port} (profile {profile}, {concurrency} at a time)", err=True)
        uvicorn.run(app, host=host, port=port, log_level="warning")

    intake_app = typer.Typer(help="Query intake: annotators write queries on images in Label Studio.")
    app.add_typer(intake_app, name="intake")

    def _run(project_title: str | None, create_tasks: bool, data_dir: Path | None, as_json: bool) -> None:
        from flows.intake import intake_flow

        s = intake_flow(overrides_for(data_dir), project_title, create_tasks)
        if as_json:
            typer.echo(json.dumps(s.to_dict(), indent=1))
            return
        typer.echo(f"intake project: {s.label_studio_url}/projects/{s.ls_project_id}")
        typer.echo(f"  {s.tasks_created} new intake task(s), {len(s.tasks_failed)} image(s) failed")
        typer.echo(
            f"  {s.queries} quer(ies) on {s.tasks_seen} task(s): {s.items_new} new item(s), "
            f"{s.items_updated} updated, {len(s.deleted)} deleted, {len(s.kept)} kept, {len(s.malformed)} malformed"
        )
        for iid, q, why in s.kept:
            typer.echo(f"  kept item {iid} ({q!r}): withdrawn in intake but it has {why}")
        for ann, msg in s.malformed:
            typer.echo(f"  annotation {ann}: {msg}")

    @intake_app.command("setup")
    def intake_setup(
        project_title: str = typer.Option(None, "--project-title", help="Intake project title."),
        data_dir: Path = _DATA_DIR,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Create the intake project and one task per registered image (then pull what is already written)."""
        _run(project_title, True, data_dir, as_json)

    @intake_app.command("pull")
    def intake_pull(
        project_title: str = typer.Option(None, "--project-title", help="Intake project title."),
        no_tasks: bool = typer.Option(False, "--no-tasks", help="Do not create tasks for new images."),
        data_dir: Path = _DATA_DIR,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Turn the queries written in the intake project into items (idempotent)."""
        _run(project_title, not no_tasks, data_dir, as_json)
