"""``push_flow`` and ``sync_flow``: the Label Studio side of the loop, thin wrappers over :mod:`labeling`.

* ``push_flow``: find or create the verification project (``labeling.project.ensure_project``), make sure every image
  it will reference has a browser-displayable rendition, then ``labeling.push.push_predictions`` (bulk imports,
  idempotent with reconciliation after a crash) for the predictions of one model version.
* ``sync_flow``: ``labeling.sync.sync_annotations`` since the project's watermark (``full=True`` re-reads all).

Display renditions: browsers cannot show GeoTIFF, multi-band or 16-bit imagery, so Label Studio gets the RGB
rendition of ``geoseg.imagery.read_image`` (PNG; PNG/JPEG sources are copied unchanged). With a local blob store the
renditions are files ``<data_dir>/display/<image sha256>.<ext>`` served by Label Studio's local-files serving below
the imagery root it serves (``imagery_roots[0]``, else the data dir: what ``labeling.server`` starts it with), so the
data dir must lie below that root; with an S3 blob store they are blobs and Label Studio gets presigned
URLs. Masks refer to the rendition's pixel grid, which is the image's own.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.ingest import _logger
from flows.runtime import Runtime, open_runtime, settings_from

DISPLAY_DIR = "display"
BROWSER_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}


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
    retracted: int = 0
    malformed: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    skipped_tasks: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    watermark: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def imagery_root(settings: Any) -> Path:
    """The directory the project's Label Studio serves local files from (``LabelStudioServer.from_settings``)."""
    roots = settings.imagery_roots
    return Path(roots[0] if roots else settings.data_dir).resolve()


class DisplayImages:
    """Image URI -> a URL Label Studio can show, producing browser-displayable renditions on demand."""

    def __init__(self, rt: Runtime) -> None:
        from labeling.push import ImageUrlResolver

        self.rt = rt
        self.s3 = str(rt.settings.blob_url).startswith("s3://")
        self.root = imagery_root(rt.settings)
        self.dir = Path(rt.settings.data_dir).resolve() / DISPLAY_DIR
        self.resolver = ImageUrlResolver(self.root)
        self._by_uri: dict[str, str] = {}

    def _rendition(self, sha: str, uri: str, fmt: str | None) -> tuple[bytes, str]:
        from geoseg.imagery import read_image

        data = self._image_bytes(sha, uri)
        loaded = read_image(data, name=uri)
        if fmt in BROWSER_FORMATS and loaded.bands in (1, 3) and loaded.dtype == "uint8":
            return data, BROWSER_FORMATS[fmt]
        from PIL import Image as PILImage

        buf = io.BytesIO()
        PILImage.fromarray(loaded.rgb).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), ".png"

    def _image_bytes(self, sha: str, uri: str) -> bytes:
        if self.rt.blobs.exists(sha):
            return self.rt.blobs.get(sha)
        from storage.sources import read_bytes

        client = None
        if uri.startswith("s3://"):
            from storage.blobs import s3_client

            client = s3_client(endpoint_url=self.rt.settings.s3_endpoint_url)
        return read_bytes(uri, client=client)

    def prepare(self, images: list[tuple[str, str, str | None]]) -> list[tuple[str, str]]:
        """Make renditions for (sha256, uri, format) triples; returns (uri, error) for the ones that failed."""
        failures: list[tuple[str, str]] = []
        for sha, uri, fmt in images:
            if uri in self._by_uri:
                continue
            try:
                if self.s3:
                    if fmt in BROWSER_FORMATS and self.rt.blobs.exists(sha):
                        self._by_uri[uri] = self.rt.blobs.url(sha, expires=7 * 24 * 3600)
                        continue
                    data, _ext = self._rendition(sha, uri, fmt)
                    self._by_uri[uri] = self.rt.blobs.url(self.rt.blobs.put(data), expires=7 * 24 * 3600)
                    continue
                existing = [self.dir / f"{sha}{ext}" for ext in (".png", ".jpg")]
                path = next((p for p in existing if p.is_file()), None)
                if path is None:
                    data, ext = self._rendition(sha, uri, fmt)
                    self.dir.mkdir(parents=True, exist_ok=True)
                    path = self.dir / f"{sha}{ext}"
                    tmp = path.with_suffix(path.suffix + ".tmp")
                    tmp.write_bytes(data)
                    tmp.replace(path)  # atomic: a killed run leaves no half-written rendition
                self._by_uri[uri] = self.resolver(str(path))
            except Exception as exc:  # noqa: BLE001 - recorded; push_predictions then fails these items one by one
                failures.append((uri, f"{type(exc).__name__}: {exc}"))
        return failures

    def __call__(self, uri: str) -> str:
        try:
            return self._by_uri[uri]
        except KeyError:
            raise ValueError(f"{uri}: no displayable rendition was prepared") from None


document_root = imagery_root  # the earlier name, kept for callers (flows.intake)


def label_studio_client(settings: Any) -> Any:
    from labeling.client import LabelStudioClient

    return LabelStudioClient.from_settings(settings)


def _project(client: Any, session: Any, settings: Any, title: str | None) -> Any:
    from labeling.project import DEFAULT_TITLE, ensure_project

    handle = ensure_project(client, session, title or DEFAULT_TITLE, imagery_root=imagery_root(settings))
    session.commit()
    return handle


def push(rt: Runtime, model_version: str, project_title: str | None = None, batch_size: int = 200) -> PushSummary:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    from labeling.push import PushJob, push_predictions
    from storage import repo
    from storage.models import Image

    log = _logger()
    t0 = time.perf_counter()
    with label_studio_client(rt.settings) as client, Session(rt.engine) as session:
        handle = _project(client, session, rt.settings, project_title)
        pending = repo.predictions_awaiting_push(session, handle.label_project_id, model_version)
        jobs = [PushJob.of(item, item.image, pred) for item, pred in pending]  # plain values, read once
        image_ids = sorted({item.image_id for item, _ in pending})
        images = []
        for chunk_start in range(0, len(image_ids), 500):
            chunk = image_ids[chunk_start : chunk_start + 500]
            images += list(session.execute(sa.select(Image.sha256, Image.uri, Image.format).where(Image.id.in_(chunk))))
        session.rollback()  # release the read transaction before the long push (SQLite writers)
        display = DisplayImages(rt)
        for uri, err in display.prepare([tuple(r) for r in images]):
            log.warning("push: no displayable rendition for %s: %s", uri, err)
        setup_s = time.perf_counter() - t0
        rep = push_predictions(
            client, session, rt.blobs, handle, model_version, image_url=display, batch_size=batch_size, pending=jobs
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
    from sqlalchemy.orm import Session

    from labeling.sync import sync_annotations

    log = _logger()
    with label_studio_client(rt.settings) as client, Session(rt.engine) as session:
        handle = _project(client, session, rt.settings, project_title)
        rep = sync_annotations(client, session, rt.blobs, handle, full=full)
        session.commit()
    for ann_id, msg in rep.malformed[:20]:
        log.warning("sync: annotation %d not usable: %s", ann_id, msg)
    return SyncSummary(
        label_studio_url=handle.url,
        ls_project_id=handle.ls_project_id,
        tasks_seen=rep.tasks_seen,
        upserted=rep.upserted,
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
    from flows.preannotate import model_version_of

    mv = model_version or model_version_of(profile)
    summary = push_task(settings_overrides, mv, project_title, batch_size)
    _logger().info(
        "push: %d new task(s), %d reconciled, %d updated, %d failed -> %s/projects/%d",
        summary.pushed,
        summary.reconciled,
        summary.updated,
        len(summary.failed),
        summary.label_studio_url,
        summary.ls_project_id,
    )
    return summary


@flow(name="sync", log_prints=True)
def sync_flow(
    settings_overrides: dict[str, Any] | None = None, project_title: str | None = None, full: bool = False
) -> SyncSummary:
    """Bring annotations back from the Label Studio project (since its watermark; everything with ``full``)."""
    summary = sync_task(settings_overrides, project_title, full)
    _logger().info(
        "sync: %d task(s) read, %d annotation(s) stored, %d retracted, %d malformed",
        summary.tasks_seen,
        summary.upserted,
        summary.retracted,
        len(summary.malformed),
    )
    return summary
