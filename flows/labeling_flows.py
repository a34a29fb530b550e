"""``push_flow`` and ``sync_flow``: the Label Studio side of the loop, thin wrappers over :mod:`labeling`.

* ``push_flow``: find or create the verification project (``labeling.project.ensure_project``), make sure every image
  it will reference has a browser-displayable rendition, then ``labeling.push.push_predictions`` (bulk imports,
  idempotent with reconciliation after a crash) for the predictions of one model version.
* ``sync_flow``: ``labeling.sync.sync_annotations`` since the project's watermark (``full=True`` re-reads all).

Display renditions (browser-displayable copies of GeoTIFF and multi-band imagery) come from
:mod:`labeling.display`. Without a project title both use :func:`review_project`'s rule: the project of this data dir
that already holds tasks, else ``labeling.project.DEFAULT_TITLE``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.logs import get_logger
from flows.prefect_server import publish_report
from flows.runtime import Runtime, open_runtime, settings_from
from storage import repo


@dataclass(frozen=True)
class PushSummary:
    label_studio_url: str
    ls_project_id: int
    model_version: str
    pushed: int = 0
    reconciled: int = 0
    updated: int = 0
    failed: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    requests: int = 0
    seconds: float = 0.0  # labeling.push.push_predictions itself
    setup_seconds: float = 0.0  # before it: project check, pending rows, display renditions
    skipped: int = 0  # items another run held (storage.claims) or pushed meanwhile

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SyncSummary:
    label_studio_url: str
    ls_project_id: int
    tasks_seen: int = 0
    upserted: int = 0
    unchanged: int = 0
    retracted: int = 0
    malformed: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    skipped_tasks: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    watermark: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_studio_client(settings: Any) -> Any:
    from labeling.client import LabelStudioClient

    return LabelStudioClient.from_settings(settings)


def review_project(client: Any, session: Any, settings: Any, title: str | None) -> Any:
    """Find or create the review project (committed); returns ``labeling.project.ProjectHandle``.

    Without ``title``: the project of this database that already holds tasks on this Label Studio (the one pushed to
    last; several are an error naming them), else ``labeling.project.DEFAULT_TITLE``; so ``sync`` after a demo or a
    push to a named project reads that project instead of creating an empty default one.
    """
    from labeling.display import imagery_root
    from labeling.project import DEFAULT_TITLE, ensure_project
    from storage.repo.labeling import projects_with_tasks

    if not title:
        known = projects_with_tasks(session, client.url)
        if len(known) > 1:
            names = ", ".join(repr(t) for t in known)
            raise ValueError(f"this data dir has tasks in several projects ({names}): pass --project TITLE")
        title = known[0] if known else DEFAULT_TITLE
    handle = ensure_project(client, session, title, imagery_root=imagery_root(settings))
    session.commit()
    return handle


def configure_project(
    rt: Runtime,
    project_title: str | None = None,
    *,
    overlap: int | None = None,
    min_agreement: float | None = None,
    label_stream: str | None = None,
    model_version: str | None = None,
) -> dict[str, Any]:
    """Set the review project's annotators per task (``overlap``, Label Studio's ``maximum_annotations``) and
    consensus threshold (``min_agreement``; storage.consensus), and its label stream: ``uncertainty`` serves the
    least certain pre-labels of ``model_version`` first, under-filled GeoSeg-Bench strata before full ones
    (labeling.priority); ``sequential`` restores Label Studio's default order. Returns what was set."""
    from labeling.client import LabelStudioRequestError
    from labeling.priority import configure_label_stream
    from labeling.project import configure_consensus, configure_sampling

    if label_stream not in (None, "uncertainty", "sequential"):
        raise ValueError(f"label stream must be 'uncertainty' or 'sequential', got {label_stream!r}")
    if label_stream == "uncertainty" and not model_version:
        raise ValueError("the uncertainty label stream ranks the pre-labels of one model version: give it")
    out: dict[str, Any] = {}
    with label_studio_client(rt.settings) as client, rt.session() as session:
        handle = review_project(client, session, rt.settings, project_title)
        out["project"] = f"{handle.url}/projects/{handle.ls_project_id}"
        if overlap is not None or min_agreement is not None:
            current = repo.project_consensus(session, handle.label_project_id) if overlap is None else None
            configure_consensus(client, session, handle, overlap=overlap if overlap is not None else current[0],
                                min_agreement=min_agreement)
            session.commit()
            out["consensus"] = dict(zip(("overlap", "min_agreement"),
                                        repo.project_consensus(session, handle.label_project_id), strict=True))
        if label_stream == "uncertainty":
            try:
                out["scores_written"] = configure_label_stream(client, session, handle, str(model_version))
            except LabelStudioRequestError as exc:
                if "Model version doesn't exist" not in str(exc):
                    raise
                raise ValueError(f"{out['project']} has no pre-labels of {model_version} yet: push them first "
                                 "(geolabel push), then set the uncertainty label stream") from None
            out["label_stream"] = "uncertainty"
        elif label_stream == "sequential":
            configure_sampling(client, handle, model_version or "", "sequential")
            out["label_stream"] = "sequential"
    return out


def push(rt: Runtime, model_version: str, project_title: str | None = None, batch_size: int = 200) -> PushSummary:
    from labeling.display import DisplayImages
    from labeling.push import PushJob, push_predictions
    from storage import repo

    log = get_logger()
    t0 = time.perf_counter()
    with label_studio_client(rt.settings) as client, rt.session() as session:
        handle = review_project(client, session, rt.settings, project_title)
        pending = repo.predictions_awaiting_push(session, handle.label_project_id, model_version)
        jobs = [PushJob.of(item, item.image, pred) for item, pred in pending]  # plain values, read once
        images = [r[:3] for r in repo.image_refs(session, {item.image_id for item, _ in pending})]
        session.rollback()  # release the read transaction before the long push (SQLite writers)
        display = DisplayImages(rt.settings, rt.blobs)
        for uri, err in display.prepare(images):
            log.warning("push: no displayable rendition for %s: %s", uri, err)
        from labeling.storages import S3Connection

        display.connect(client, handle.ls_project_id, S3Connection.from_settings(rt.settings))
        setup_s = time.perf_counter() - t0
        rep = push_predictions(
            client, session, rt.blobs, handle, model_version, image_url=display, batch_size=batch_size, pending=jobs,
            region_format=rt.settings.prelabel_format,  # brush | polygon (labeling.polygons)
        )
        session.commit()
    for item_id, msg in rep.failed[:20]:
        log.warning("push: item %d not pushed: %s", item_id, msg)
    return PushSummary(
        label_studio_url=handle.url,
        ls_project_id=handle.ls_project_id,
        model_version=model_version,
        pushed=rep.pushed,
        reconciled=rep.reconciled,
        updated=rep.updated,
        failed=tuple(rep.failed),
        requests=rep.requests,
        seconds=rep.seconds,
        setup_seconds=setup_s,
        skipped=rep.skipped,
    )


def sync(rt: Runtime, project_title: str | None = None, full: bool = False) -> SyncSummary:
    from labeling.sync import sync_annotations

    log = get_logger()
    with label_studio_client(rt.settings) as client, rt.session() as session:
        handle = review_project(client, session, rt.settings, project_title)
        rep = sync_annotations(client, session, rt.blobs, handle, full=full)
        session.commit()
    for ann_id, msg in rep.malformed[:20]:
        log.warning("sync: annotation %d not usable: %s", ann_id, msg)
    return SyncSummary(
        label_studio_url=handle.url,
        ls_project_id=handle.ls_project_id,
        tasks_seen=rep.tasks_seen,
        upserted=rep.upserted,
        unchanged=rep.unchanged,
        retracted=rep.retracted,
        malformed=tuple(rep.malformed),
        skipped_tasks=tuple(rep.skipped_tasks),
        watermark=rep.watermark.isoformat() if rep.watermark else None,
    )


@task(name="push-predictions", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def push_task(
    settings_overrides: dict[str, Any] | None, model_version: str, project_title: str | None, batch_size: int
):
    return push(open_runtime(settings_from(settings_overrides)), model_version, project_title, batch_size)


@task(name="sync-annotations", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def sync_task(settings_overrides: dict[str, Any] | None, project_title: str | None, full: bool):
    return sync(open_runtime(settings_from(settings_overrides)), project_title, full)


@flow(name="push", log_prints=True)
def push_flow(
    profile: str = "tiny",
    settings_overrides: dict[str, Any] | None = None,
    model_version: str | None = None,
    project_title: str | None = None,
    batch_size: int = 200,
) -> PushSummary:
    """Push the predictions of ``model_version`` (default: the profile's) to the Label Studio project."""
    from geoseg.registry import model_version_of

    mv = model_version or model_version_of(profile)
    summary = push_task(settings_overrides, mv, project_title, batch_size)
    get_logger().info(
        "push: %d new task(s), %d reconciled, %d updated, %d failed -> %s/projects/%d",
        summary.pushed,
        summary.reconciled,
        summary.updated,
        len(summary.failed),
        summary.label_studio_url,
        summary.ls_project_id,
    )
    publish_report("push", summary)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return summary


@flow(name="sync", log_prints=True)
def sync_flow(
    settings_overrides: dict[str, Any] | None = None, project_title: str | None = None, full: bool = False
) -> SyncSummary:
    """Bring annotations back from the Label Studio project (since its watermark; everything with ``full``)."""
    summary = sync_task(settings_overrides, project_title, full)
    get_logger().info(
        "sync: %d task(s) read, %d annotation(s) stored (%d unchanged), %d retracted, %d malformed",
        summary.tasks_seen,
        summary.upserted,
        summary.unchanged,
        summary.retracted,
        len(summary.malformed),
    )
    publish_report("sync", summary)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return summary
