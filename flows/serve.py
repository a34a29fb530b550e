"""Schedules: the label cycle every N minutes and a nightly COCO export, served by one process (``geolabel serve``).

The served label cycle pulls annotator queries from Label Studio's intake project (``label_cycle_flow(intake=True)``:
intake tasks for new images, written queries -> items -> pre-labels in the review project) unless
``ServeConfig.intake`` is False (``geolabel serve --no-intake``) or, when it is left unset, the ``intake`` setting is
false (``GEOLABEL_INTAKE=false``; default true). The choice is stored in the deployment's parameters (``intake``,
``intake_title``), so a flow run started from the Prefect UI or API does the same.

``build_deployments`` makes Prefect ``RunnerDeployment`` objects (module entrypoints, so any process with the package
installed can run them); ``serve_deployments`` hands them to ``prefect.serve``, which registers them with the Prefect
API (``PREFECT_API_URL``; a Prefect server for anything long-lived) and runs their scheduled and manual runs in this
process's machine.

Scaling out (documented in docs/ONBOARDING_DRAFT.md): run a Prefect server, create a work pool
(``prefect work-pool create gpu --type process``), start ``prefect worker start --pool gpu`` on each GPU node, and
deploy the same flows to that pool (``build_deployments(..., work_pool="gpu")`` + ``.deploy``-style registration or
``prefect deploy``); a global concurrency limit named ``geolabel-model`` (``prefect gcl create geolabel-model
--limit N``) bounds the model stage across all workers. PostgreSQL (``GEOLABEL_DATABASE_URL``) and S3
(``GEOLABEL_BLOB_URL=s3://…``) make the state shared by every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

LABEL_CYCLE = "geolabel-label-cycle"
NIGHTLY_EXPORT = "geolabel-nightly-export"


@dataclass(frozen=True)
class ServeConfig:
    every_minutes: float = 15.0
    export_cron: str = "0 2 * * *"
    timezone: str = "UTC"
    profile: str = "tiny"
    source: str | None = None
    queries: str | None = None
    project_title: str | None = None
    export_dir: str | None = None
    settings_overrides: dict[str, Any] | None = None
    intake: bool | None = None  # None: the ``intake`` setting (GEOLABEL_INTAKE, default true)
    intake_title: str | None = None  # None: labeling.intake.DEFAULT_INTAKE_TITLE

    def __post_init__(self) -> None:
        if not self.every_minutes > 0:
            raise ValueError(f"every_minutes must be > 0, got {self.every_minutes}")
        if (self.source is None) != (self.queries is None):
            raise ValueError("give both source and queries (or neither: the cycle then skips ingest)")
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=self.export_cron, timezone=self.timezone)
        except Exception as exc:
            raise ValueError(f"bad export cron {self.export_cron!r} / timezone {self.timezone!r}: {exc}") from None


def build_deployments(cfg: ServeConfig) -> list[Any]:
    from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
    from prefect.deployments.runner import EntrypointType

    from flows.cycle import label_cycle_flow
    from flows.datasets import export_flow
    from flows.runtime import settings_from

    settings = settings_from(cfg.settings_overrides)
    export_dir = cfg.export_dir or str(settings.data_dir / "exports" / "nightly")
    intake = settings.intake if cfg.intake is None else bool(cfg.intake)
    cycle = label_cycle_flow.to_deployment(
        name=LABEL_CYCLE,
        # first automatic run one interval after serving starts (a run "now" is one `geolabel cycle` away)
        schedule=IntervalSchedule(
            interval=timedelta(minutes=cfg.every_minutes),
            anchor_date=datetime.now(UTC) + timedelta(minutes=cfg.every_minutes),
            timezone=cfg.timezone,
        ),
        parameters={
            "source": cfg.source,
            "queries": cfg.queries,
            "profile": cfg.profile,
            "settings_overrides": cfg.settings_overrides,
            "project_title": cfg.project_title,
            "intake": intake,
            "intake_title": cfg.intake_title,
        },
        description="ingest -> intake (annotator queries) -> preannotate -> push -> sync, every N minutes"
        if intake
        else "ingest -> preannotate -> push -> sync, every N minutes",
        tags=["geolabel"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    export = export_flow.to_deployment(
        name=NIGHTLY_EXPORT,
        schedule=CronSchedule(cron=cfg.export_cron, timezone=cfg.timezone),
        parameters={"out_dir": export_dir, "settings_overrides": cfg.settings_overrides},
        description="COCO export of the accepted triplets",
        tags=["geolabel"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [cycle, export]


def serve_deployments(cfg: ServeConfig, *, limit: int | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted (Ctrl-C / SIGTERM)."""
    from prefect import serve

    serve(*build_deployments(cfg), limit=limit, print_starting_message=True)
