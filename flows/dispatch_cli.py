"""``geolabel deploy`` and ``geolabel dispatch``: scale-out on a Prefect work pool (:mod:`flows.dispatch`).

Imports stay inside the commands so that ``geolabel --help`` does not import Prefect.
"""

from __future__ import annotations

from typing import Any


def register(app: Any) -> None:
    """``geolabel deploy`` and ``geolabel dispatch`` (flows.cli)."""
    import typer

    @app.command("deploy")
    def deploy_cmd(
        pool: str = typer.Option("gpu", help="Prefect work pool (a process pool is created if missing)."),
        profile: str = typer.Option("tiny", help="Model profile the batch runs use."),
        batch_size: int = typer.Option(16, help="Items per batch flow run."),
        lease_s: float = typer.Option(None, help="Claim lease per batch in seconds (default 120)."),
    ) -> None:
        """Register the predict-batch and dispatch deployments on a work pool (start workers with
        `prefect worker start --pool POOL`)."""
        from flows.dispatch import deploy

        for name in deploy(pool, profile=profile, batch_size=batch_size, lease_s=lease_s):
            typer.echo(f"deployment {name} on work pool {pool}")

    @app.command("dispatch")
    def dispatch_cmd(
        profile: str = typer.Option("tiny", help="Model profile."),
        batch_size: int = typer.Option(16, help="Items per batch flow run."),
        lease_s: float = typer.Option(None, help="Claim lease per batch in seconds (default 120)."),
        wait: bool = typer.Option(True, help="Watch the batch runs until they finish."),
        as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ) -> None:
        """Cut the pending model work into batch flow runs on the work pool (needs `geolabel deploy` first)."""
        import json

        from flows.dispatch import dispatch_flow

        rep = dispatch_flow(profile=profile, batch_size=batch_size, lease_s=lease_s, wait=wait)
        if as_json:
            typer.echo(json.dumps(rep.to_dict(), default=str))
        else:
            typer.echo(
                f"dispatched {rep.batches} batch run(s) for {rep.pending} item(s) of {rep.model_version}: {rep.runs}; "
                f"{rep.still_pending} still pending"
            )
