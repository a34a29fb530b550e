"""``ingest_flow``: imagery + a queries file in, ``Image`` and ``Item`` rows out (design §1, first stage).

* Imagery: a local directory (or file) or an ``s3://bucket/prefix`` (:mod:`storage.sources`). Each object is read,
  decoded by ``geoseg.imagery.read_image`` (size, bands, dtype, CRS, transform; bad files rejected with a reason) and
  registered by the sha256 of its bytes, so the same picture under two names or re-ingested is one ``Image``. The
  bytes are copied into the blob store (content-addressed) so later stages never depend on the source staying put.
* Queries: CSV (header ``image,query[,level][,domain]``) or JSONL (one object per line with those keys), parsed by
  :mod:`storage.queries_file`. ``image`` names an object by its path relative to the source, its bare file name when
  unique, or its full URI (:class:`storage.ingest.ImageIndex`).
* Per-row problems (unknown image, empty query, bad level, unreadable image) are collected in the report with their
  line numbers and the batch goes on; nothing good is dropped because something else was bad.
* Idempotent and resumable: every write is an upsert on the natural key (Image.sha256, Item(image, query key)) through
  :mod:`storage.ingest` / :mod:`storage.repo`, committed per batch; killed and re-run, it skips what is done and
  finishes the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.logs import get_logger as _logger
from flows.prefect_server import publish_report
from flows.runtime import Runtime, chunks, open_runtime, settings_from
from storage.ingest import (  # noqa: F401 - re-exported: callers and tests import them from here
    ImageIndex,
    ItemOutcome,
    RegisteredImage,
    image_roots,
    named_objects,
    register_images,
    register_items,
    resolve_image,
    s3_client_for,
)
from storage.queries_file import IngestIssue, QueriesError, QueryRow, load_queries, parse_queries  # noqa: F401


@dataclass(frozen=True)
class IngestReport:
    images_listed: int = 0
    images_new: int = 0
    images_known: int = 0
    items_new: int = 0
    items_known: int = 0
    issues: tuple[IngestIssue, ...] = field(default_factory=tuple)
    scenes: int = 0  # scenes cut into chips (their chips count as images above)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["issues"] = [asdict(i) for i in self.issues]
        return d


@task(name="register-scene", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def register_scene_task(settings_overrides: dict[str, Any] | None, obj: Any, source: str,
                        bands: tuple[int, ...] | None, tile_size: int, tile_overlap: int,
                        max_chips: int | None) -> Any:
    """A scene (``storage.scenes.register_scene``): windowed reads, one rendition per chip, all chips registered
    in one transaction or none."""
    from storage.scenes import register_scene

    rt = open_runtime(settings_from(settings_overrides))
    return register_scene(rt.session, rt.blobs, obj.uri, obj.name, source, tile_size=tile_size,
                          overlap=tile_overlap, bands=bands, max_chips=max_chips,
                          s3_endpoint_url=rt.settings.s3_endpoint_url)


@task(name="register-images", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def register_images_task(
    settings_overrides: dict[str, Any] | None,
    objects: list[Any],
    source: str,
    bands: tuple[int, ...] | None,
    copy_images: bool,
) -> list[RegisteredImage]:
    return register_images(open_runtime(settings_from(settings_overrides)), objects, source, bands, copy_images)


@task(name="register-items", retries=2, retry_delay_seconds=1, cache_policy=NO_CACHE)
def register_items_task(
    settings_overrides: dict[str, Any] | None, rows: list[tuple[int, QueryRow]]
) -> list[ItemOutcome]:
    return register_items(open_runtime(settings_from(settings_overrides)), rows)


def _s3_client_for(rt: Runtime) -> Any:
    return s3_client_for(rt.settings)


@flow(name="ingest", log_prints=True)
def ingest_flow(
    source: str,
    queries: str,
    settings_overrides: dict[str, Any] | None = None,
    bands: list[int] | None = None,
    copy_images: bool = True,
    batch_size: int = 32,
    tile_size: int = 1024,
    tile_overlap: int = 128,
    max_chips: int | None = None,
) -> IngestReport:
    """Register every image under ``source`` and one item per valid row of ``queries``; see the module docstring."""
    from storage.sources import check_within_roots, is_s3, list_images

    log = _logger()
    settings = settings_from(settings_overrides)
    rt = open_runtime(settings)
    if settings.imagery_roots and not is_s3(source):
        check_within_roots(source, settings.imagery_roots)  # a clear error before anything is read
    client = _s3_client_for(rt) if is_s3(source) or is_s3(queries) else None
    from storage.scenes import scene_refs, scene_rows, split_scenes
    from storage.sources import http_objects

    objects = http_objects(source) or list_images(source, client=client)
    rows, issues = load_queries(queries, client=client)
    log.info("ingest: %d image object(s) under %s, %d query row(s) in %s", len(objects), source, len(rows), queries)
    objects = objects + named_objects(rows, objects)  # full URIs / absolute paths named by the queries file

    tb = tuple(bands) if bands else None
    scene_objs, objects = split_scenes(objects, tile_size, settings.s3_endpoint_url, image_roots(settings, source))
    scene_futures = [
        register_scene_task.submit(settings_overrides, o, source, tb, tile_size, tile_overlap, max_chips)
        for o in scene_objs
    ]
    futures = [
        register_images_task.submit(settings_overrides, batch, source, tb, copy_images)
        for batch in chunks(objects, batch_size)
    ]
    registered: list[RegisteredImage] = [r for f in futures for r in f.result()]
    index = ImageIndex(registered)
    image_issues = index.image_issues()
    for i in image_issues:
        log.warning("ingest: skipped image %s: %s", i.ref, i.message)
    scenes = [f.result() for f in scene_futures]
    by_scene = scene_refs(scenes)
    pending, row_issues = index.match(
        rows, source, queries, fallback=lambda r: scene_rows(r, by_scene[r.image]) if r.image in by_scene else None
    )
    scene_issues = [IngestIssue("image", sc.uri, sc.error) for sc in scenes if sc.error]
    issue_list = [*issues, *scene_issues, *image_issues, *row_issues]
    item_futures = [register_items_task.submit(settings_overrides, b) for b in chunks(pending, 256)]
    items_new = items_known = 0
    for f in item_futures:
        for row, _item_id, created, err in f.result():
            if err:
                issue_list.append(IngestIssue("query", queries, err, row.line))
            elif created:
                items_new += 1
            else:
                items_known += 1
    ok = [r for r in registered if r.image_id is not None]
    report = IngestReport(
        images_listed=len(objects) + len(scene_objs),
        images_new=sum(r.created for r in ok) + sum(sc.created for sc in scenes),
        images_known=sum(not r.created for r in ok) + sum(sc.known for sc in scenes),
        scenes=sum(sc.error is None for sc in scenes),
        items_new=items_new,
        items_known=items_known,
        issues=tuple(issue_list),
    )
    for i in report.issues:
        if i.kind == "query":
            log.warning("ingest: %s line %s: %s", i.ref, i.line, i.message)
    log.info(
        "ingest: images %d new / %d known, items %d new / %d known, %d issue(s)",
        report.images_new,
        report.images_known,
        report.items_new,
        report.items_known,
        len(report.issues),
    )
    publish_report("ingest", report)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return report
