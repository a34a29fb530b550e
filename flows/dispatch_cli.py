"""``geolabel deploy`` and ``geolabel dispatch``: scale-out on a Prefect work pool (:mod:`flows.dispatch`).

Imports stay inside the commands so that ``geolabel --help`` does not import Prefect.
"""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli_common import DataDir, Json, Profile, overrides_for, print_json

app = typer.Typer()

BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Items per batch flow run.")]
LeaseS = Annotated[
    float | None,
    typer.Option("--lease-s", help="Claim lease per batch in seconds (default 120; renewed while a batch runs).",
                 show_default=False),
]


@app.command("deploy")
def deploy_cmd(
    pool: Annotated[str, typer.Option("--pool", help="Prefect work pool (a process pool is created if missing).")] = (
        "gpu"
    ),
    profile: Profile = "tiny",
    batch_size: BatchSize = 16,
    lease_s: LeaseS = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Register the predict-batch and dispatch deployments on a work pool (start workers with
    `prefect worker start --pool POOL`)."""
    from flows.dispatch import deploy

    overrides_for(data_dir)
    names = deploy(pool, profile=profile, batch_size=batch_size, lease_s=lease_s)
    if as_json:
        print_json({"pool": pool, "deployments": names})
        return
    for name in names:
        typer.echo(f"deployment {name} on work pool {pool}")


@app.command("dispatch")
def dispatch_cmd(
    profile: Profile = "tiny",
    batch_size: BatchSize = 16,
    lease_s: LeaseS = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Watch the batch runs until they finish.")] = True,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Cut the pending model work into batch flow runs on the work pool (needs `geolabel deploy` first)."""
    from flows.dispatch import dispatch_flow

    rep = dispatch_flow(profile=profile, settings_overrides=overrides_for(data_dir) or None, batch_size=batch_size,
                        lease_s=lease_s, wait=wait)
    if as_json:
        print_json(rep.to_dict())
        return
    typer.echo(
        f"dispatched {rep.batches} batch run(s) for {rep.pending} item(s) of {rep.model_version}: {rep.runs}; "
        f"{rep.still_pending} still pending"
    )
