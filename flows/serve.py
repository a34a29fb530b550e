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

Deployments cannot pile up (Prefect deployment concurrency limits, enforced by the Prefect server):

* the label cycle: at most :data:`CYCLE_CONCURRENCY` run at once, collision strategy **cancel-new**: a cycle that
  comes due (or is started from the UI/API) while the previous one is still working is cancelled by the server with
  the state message "Deployment concurrency limit reached."; the running cycle goes on and the next due one picks up
  whatever arrived meanwhile, so nothing is lost and no backlog of waiting cycles builds up;
* the nightly export: at most one at once, collision strategy **enqueue**: a second export waits
  (``AwaitingConcurrencySlot``) until the first has finished, then runs, so each requested export is made.

Each run of these deployments calls :func:`note_overlap` first: it logs a warning naming any other run of the same
deployment that is still working (possible when runs are started outside the limit), and how long this run waited
for its slot. Overlap is safe anyway: the stages claim their work (``storage.claims``).

Scaling out the model stage on a work pool (GPU workers): :mod:`flows.dispatch` (``geolabel deploy``, ``geolabel
dispatch``, ``prefect worker start --pool gpu``); a global concurrency limit named ``geolabel-model`` (``prefect gcl
create geolabel-model --limit N``) bounds the model stage across all workers. PostgreSQL (``GEOLABEL_DATABASE_URL``)
and S3 (``GEOLABEL_BLOB_URL=s3://…``) make the state shared by every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

LABEL_CYCLE = "geolabel-label-cycle"
NIGHTLY_EXPORT = "geolabel-nightly-export"
CYCLE_CONCURRENCY = 1
EXPORT_CONCURRENCY = 1


def cycle_concurrency() -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=CYCLE_CONCURRENCY, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def export_concurrency() -> Any:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=EXPORT_CONCURRENCY, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def run_logger() -> Any:
    """The flow run's logger inside a run, else the module logger."""
    import logging

    from prefect import get_run_logger

    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow/task run
        return logging.getLogger("geolabel.flows")


def note_overlap() -> list[str]:
    """In a deployment's flow run: log the other runs of the deployment still working and the time this run waited
    for a concurrency slot. Returns the names of those other runs (empty outside a deployment or without an API)."""
    log = run_logger()
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterId,
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType
        from prefect.runtime import deployment, flow_run

        dep_id, me = deployment.id, flow_run.id
        if not dep_id or not me:
            return []
        with get_client(sync_client=True) as client:
            running = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
                ),
            )
            history = client.read_flow_run_states(me)
    except Exception as exc:  # noqa: BLE001 - no API or an old server: nothing to say
        log.debug("note_overlap: %s", exc)
        return []
    others = [r for r in running if str(r.id) != str(me)]
    for r in others:
        log.warning(
            "the previous run %r of this deployment (started %s) is still working; this run goes on beside it "
            "(claims keep the two from doing the same work twice)",
            r.name,
            r.start_time,
        )
    waits = [st.timestamp for st in history if st.name == "AwaitingConcurrencySlot"]
    if waits:
        waited = (max(st.timestamp for st in history) - min(waits)).total_seconds()
        log.info(
            "this run waited about %.0f s for the previous run of this deployment to finish (concurrency limit, "
            "collision strategy enqueue)",
            waited,
        )
    return [r.name for r in others]


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
        concurrency_limit=cycle_concurrency(),
    )
    export = export_flow.to_deployment(
        name=NIGHTLY_EXPORT,
        schedule=CronSchedule(cron=cfg.export_cron, timezone=cfg.timezone),
        parameters={"out_dir": export_dir, "settings_overrides": cfg.settings_overrides},
        description="COCO export of the accepted triplets",
        tags=["geolabel"],
        entrypoint_type=EntrypointType.MODULE_PATH,
        concurrency_limit=export_concurrency(),
    )
    return [cycle, export]


def serve_deployments(cfg: ServeConfig, *, limit: int | None = None) -> None:
    """Register the deployments and run their flow runs until interrupted (Ctrl-C / SIGTERM)."""
    from prefect import serve

    serve(*build_deployments(cfg), limit=limit, print_starting_message=True)
