"""Label Studio storage connections for the images of the project's tasks, so that no task holds an expiring link.

* Local imagery: one **local-files storage** per imagery root (the directory the images sit in, e.g. the data dir's
  ``display/`` renditions or an ingested imagery root). Tasks hold ``/data/local-files/?d=<path below Label Studio's
  LOCAL_FILES_DOCUMENT_ROOT>``; Label Studio serves such a file only below a local storage of the task's project, to a
  user with access to that project (see ``labeling.server`` for the document root).
* S3 imagery: one **S3 source storage** per (bucket, endpoint) with ``presign=True``; tasks hold the storage URI
  ``s3://bucket/key`` and Label Studio turns it into ``/tasks/<id>/resolve/?fileuri=<base64 of the URI>`` when a task
  is shown, which redirects (303) to a presigned GET URL made at that moment, valid ``presign_ttl`` minutes. Nothing
  is presigned at push time, so a campaign can run for months.

Both are created idempotently through Label Studio's API (found by path, or by bucket + prefix + endpoint, before
anything is created). The S3 storage needs credentials that Label Studio keeps in its own database: they come from
boto3's usual chain (environment, profile, role) and are never logged.

:func:`migrate_project_images` moves an existing project to storage URIs: every task whose ``data.image`` is a
presigned S3 URL is rewritten in place to its ``s3://`` URI (``PATCH /api/tasks/<id>``: task ids, annotations and
predictions are kept), and the storages the tasks need are ensured.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from labeling.client import LabelStudioClient

log = logging.getLogger(__name__)

LOCAL_FILES_PREFIX = "/data/local-files/?d="
#: Minutes a view-time presigned URL stays valid (Label Studio's ``presign_ttl``; it re-presigns on every view).
DEFAULT_PRESIGN_TTL_MIN = 15
STORAGE_TITLE = "geolabel imagery"


class StorageError(RuntimeError):
    """A storage connection cannot be made or an image has no storage that serves it."""


# --- URIs -----------------------------------------------------------------------------------------------------------


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key); a one-line ValueError for anything else."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri}: not an s3://bucket/key URI")
    return bucket, key


def s3_uri_of_presigned(url: str, endpoint_url: str | None = None) -> str | None:
    """The ``s3://bucket/key`` a presigned S3 GET URL points at, or None when ``url`` is not a presigned S3 URL.

    Path-style URLs (``<endpoint>/<bucket>/<key>?X-Amz-…``: a custom endpoint such as moto or MinIO) and AWS
    virtual-hosted URLs (``https://<bucket>.s3[.<region>].amazonaws.com/<key>?X-Amz-…``) are recognised; SigV4
    (``X-Amz-Signature``) and SigV2 (``Signature`` + ``AWSAccessKeyId``) query strings both count as presigned.
    """
    p = urlparse(url)
    if p.scheme not in ("http", "https"):
        return None
    q = parse_qs(p.query)
    if "X-Amz-Signature" not in q and not ("Signature" in q and "AWSAccessKeyId" in q):
        return None
    host = (p.hostname or "").lower()
    path = unquote(p.path).lstrip("/")
    vhost = host.split(".s3", 1)[0] if ".s3" in host and host.endswith("amazonaws.com") else None
    if vhost:
        bucket, key = vhost, path
    else:
        if endpoint_url is not None:
            e = urlparse(endpoint_url)
            if (e.hostname or "").lower() != host or e.port != p.port:
                return None
        bucket, _, key = path.partition("/")
    return f"s3://{bucket}/{key}" if bucket and key else None


def unresolved_uri(url: str) -> str:
    """The storage URI behind Label Studio's view-time form ``…/tasks/<id>/resolve/?fileuri=<base64 URI>`` (what
    the task API shows for a URI a storage resolves), else ``url`` itself."""
    import base64

    if "/resolve/" not in url:
        return url
    fileuri = parse_qs(urlparse(url).query).get("fileuri")
    if not fileuri:
        return url
    try:
        return base64.urlsafe_b64decode(fileuri[0].encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return unquote(fileuri[0])


def local_files_path(url: str, document_root: str | Path) -> Path | None:
    """The file a ``/data/local-files/?d=…`` URL serves (absolute), or None for other URLs."""
    marker = url.find(LOCAL_FILES_PREFIX)
    if marker < 0:
        return None
    rel = unquote(url[marker + len(LOCAL_FILES_PREFIX) :])
    return Path(document_root) / rel


def s3_blob_uri(blobs: Any, sha: str) -> str:
    """The ``s3://`` URI of blob ``sha`` in a ``storage.blobs.S3BlobStore`` (its public ``bucket`` and ``prefix``)."""
    from storage.blobs import blob_key

    key = blob_key(sha)
    prefix = str(getattr(blobs, "prefix", "") or "").strip("/")
    return f"s3://{blobs.bucket}/{prefix + '/' if prefix else ''}{key}"


# --- storages -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Connection:
    """Where Label Studio reaches a bucket: endpoint (None: AWS), region, and the view-time presign TTL."""

    endpoint_url: str | None = None
    region: str | None = None
    presign_ttl_min: int = DEFAULT_PRESIGN_TTL_MIN

    @classmethod
    def from_settings(cls, settings: Any, **kw: Any) -> S3Connection:  # storage.settings.Settings
        import os

        kw.setdefault("region", os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"))
        return cls(endpoint_url=settings.s3_endpoint_url, **kw)

    def credentials(self) -> dict[str, str]:
        """Credentials from boto3's chain, as Label Studio's storage fields (empty when none are configured)."""
        import boto3

        creds = boto3.Session().get_credentials()
        if creds is None:
            return {}
        frozen = creds.get_frozen_credentials()
        out = {"aws_access_key_id": frozen.access_key, "aws_secret_access_key": frozen.secret_key}
        if frozen.token:
            out["aws_session_token"] = frozen.token
        return out


def ensure_local_storage(client: LabelStudioClient, project_id: int, root: str | Path) -> int:
    """The id of the project's local-files storage for directory ``root``; created when missing."""
    path = str(Path(root).expanduser().resolve())
    for s in client.local_storages(project_id):
        if str(s.get("path", "")).rstrip("/") == path.rstrip("/"):
            return int(s["id"])
    try:
        made = client.create_local_storage(project_id, path, title=STORAGE_TITLE)
    except Exception as exc:
        raise StorageError(f"Label Studio refused a local-files storage for {path}: {exc}") from exc
    log.info("storage: local-files storage %s for %s in project %d", made.get("id"), path, project_id)
    return int(made["id"])


def s3_storages(client: LabelStudioClient, project_id: int) -> list[dict[str, Any]]:
    return client.request("GET", "/api/storages/s3", params={"project": int(project_id)})


def ensure_s3_storage(
    client: LabelStudioClient, project_id: int, bucket: str, connection: S3Connection, *, prefix: str = ""
) -> int:
    """The id of the project's S3 source storage for ``bucket`` (+ ``prefix``) at ``connection.endpoint_url``, with
    view-time presigning; created (never synced: tasks come from push, not from a bucket scan) when missing. An
    existing one keeps its settings except ``presign``/``presign_ttl``, which are brought to ``connection``'s."""
    endpoint = connection.endpoint_url or ""
    for s in s3_storages(client, project_id):
        if s.get("bucket") == bucket and (s.get("prefix") or "") == prefix and (s.get("s3_endpoint") or "") == endpoint:
            if not s.get("presign") or int(s.get("presign_ttl") or 0) != connection.presign_ttl_min:
                client.request("PATCH", f"/api/storages/s3/{int(s['id'])}",
                               json_body={"presign": True, "presign_ttl": connection.presign_ttl_min})
            return int(s["id"])
    body: dict[str, Any] = {
        "project": int(project_id),
        "title": f"{STORAGE_TITLE} s3://{bucket}/{prefix}".rstrip("/"),
        "bucket": bucket,
        "prefix": prefix,
        "use_blob_urls": True,
        "presign": True,
        "presign_ttl": int(connection.presign_ttl_min),
        "recursive_scan": True,
        "s3_endpoint": endpoint,
        "region_name": connection.region or "us-east-1",
        **connection.credentials(),
    }
    try:
        made = client.request("POST", "/api/storages/s3", json_body=body)
    except Exception as exc:  # the message is Label Studio's (it never echoes the secret key)
        raise StorageError(f"Label Studio refused an S3 storage for s3://{bucket} at {endpoint or 'AWS'}: "
                           f"{exc}") from exc
    log.info("storage: S3 storage %s for s3://%s in project %d", made.get("id"), bucket, project_id)
    return int(made["id"])


@dataclass
class StorageNeeds:
    """The storages a set of task image URLs needs: local directories and S3 buckets."""

    local_roots: set[Path] = field(default_factory=set)
    buckets: set[str] = field(default_factory=set)

    def ensure(self, client: LabelStudioClient, project_id: int, s3: S3Connection | None = None) -> list[int]:
        """Create what is missing (idempotent); returns the storage ids."""
        ids = [ensure_local_storage(client, project_id, root) for root in sorted(self.local_roots)]
        if self.buckets and s3 is None:
            raise StorageError(f"tasks refer to S3 buckets {sorted(self.buckets)} but no S3 connection was given")
        ids += [ensure_s3_storage(client, project_id, b, s3) for b in sorted(self.buckets)]  # type: ignore[arg-type]
        return ids


def needs_of(image_urls: Iterable[str], *, roots: Iterable[str | Path] = (), document_root: str | Path | None = None
             ) -> StorageNeeds:
    """The storages for ``image_urls``: each ``s3://`` URI's bucket, and for each local-files URL the imagery root in
    ``roots`` that holds it (else its own directory)."""
    needs = StorageNeeds()
    resolved_roots = [Path(r).expanduser().resolve() for r in roots]
    for url in image_urls:
        if url.startswith("s3://"):
            needs.buckets.add(parse_s3_uri(url)[0])
            continue
        path = local_files_path(url, document_root) if document_root is not None else None
        if path is None:
            continue
        root = next((r for r in resolved_roots if r == path.parent or r in path.parents), path.parent)
        needs.local_roots.add(root)
    return needs


# --- migration ------------------------------------------------------------------------------------------------------


@dataclass
class MigrationReport:
    tasks_seen: int = 0
    updated: int = 0  # tasks whose data.image now holds a storage URI
    already: int = 0  # tasks that held a storage URI (s3:// or local-files) before
    other: int = 0  # http(s) images that are not presigned S3 URLs: left as they are
    failed: list[tuple[int, str]] = field(default_factory=list)  # (task id, reason)
    storages: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks_seen": self.tasks_seen, "updated": self.updated, "already": self.already,
                "other": self.other, "failed": list(self.failed), "storages": list(self.storages)}


def migrate_project_images(
    client: LabelStudioClient,
    project_id: int,
    *,
    s3: S3Connection | None = None,
    document_root: str | Path | None = None,
    roots: Iterable[str | Path] = (),
    field_name: str = "image",
    dry_run: bool = False,
) -> MigrationReport:
    """Rewrite the project's presigned-URL task images to ``s3://`` URIs in place and ensure every storage its
    tasks need (S3 buckets; with ``document_root``, local-files roots). Idempotent: a second run changes nothing.

    Tasks keep their ids, annotations and predictions (only ``data.<field_name>`` changes, through ``PATCH``). A task
    that cannot be updated is listed with its reason and the rest goes on.
    """
    rep = MigrationReport()
    endpoint = s3.endpoint_url if s3 else None
    keep: list[str] = []
    changes: list[tuple[int, Mapping[str, Any], str]] = []  # (task id, data, new URI)
    for task in client.iter_tasks(project_id, fields="task_only", page_size=500):
        rep.tasks_seen += 1
        tid = int(task["id"])
        data: dict[str, Any] = {k: unresolved_uri(v) if isinstance(v, str) else v
                                for k, v in (task.get("data") or {}).items()}
        image = data.get(field_name)
        if isinstance(image, str):
            image = unresolved_uri(image)
        if not isinstance(image, str):
            rep.failed.append((tid, f"data.{field_name} is missing or not a string"))
        elif image.startswith("s3://") or LOCAL_FILES_PREFIX in image:
            rep.already += 1
            keep.append(image)
        elif (uri := s3_uri_of_presigned(image, endpoint)) is not None:
            changes.append((tid, data, uri))
        else:
            rep.other += 1
    if dry_run:
        rep.updated = len(changes)
        return rep
    # storages first: a rewritten task must resolve the moment it is shown
    needs = needs_of([*keep, *(u for _, _, u in changes)], roots=roots, document_root=document_root)
    rep.storages = needs.ensure(client, project_id, s3)
    for tid, data, uri in changes:
        try:
            client.request("PATCH", f"/api/tasks/{tid}", json_body={"data": {**data, field_name: uri}})
            rep.updated += 1
        except Exception as exc:  # noqa: BLE001 - one task's failure is reported; the rest goes on
            rep.failed.append((tid, f"{type(exc).__name__}: {exc}"))
    return rep
