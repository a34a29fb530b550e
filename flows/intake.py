"""``intake_flow``: annotator queries from Label Studio's intake project become items (thin wrapper over
:mod:`labeling.intake`).

1. find or create the intake project (``labeling.intake.ensure_intake_project``);
2. give every registered image an intake task (browser-displayable renditions as in ``push_flow``), unless
   ``create_tasks=False``;
3. pull the written queries into items (idempotent; edits and deletions per ``labeling.intake``).

In the label cycle it runs before ``preannotate_flow`` so that a query written since the last cycle is pre-annotated
and pushed as a review task in the same cycle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.logs import get_logger as _logger
from flows.prefect_server import publish_report
from flows.runtime import Runtime, open_runtime, settings_from


@dataclass(frozen=True)
class IntakeSummary:
    label_studio_url: str
    ls_project_id: int
    tasks_created: int = 0
    tasks_failed: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    tasks_seen: int = 0
    queries: int = 0
    items_new: int = 0
    items_updated: int = 0
    deleted: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    kept: tuple[tuple[int, str, str], ...] = field(default_factory=tuple)
    malformed: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    skipped_tasks: tuple[tuple[int, str], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def intake(rt: Runtime, project_title: str | None = None, create_tasks: bool = True) -> IntakeSummary:
    from flows.labeling_flows import label_studio_client
    from labeling.display import DisplayImages, imagery_root
    from labeling.intake import DEFAULT_INTAKE_TITLE, create_intake_tasks_once, ensure_intake_project, pull_queries
    from labeling.storages import S3Connection
    from storage import repo

    log = _logger()
    with label_studio_client(rt.settings) as client, rt.session() as session:
        handle = ensure_intake_project(
            client, session, project_title or DEFAULT_INTAKE_TITLE, imagery_root=imagery_root(rt.settings)
        )
        session.commit()
        created, failed = 0, []
        if create_tasks:
            present = {
                (t.get("data") or {}).get("image_sha256")
                for t in client.iter_tasks(handle.ls_project_id, fields="task_only", page_size=500)
            }
            rows = [r for r in repo.image_refs(session) if r[0] not in present]
            session.rollback()
            if rows:
                display = DisplayImages(rt.settings, rt.blobs)
                for uri, err in display.prepare([r[:3] for r in rows]):
                    log.warning("intake: no displayable rendition for %s: %s", uri, err)
                display.connect(client, handle.ls_project_id, S3Connection.from_settings(rt.settings))
                rep = create_intake_tasks_once(client, session, handle, display, image_ids=[r[3] for r in rows])
                created, failed = rep.created, rep.failed
        pulled = pull_queries(client, session, handle)
        session.commit()
    for iid, q, why in pulled.kept[:20]:
        log.warning("intake: query %r (item %d) was withdrawn but is kept: it has %s", q, iid, why)
    for ann, msg in pulled.malformed[:20]:
        log.warning("intake: annotation %d not usable: %s", ann, msg)
    return IntakeSummary(
        label_studio_url=handle.url,
        ls_project_id=handle.ls_project_id,
        tasks_created=created,
        tasks_failed=tuple(failed),
        tasks_seen=pulled.tasks_seen,
        queries=pulled.queries,
        items_new=pulled.items_new,
        items_updated=pulled.items_updated,
        deleted=tuple(pulled.deleted),
        kept=tuple(pulled.kept),
        malformed=tuple(pulled.malformed),
        skipped_tasks=tuple(pulled.skipped_tasks),
    )


@task(name="intake-queries", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def intake_task(settings_overrides: dict[str, Any] | None, project_title: str | None, create_tasks: bool):
    return intake(open_runtime(settings_from(settings_overrides)), project_title, create_tasks)


@flow(name="intake", log_prints=True)
def intake_flow(
    settings_overrides: dict[str, Any] | None = None, project_title: str | None = None, create_tasks: bool = True
) -> IntakeSummary:
    """Intake tasks for new images, then the annotators' queries -> items (see the module docstring)."""
    summary = intake_task(settings_overrides, project_title, create_tasks)
    _logger().info(
        "intake: %d new task(s); %d quer(ies) on %d task(s): %d new item(s), %d deleted, %d kept, %d malformed "
        "-> %s/projects/%d",
        summary.tasks_created,
        summary.queries,
        summary.tasks_seen,
        summary.items_new,
        len(summary.deleted),
        len(summary.kept),
        len(summary.malformed),
        summary.label_studio_url,
        summary.ls_project_id,
    )
    publish_report("intake", summary)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return summary
