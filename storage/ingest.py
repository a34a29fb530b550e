"""Image registration and image-name resolution: the domain half of ``flows.ingest`` (the flow only orchestrates).

* :func:`register_images`: read, decode (``geoseg.imagery.read_image``), hash, copy into the blob store and upsert
  one batch of source objects; a bad object is recorded with its reason and the others go on.
* :func:`register_items`: upsert (image, query) items for queries-file rows, keyed on the image and the query key
  (:func:`geoseg.vocabulary.query_key`), so a query typed with other case/spacing/Unicode form is the same item.
* :class:`ImageIndex`: which registered image a queries-file ``image`` names (relative path, unique bare file name
  or full URI; ``..`` is never followed).
* :func:`image_bytes`: an image's bytes from the blob store, else from its source URI.

Functions take a *store*: any object with ``settings`` (:class:`storage.settings.Settings`), ``blobs``
(:class:`storage.blobs.BlobStore`) and ``session()`` (a ``session_scope`` context) -- ``flows.runtime.Runtime`` is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from storage.queries_file import IngestIssue, QueryRow
from storage.sources import SourceObject, is_s3


class Store(Protocol):
    settings: Any
    blobs: Any

    def session(self) -> Any: ...


@dataclass(frozen=True)
class RegisteredImage:
    name: str
    uri: str
    sha256: str | None
    image_id: int | None
    created: bool
    error: str | None = None


#: (row, item id, created, error) per queries-file row given to :func:`register_items`.
ItemOutcome = tuple[QueryRow, int | None, bool, str | None]


def s3_client_for(settings: Any) -> Any:
    """A boto3 S3 client for the configured endpoint (``settings.s3_endpoint_url``)."""
    from storage.blobs import s3_client

    return s3_client(endpoint_url=settings.s3_endpoint_url)


def image_roots(settings: Any, source: str) -> tuple[Path, ...]:
    """Where local image files may be read from: the configured ``imagery_roots``, else the local source itself.

    Paths named by a queries file, and symlinks inside the source, are resolved and refused outside these roots.
    """
    if settings.imagery_roots:
        return tuple(settings.imagery_roots)
    if is_s3(source):
        return ()
    src = Path(source).expanduser().resolve()
    return (src if src.is_dir() else src.parent,)


def image_bytes(blobs: Any, sha256: str, uri: str, *, client: Any = None, settings: Any = None) -> bytes:
    """The bytes of image ``sha256``: the blob store's copy when it has one, else read from ``uri`` (local or S3,
    with ``client`` or one for ``settings.s3_endpoint_url``). ``SourceError`` when neither has it."""
    from storage.sources import SourceError, read_bytes

    if blobs.exists(sha256):
        return blobs.get(sha256)
    if client is None and is_s3(uri) and settings is not None:
        client = s3_client_for(settings)
    try:
        return read_bytes(uri, client=client)
    except SourceError as exc:
        raise SourceError(f"image {sha256[:12]}: not in the blob store, and {exc}") from exc


def load_rgb(store: Store, sha256: str, uri: str) -> Any:
    """Image ``sha256`` decoded to (H, W, 3) uint8 (``geoseg.imagery.read_image``), bytes from :func:`image_bytes`."""
    from geoseg.imagery import read_image
    from storage.scenes import source_name

    return read_image(image_bytes(store.blobs, sha256, uri, settings=store.settings), name=source_name(uri)).rgb


def register_images(
    store: Store, objects: list[Any], source: str, bands: tuple[int, ...] | None = None, copy_images: bool = True
) -> list[RegisteredImage]:
    """Read, validate and register a batch of source objects; one bad object is recorded, the others go on."""
    from geoseg.imagery import ImageError, read_image
    from storage import repo
    from storage.blobs import sha256_hex
    from storage.records import ImageRecord
    from storage.sources import SourceError, read_bytes

    client = s3_client_for(store.settings) if any(is_s3(str(o.uri)) for o in objects) else None
    roots = image_roots(store.settings, source)
    out: list[RegisteredImage] = []
    prepared: list[tuple[Any, str, Any]] = []
    for obj in objects:
        try:
            data = read_bytes(obj.uri, client=client, roots=roots)
            sha = sha256_hex(data)
            loaded = read_image(data, bands=bands, name=obj.uri)
            if copy_images:
                store.blobs.put(data)
            prepared.append((obj, sha, ImageRecord.from_loaded(loaded, sha256=sha, uri=obj.uri, source=source)))
        except (ImageError, SourceError, ValueError) as exc:
            out.append(RegisteredImage(obj.name, obj.uri, None, None, False, str(exc)))
    if prepared:
        with store.session() as s:
            known = repo.known_image_shas(s, [sha for _, sha, _ in prepared])
            ids = repo.upsert_images(s, [rec for _, _, rec in prepared])
        for obj, sha, _ in prepared:
            out.append(RegisteredImage(obj.name, obj.uri, sha, ids[sha], sha not in known))
            known.add(sha)  # the same bytes under a second name are not a new image
    return out


def register_items(store: Store, rows: list[tuple[int, QueryRow]]) -> list[ItemOutcome]:
    """Upsert items for (image id, row) pairs; returns (row, item id, created, error) per row."""
    from storage import repo
    from storage.records import ItemRecord

    out: list[ItemOutcome] = []
    good: list[tuple[QueryRow, ItemRecord]] = []
    for image_id, row in rows:
        try:
            good.append((row, ItemRecord(image_id=image_id, query=row.query, level=row.level, domain=row.domain)))
        except ValueError as exc:
            out.append((row, None, False, str(exc)))
    if good:
        with store.session() as s:
            known = repo.item_keys(s, sorted({rec.image_id for _, rec in good}))
            ids = repo.upsert_items(s, [rec for _, rec in good])
        for row, rec in good:
            key = (rec.image_id, rec.query_key)
            out.append((row, ids[(rec.image_id, rec.query)], key not in known, None))
            known.add(key)  # a second row for the same (image, query key) is not a new item
    return out


def resolve_image(row: QueryRow, by_ref: dict[str, RegisteredImage]) -> RegisteredImage | None:
    return by_ref.get(row.image) or by_ref.get(row.image.lstrip("./"))


def named_objects(rows: Iterable[QueryRow], objects: list[SourceObject]) -> list[SourceObject]:
    """Objects a queries file names by full URI or absolute path that the source listing does not hold."""
    listed = {o.uri for o in objects}
    extra: list[SourceObject] = []
    for r in rows:
        named_uri = is_s3(r.image) or r.image.startswith(("http://", "https://")) or Path(r.image).is_absolute()
        if named_uri and r.image not in listed:
            extra.append(SourceObject(uri=r.image, name=r.image, size=0))
            listed.add(r.image)
    return extra


class ImageIndex:
    """Registered images by every name a queries file may use: relative path, full URI, bare file name if unique."""

    def __init__(self, registered: Iterable[RegisteredImage]) -> None:
        self.registered = list(registered)
        self.by_ref: dict[str, RegisteredImage] = {}
        self.basename_count: dict[str, int] = {}
        for reg in self.registered:
            self.by_ref[reg.name] = reg
            self.by_ref[reg.uri] = reg
            b = PurePosixPath(reg.name).name
            self.basename_count[b] = self.basename_count.get(b, 0) + 1
        for reg in self.registered:
            b = PurePosixPath(reg.name).name
            if self.basename_count[b] == 1:
                self.by_ref.setdefault(b, reg)

    def image_issues(self) -> list[IngestIssue]:
        return [IngestIssue("image", r.uri, r.error) for r in self.registered if r.error]

    def match(
        self,
        rows: Iterable[QueryRow],
        source: str,
        queries: str,
        fallback: Callable[[QueryRow], tuple[list[tuple[int, QueryRow]], str | None] | None] | None = None,
    ) -> tuple[list[tuple[int, QueryRow]], list[IngestIssue]]:
        """(image id, row) for every row whose image is registered; an issue (with its line) for every other row.

        ``fallback(row)``, for a row naming no registered image, may give that row's (image id, row) pairs and an
        error (a row naming a scene: one pair per chip, ``storage.scenes.scene_rows``), or None."""
        pending: list[tuple[int, QueryRow]] = []
        issues: list[IngestIssue] = []
        for r in rows:
            reg = resolve_image(r, self.by_ref)
            got = fallback(r) if reg is None and fallback is not None else None
            if got is not None:
                more, err = got
                pending.extend(more)
                if err:
                    issues.append(IngestIssue("query", queries, err, r.line))
            elif reg is None:
                hint = ""
                if self.basename_count.get(r.image, 0) > 1:
                    hint = " (several images share that file name: use the relative path)"
                issues.append(IngestIssue("query", queries, f"image {r.image!r} is not in {source}{hint}", r.line))
            elif reg.image_id is None:
                issues.append(IngestIssue("query", queries, f"image {r.image!r} could not be ingested: {reg.error}",
                                          r.line))
            else:
                pending.append((reg.image_id, r))
        return pending, issues
