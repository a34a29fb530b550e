"""Where imagery comes from: a local directory (or one file) or an ``s3://bucket/prefix``.

:func:`list_images` enumerates image objects (by extension, sorted, recursive) as :class:`SourceObject` records;
:func:`read_bytes` fetches one object's bytes by its URI. Nothing here decodes images (that is
``geoseg.imagery.read_image``) or knows about Prefect or Label Studio.

Each object has a ``name``: its path relative to the source root with ``/`` separators (``sub/tile_03.tif``). The
queries file refers to images by that name, by the bare file name when it is unique, or by the full URI.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

#: Extensions listed as imagery (lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".gtiff", ".png", ".jpg", ".jpeg", ".jpe")


class SourceError(ValueError):
    """A source that cannot be listed or an object that cannot be read; the message names it."""


@dataclass(frozen=True)
class SourceObject:
    """One image object in a source: ``uri`` (absolute path or ``s3://bucket/key``), ``name`` (relative), ``size``."""

    uri: str
    name: str
    size: int

    @property
    def basename(self) -> str:
        return PurePosixPath(self.name).name


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b")."""
    p = urlparse(uri)
    if p.scheme != "s3" or not p.netloc:
        raise SourceError(f"not an s3 URI (s3://bucket/prefix): {uri!r}")
    return p.netloc, p.path.lstrip("/")


def _default_client(client: Any) -> Any:
    if client is not None:
        return client
    from storage.blobs import s3_client

    return s3_client()


def list_images(
    source: str | Path,
    *,
    client: Any = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    recursive: bool = True,
) -> list[SourceObject]:
    """Image objects under ``source`` (a directory, a single file, or an ``s3://bucket/prefix``), sorted by name.

    Hidden files and directories (leading ``.``) are skipped. Raises :class:`SourceError` when the source does not
    exist or cannot be listed; an empty list when it holds no imagery.
    """
    exts = tuple(e.lower() for e in extensions)
    if is_s3(source):
        return _list_s3(str(source), _default_client(client), exts, recursive)
    root = Path(source).expanduser()
    if not root.exists():
        raise SourceError(f"image source {root} does not exist")
    if root.is_file():
        if root.suffix.lower() not in exts:
            raise SourceError(f"{root} is not an image file (extensions: {', '.join(exts)})")
        return [SourceObject(uri=str(root.resolve()), name=root.name, size=root.stat().st_size)]
    out: list[SourceObject] = []
    root = root.resolve()
    try:
        walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
        for dirpath, dirnames, filenames in walker:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fn in filenames:
                if fn.startswith(".") or Path(fn).suffix.lower() not in exts:
                    continue
                p = Path(dirpath) / fn
                if not p.is_file():
                    continue
                out.append(SourceObject(uri=str(p), name=p.relative_to(root).as_posix(), size=p.stat().st_size))
    except OSError as exc:
        raise SourceError(f"cannot list {root}: {exc}") from exc
    return sorted(out, key=lambda o: o.name)


def _list_s3(uri: str, client: Any, exts: tuple[str, ...], recursive: bool) -> list[SourceObject]:
    bucket, prefix = split_s3(uri)
    if prefix and not prefix.endswith("/"):
        prefix_dir = prefix + "/"
    else:
        prefix_dir = prefix
    out: list[SourceObject] = []
    try:
        paginator = client.get_paginator("list_objects_v2")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix_dir}
        if not recursive:
            kwargs["Delimiter"] = "/"
        for page in paginator.paginate(**kwargs):
            for obj in page.get("Contents", []) or []:
                key = obj["Key"]
                rel = key[len(prefix_dir) :]
                if not rel or any(part.startswith(".") for part in rel.split("/")):
                    continue
                if PurePosixPath(key).suffix.lower() not in exts:
                    continue
                out.append(SourceObject(uri=f"s3://{bucket}/{key}", name=rel, size=int(obj.get("Size", 0))))
    except Exception as exc:  # botocore ClientError / EndpointConnectionError / NoCredentialsError
        raise SourceError(f"cannot list {uri}: {_s3_reason(exc)}") from exc
    if not out and prefix and not prefix.endswith("/"):
        # s3://bucket/key naming one object
        try:
            head = client.head_object(Bucket=bucket, Key=prefix)
            if PurePosixPath(prefix).suffix.lower() in exts:
                out.append(SourceObject(uri=uri, name=PurePosixPath(prefix).name, size=int(head["ContentLength"])))
        except Exception:  # noqa: BLE001 - not a single object either: the empty listing stands
            pass
    return sorted(out, key=lambda o: o.name)


def _s3_reason(exc: Exception) -> str:
    resp = getattr(exc, "response", None)
    if isinstance(resp, dict) and "Error" in resp:
        err = resp["Error"]
        return f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def check_within_roots(path: str | Path, roots: tuple[Path, ...] | list[Path]) -> Path:
    """``path`` fully resolved (``..`` and symlinks followed) when it lies under one of ``roots``; else SourceError.

    This is what keeps a queries file, a symlink planted in an imagery folder or a crafted URI from reading files
    outside the configured imagery roots.
    """
    resolved = Path(path).expanduser().resolve()
    for root in roots:
        if resolved.is_relative_to(Path(root).expanduser().resolve()):
            return resolved
    shown = ", ".join(str(r) for r in roots) or "(none)"
    raise SourceError(f"{path}: outside the configured imagery roots ({shown}); refusing to read it")


def read_bytes(uri: str | Path, *, client: Any = None, roots: tuple[Path, ...] | None = None) -> bytes:
    """The bytes of one object: a local path (or ``file://`` URI) or ``s3://bucket/key``.

    ``roots``: when given, a local path must resolve (symlinks followed) under one of them (:func:`check_within_roots`).
    """
    text = str(uri)
    if is_s3(text):
        bucket, key = split_s3(text)
        try:
            return _default_client(client).get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise SourceError(f"cannot read {text}: {_s3_reason(exc)}") from exc
    if text.startswith("file://"):
        text = urlparse(text).path
    p = Path(text)
    if roots is not None:
        p = check_within_roots(p, roots)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{p}: no such file") from None
    except OSError as exc:
        raise SourceError(f"cannot read {p}: {exc.strerror or exc}") from exc


def is_http(uri: str | Path) -> bool:
    """An ``http(s)://`` URI (a raster read through GDAL's /vsicurl/)."""
    return str(uri).startswith(("http://", "https://"))


def http_objects(source: str) -> list[Any] | None:
    """An ``http(s)://`` source is one scene object (HTTP has no listing); None for other sources."""
    if not is_http(source):
        return None
    name = PurePosixPath(str(source).split("?", 1)[0]).name or str(source)
    return [SourceObject(uri=str(source), name=name, size=0)]
