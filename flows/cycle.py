"""``label_cycle_flow``: ingest -> (intake) -> preannotate -> push -> sync, the loop a schedule runs every N minutes.

Each stage is its own flow (a subflow here) reading only what the stage before it stored, so the cycle is as
idempotent and resumable as its stages: killed anywhere, the next run (scheduled or by hand) finishes the work with no
duplicates (natural-key upserts; Label Studio tasks reconciled by ``data.item_id``) and nothing lost.
Ingest is skipped when no source is given (new imagery arrives by ``geolabel ingest`` or another deployment).

With ``intake=True`` the cycle also runs ``flows.intake.intake_flow`` right after ingest: every registered image gets a
task in the intake project (``intake_title``, default "GeoSeg query intake") and the queries annotators wrote there
become items, so a query written since the last cycle is pre-annotated and pushed as a review task in this cycle.
The flow's own default is ``False`` (callers choose); ``geolabel cycle`` and the served deployment (``flows.serve``)
take it from the ``intake`` setting (``GEOLABEL_INTAKE``, default true) unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect import flow

from flows.ingest import IngestReport, ingest_flow
from flows.intake import IntakeSummary, intake_flow
from flows.labeling_flows import PushSummary, SyncSummary, push_flow, sync_flow
from flows.preannotate import PreannotateReport, preannotate_flow
from flows.prefect_server import publish_report


@dataclass(frozen=True)
class CycleReport:
    ingest: IngestReport | None
    preannotate: PreannotateReport
    push: PushSummary
    sync: SyncSummary
    intake: IntakeSummary | None = None  # None: the cycle ran without intake

    def to_dict(self) -> dict[str, Any]:
        return {
            "ingest": self.ingest.to_dict() if self.ingest else None,
            "intake": self.intake.to_dict() if self.intake else None,
            "preannotate": self.preannotate.to_dict(),
            "push": self.push.to_dict(),
            "sync": self.sync.to_dict(),
        }


@flow(name="label-cycle", log_prints=True)
def label_cycle_flow(
    source: str | None = None,
    queries: str | None = None,
    profile: str = "tiny",
    settings_overrides: dict[str, Any] | None = None,
    project_title: str | None = None,
    batch_size: int = 16,
    push_batch_size: int = 200,
    concurrency: int = 1,
    intake: bool = False,
    intake_title: str | None = None,
) -> CycleReport:
    if (source is None) != (queries is None):
        raise ValueError("give both source and queries (or neither, to skip ingest)")
    from flows.serve import note_overlap

    note_overlap()  # a deployment run says so when the previous cycle is still working
    ing = ingest_flow(source, queries, settings_overrides=settings_overrides) if source and queries else None
    took = None
    if intake:  # annotator queries written in Label Studio's intake project become items (flows.intake)
        took = intake_flow(settings_overrides, intake_title)
    pre = preannotate_flow(
        profile, settings_overrides=settings_overrides, batch_size=batch_size, concurrency=concurrency
    )
    pushed = push_flow(
        profile,
        settings_overrides=settings_overrides,
        model_version=pre.model_version,
        project_title=project_title,
        batch_size=push_batch_size,
    )
    synced = sync_flow(settings_overrides=settings_overrides, project_title=project_title)
    report = CycleReport(ing, pre, pushed, synced, took)
    publish_report("label-cycle", report)  # counts of every stage, failures, links (flows.prefect_server)
    return report
