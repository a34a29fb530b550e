"""``ingest_flow``: imagery + a queries file in, ``Image`` and ``Item`` rows out (design §1, first stage).

* Imagery: a local directory (or file) or an ``s3://bucket/prefix`` (:mod:`storage.sources`). Each object is read,
  decoded by ``geoseg.imagery.read_image`` (size, bands, dtype, CRS, transform; bad files rejected with a reason) and
  registered by the sha256 of its bytes, so the same picture under two names or re-ingested is one ``Image``. The
  bytes are copied into the blob store (content-addressed) so later stages never depend on the source staying put.
* Queries: CSV (header ``image,query[,level][,domain]``) or JSONL (one object per line with those keys). ``image``
  names an object by its path relative to the source, its bare file name when unique, or its full URI.
* Per-row problems (unknown image, empty query, bad level, unreadable image) are collected in the report with their
  line numbers and the batch goes on; nothing good is dropped because something else was bad.
* Idempotent and resumable: every write is an upsert on the natural key (Image.sha256, Item(image, query)) through
  :mod:`storage.repo`, committed per batch; killed and re-run, it skips what is done and finishes the rest.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.runtime import Runtime, chunks, open_runtime, settings_from

LEVEL_ALIASES = {"1": "L1", "2": "L2", "3": "L3", "l1": "L1", "l2": "L2", "l3": "L3"}


class QueriesError(ValueError):
    """The queries file as a whole cannot be used (missing, unreadable, no image/query columns)."""


@dataclass(frozen=True)
class QueryRow:
    image: str
    query: str
    level: str | None
    domain: str | None
    line: int
    bbox: str | None = None  # scene rows only: chips intersecting minx,miny,maxx,maxy (scene CRS); flows.ingest_scenes


@dataclass(frozen=True)
class IngestIssue:
    """One bad input: ``kind`` is "image" or "query"; ``ref`` the object or file; ``line`` in the queries file."""

    kind: str
    ref: str
    message: str
    line: int | None = None


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


# --- queries file ---------------------------------------------------------------------------------------------------


def _logger() -> Any:
    try:
        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a flow/task run (plain function calls, .fn())
        return logging.getLogger("geolabel.flows")


def _norm_level(raw: Any) -> str | None:
    if raw is None:
        return None
    s = str(raw).strip()
    if not s:
        return None
    lvl = LEVEL_ALIASES.get(s.lower(), s.upper())
    if lvl not in ("L1", "L2", "L3"):
        raise ValueError(f"level must be L1, L2 or L3 (or empty), got {raw!r}")
    return lvl


def parse_queries(data: bytes | str, name: str = "<queries>") -> tuple[list[QueryRow], list[IngestIssue]]:
    """Rows and per-row issues from a CSV or JSONL queries file (format from the extension, else sniffed)."""
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data.lstrip("\ufeff")
    if not text.strip():
        raise QueriesError(f"{name}: the queries file is empty")
    suffix = PurePosixPath(name).suffix.lower()
    is_jsonl = suffix in (".jsonl", ".ndjson", ".json") or (suffix not in (".csv", ".tsv") and text.lstrip()[:1] == "{")
    raw_rows: list[tuple[int, dict[str, Any] | None, str | None]] = []
    if is_jsonl:
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raw_rows.append((n, None, f"not valid JSON: {exc.msg}"))
                continue
            if not isinstance(obj, dict):
                raw_rows.append((n, None, f"expected a JSON object, got {type(obj).__name__}"))
                continue
            raw_rows.append((n, obj, None))
    else:
        delim = "\t" if suffix == ".tsv" else ","
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
        try:
            cols = [c.strip().lower() for c in (reader.fieldnames or [])]
            if "image" not in cols or "query" not in cols:
                raise QueriesError(
                    f"{name}: the CSV header must name the columns image and query, got {reader.fieldnames}"
                )
            for rec in reader:
                n = reader.line_num
                if None in rec:
                    raw_rows.append((n, None, f"more fields than the header has columns: {rec[None]!r}"))
                    continue
                raw_rows.append((n, {k.strip().lower(): v for k, v in rec.items() if k is not None}, None))
        except csv.Error as exc:  # malformed CSV (stray CR, a 128 KB field, ...): say where, never a raw csv.Error
            raise QueriesError(f"{name}: malformed CSV at line {reader.line_num}: {exc}") from None
    rows: list[QueryRow] = []
    issues: list[IngestIssue] = []
    seen: dict[tuple[str, str], int] = {}
    for n, obj, err in raw_rows:
        if err is not None or obj is None:
            issues.append(IngestIssue("query", name, err or "unreadable row", n))
            continue
        image = str(obj.get("image") or "").strip()
        query = " ".join(str(obj.get("query") or "").split())
        if not image:
            issues.append(IngestIssue("query", name, "missing image", n))
            continue
        if not query:
            issues.append(IngestIssue("query", name, f"empty query for image {image!r}", n))
            continue
        try:
            level = _norm_level(obj.get("level"))
        except ValueError as exc:
            issues.append(IngestIssue("query", name, str(exc), n))
            continue
        domain = str(obj.get("domain") or "").strip() or None
        if domain and len(domain) > 64:
            issues.append(IngestIssue("query", name, f"domain longer than 64 characters: {domain[:40]!r}...", n))
            continue
        key = (image, query)
        if key in seen:
            issues.append(IngestIssue("query", name, f"duplicate of line {seen[key]} (same image and query)", n))
            continue
        seen[key] = n
        bbox = str(obj.get("bbox") or "").strip() or None
        rows.append(QueryRow(image=image, query=query, level=level, domain=domain, line=n, bbox=bbox))
    return rows, issues


def load_queries(path_or_uri: str, client: Any = None) -> tuple[list[QueryRow], list[IngestIssue]]:
    from storage.sources import SourceError, read_bytes

    try:
        data = read_bytes(path_or_uri, client=client)
    except SourceError as exc:
        raise QueriesError(f"queries file: {exc}") from exc
    try:
        return parse_queries(data, name=str(path_or_uri))
    except UnicodeDecodeError as exc:
        raise QueriesError(f"{path_or_uri}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


# --- tasks ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisteredImage:
    name: str
    uri: str
    sha256: str | None
    image_id: int | None
    created: bool
    error: str | None = None


def image_roots(settings: Any, source: str) -> tuple[Path, ...]:
    """Where local image files may be read from: the configured ``imagery_roots``, else the local source itself.

    Paths named by a queries file, and symlinks inside the source, are resolved and refused outside these roots.
    """
    from storage.sources import is_s3

    if settings.imagery_roots:
        return tuple(settings.imagery_roots)
    if is_s3(source):
        return ()
    src = Path(source).expanduser().resolve()
    return (src if src.is_dir() else src.parent,)


def register_images(
    rt: Runtime, objects: list[Any], source: str, bands: tuple[int, ...] | None = None, copy_images: bool = True
) -> list[RegisteredImage]:
    """Read, validate and register a batch of source objects; one bad object is recorded, the others go on."""
    import sqlalchemy as sa

    from geoseg.imagery import ImageError, read_image
    from storage import repo
    from storage.blobs import sha256_hex
    from storage.models import Image
    from storage.records import ImageRecord
    from storage.sources import SourceError, read_bytes

    client = _s3_client_for(rt) if any(str(o.uri).startswith("s3://") for o in objects) else None
    roots = image_roots(rt.settings, source)
    out: list[RegisteredImage] = []
    prepared: list[tuple[Any, str, Any]] = []
    for obj in objects:
        try:
            data = read_bytes(obj.uri, client=client, roots=roots)
            sha = sha256_hex(data)
            loaded = read_image(data, bands=bands, name=obj.uri)
            if copy_images:
                rt.blobs.put(data)
            prepared.append((obj, sha, ImageRecord.from_loaded(loaded, sha256=sha, uri=obj.uri, source=source)))
        except (ImageError, SourceError, ValueError) as exc:
            out.append(RegisteredImage(obj.name, obj.uri, None, None, False, str(exc)))
    if prepared:
        with rt.session() as s:
            shas = [sha for _, sha, _ in prepared]
            known = set(s.scalars(sa.select(Image.sha256).where(Image.sha256.in_(shas))))
            ids = repo.upsert_images(s, [rec for _, _, rec in prepared])
        for obj, sha, _ in prepared:
            out.append(RegisteredImage(obj.name, obj.uri, sha, ids[sha], sha not in known))
            known.add(sha)  # the same bytes under a second name are not a new image
    return out


ItemOutcome = tuple[QueryRow, int | None, bool, str | None]


def register_items(rt: Runtime, rows: list[tuple[int, QueryRow]]) -> list[ItemOutcome]:
    """Upsert items for (image id, row) pairs; returns (row, item id, created, error) per row."""
    import sqlalchemy as sa

    from storage import repo
    from storage.models import Item
    from storage.records import ItemRecord

    out: list[ItemOutcome] = []
    good: list[tuple[QueryRow, ItemRecord]] = []
    for image_id, row in rows:
        try:
            good.append((row, ItemRecord(image_id=image_id, query=row.query, level=row.level, domain=row.domain)))
        except ValueError as exc:
            out.append((row, None, False, str(exc)))
    if good:
        with rt.session() as s:
            image_ids = sorted({rec.image_id for _, rec in good})
            known = set(s.execute(sa.select(Item.image_id, Item.query).where(Item.image_id.in_(image_ids))).tuples())
            ids = repo.upsert_items(s, [rec for _, rec in good])
        for row, rec in good:
            key = (rec.image_id, rec.query)
            out.append((row, ids[key], key not in known, None))
            known.add(key)  # a second row for the same (image, query) is not a new item
    return out


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
    from storage.blobs import s3_client

    return s3_client(endpoint_url=rt.settings.s3_endpoint_url)


def resolve_image(row: QueryRow, by_ref: dict[str, RegisteredImage]) -> RegisteredImage | None:
    return by_ref.get(row.image) or by_ref.get(row.image.lstrip("./"))


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
    from storage.sources import is_s3, list_images

    log = _logger()
    settings = settings_from(settings_overrides)
    rt = open_runtime(settings)
    if settings.imagery_roots and not is_s3(source):
        from storage.sources import check_within_roots

        check_within_roots(source, settings.imagery_roots)  # a clear error before anything is read
    client = _s3_client_for(rt) if is_s3(source) or is_s3(queries) else None
    from flows import ingest_scenes as geo

    objects = geo.http_objects(source) or list_images(source, client=client)
    rows, issues = load_queries(queries, client=client)
    log.info("ingest: %d image object(s) under %s, %d query row(s) in %s", len(objects), source, len(rows), queries)

    # objects named by the queries file but outside the listing (full URIs / absolute paths) are fetched too
    listed = {o.uri for o in objects}
    from storage.sources import SourceObject

    extra = []
    for r in rows:
        if (is_s3(r.image) or geo.is_http(r.image) or Path(r.image).is_absolute()) and r.image not in listed:
            extra.append(SourceObject(uri=r.image, name=r.image, size=0))
            listed.add(r.image)
    objects = objects + extra

    tb = tuple(bands) if bands else None
    scene_objs, objects = geo.split_scenes(objects, tile_size, settings.s3_endpoint_url, image_roots(settings, source))
    scene_futures = [
        geo.register_scene_task.submit(settings_overrides, o, source, tb, tile_size, tile_overlap, max_chips)
        for o in scene_objs
    ]
    futures = [
        register_images_task.submit(settings_overrides, batch, source, tb, copy_images)
        for batch in chunks(objects, batch_size)
    ]
    registered: list[RegisteredImage] = [r for f in futures for r in f.result()]
    scenes = [f.result() for f in scene_futures]
    issue_list = list(issues) + [IngestIssue("image", sc.uri, sc.error) for sc in scenes if sc.error]
    by_scene = geo.scene_refs(scenes)
    by_ref: dict[str, RegisteredImage] = {}
    basename_count: dict[str, int] = {}
    for reg in registered:
        by_ref[reg.name] = reg
        by_ref[reg.uri] = reg
        b = PurePosixPath(reg.name).name
        basename_count[b] = basename_count.get(b, 0) + 1
    for reg in registered:
        b = PurePosixPath(reg.name).name
        if basename_count[b] == 1:
            by_ref.setdefault(b, reg)
        if reg.error:
            issue_list.append(IngestIssue("image", reg.uri, reg.error))
            log.warning("ingest: skipped image %s: %s", reg.uri, reg.error)

    pending: list[tuple[int, QueryRow]] = []
    for r in rows:
        reg = resolve_image(r, by_ref)
        if reg is None and (sc := by_scene.get(r.image)) is not None:
            chip_rows, err = geo.scene_rows(r, sc)
            pending.extend(chip_rows)
            if err:
                issue_list.append(IngestIssue("query", queries, err, r.line))
        elif reg is None:
            hint = ""
            if basename_count.get(r.image, 0) > 1:
                hint = " (several images share that file name: use the relative path)"
            issue_list.append(IngestIssue("query", queries, f"image {r.image!r} is not in {source}{hint}", r.line))
        elif reg.image_id is None:
            msg = f"image {r.image!r} could not be ingested: {reg.error}"
            issue_list.append(IngestIssue("query", queries, msg, r.line))
        else:
            pending.append((reg.image_id, r))
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
    return report
