"""Content-addressed blob stores: masks (and optionally images) kept by the sha256 of their bytes.

``put(data) -> sha256 hex`` is idempotent (the same bytes give the same key and are stored once); ``get(sha)`` re-hashes
what it read and raises :class:`BlobCorruptError` when the bytes no longer match their name. Keys are laid out as
``<prefix>/ab/cd/abcd…`` so that no directory grows huge.

* :class:`LocalBlobStore` -- a directory; writes are atomic (temp file + rename).
* :class:`S3BlobStore` -- a bucket and prefix through a boto3 client; ``url`` gives a presigned GET URL.
* :func:`open_blob_store` -- from a URL: ``file:///abs/dir``, a plain path, or ``s3://bucket/prefix``.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import urlparse

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class BlobError(RuntimeError):
    """A blob store operation failed; the message says which store, which key and why."""


class BlobNotFoundError(BlobError, KeyError):
    """No blob with that hash in the store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BlobCorruptError(BlobError):
    """The stored bytes do not hash to their name."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not _SHA_RE.match(sha):
        raise ValueError(f"not a sha256 hex digest (64 lowercase hex characters): {sha!r}")
    return sha


def blob_key(sha: str) -> str:
    """Relative key of a blob: ``ab/cd/<sha>``."""
    check_sha(sha)
    return f"{sha[:2]}/{sha[2:4]}/{sha}"


def _as_bytes(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise TypeError(f"blob data must be bytes, got {type(data).__name__}")


@runtime_checkable
class BlobStore(Protocol):
    """What every blob store offers."""

    def put(self, data: bytes) -> str: ...

    def get(self, sha: str) -> bytes: ...

    def exists(self, sha: str) -> bool: ...

    def url(self, sha: str, expires: int = 3600) -> str: ...

    def put_many(self, blobs: Iterable[bytes]) -> list[str]: ...


class LocalBlobStore:
    """Blobs as files under ``root`` (created on first use)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def __repr__(self) -> str:
        return f"LocalBlobStore({str(self.root)!r})"

    def _path(self, sha: str) -> Path:
        return self.root / blob_key(sha)

    def put(self, data: bytes) -> str:
        data = _as_bytes(data)
        sha = sha256_hex(data)
        path = self._path(sha)
        if path.is_file() and path.stat().st_size == len(data):
            return sha
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise BlobError(f"{self!r}: cannot write blob {sha}: {exc}") from exc
        return sha

    def put_many(self, blobs: Iterable[bytes]) -> list[str]:
        return [self.put(b) for b in blobs]

    def get(self, sha: str) -> bytes:
        path = self._path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BlobNotFoundError(f"{self!r}: no blob {sha}") from None
        except OSError as exc:
            raise BlobError(f"{self!r}: cannot read blob {sha}: {exc}") from exc
        got = sha256_hex(data)
        if got != sha:
            raise BlobCorruptError(f"{self!r}: blob {sha} is corrupt (its {len(data)} bytes hash to {got})")
        return data

    def exists(self, sha: str) -> bool:
        return self._path(sha).is_file()

    def url(self, sha: str, expires: int = 3600) -> str:
        if not self.exists(sha):
            raise BlobNotFoundError(f"{self!r}: no blob {sha}")
        return self._path(sha).as_uri()

    def delete(self, sha: str) -> None:
        self._path(sha).unlink(missing_ok=True)


class S3BlobStore:
    """Blobs as objects ``<prefix>/ab/cd/<sha>`` in an S3 bucket, through a boto3 S3 client."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        if not bucket:
            raise ValueError("S3BlobStore needs a bucket name")
        if client is None:
            import boto3

            client = boto3.client("s3")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix})"

    def _key(self, sha: str) -> str:
        k = blob_key(sha)
        return f"{self.prefix}/{k}" if self.prefix else k

    def _fail(self, op: str, sha: str, exc: Exception) -> BlobError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchBucket",):
                return BlobError(f"{self!r}: bucket {self.bucket!r} does not exist ({op} {sha})")
            if code in ("NoSuchKey", "404", "NotFound"):
                return BlobNotFoundError(f"{self!r}: no blob {sha}")
            if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                return BlobError(f"{self!r}: access denied for {op} {sha} ({code})")
            return BlobError(f"{self!r}: {op} {sha} failed: {code or status} {err.get('Message', '')}".rstrip())
        return BlobError(f"{self!r}: {op} {sha} failed: {type(exc).__name__}: {exc}")

    def _head(self, sha: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(sha))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                # HEAD has no body, so a missing bucket also reads 404: tell them apart.
                self._check_bucket(sha)
                return None
            raise self._fail("head", sha, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("head", sha, exc) from exc

    def _check_bucket(self, sha: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise BlobError(f"{self!r}: bucket {self.bucket!r} does not exist") from None
            raise self._fail("head_bucket", sha, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("head_bucket", sha, exc) from exc

    def put(self, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        data = _as_bytes(data)
        sha = sha256_hex(data)
        head = self._head(sha)
        if head is not None and int(head.get("ContentLength", -1)) == len(data):
            return sha
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(sha),
                Body=data,
                ContentType="application/octet-stream",
                Metadata={"sha256": sha},
            )
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("put", sha, exc) from exc
        return sha

    def put_many(self, blobs: Iterable[bytes]) -> list[str]:
        return [self.put(b) for b in blobs]

    def get(self, sha: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(sha)
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            data = obj["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("get", sha, exc) from exc
        got = sha256_hex(data)
        if got != sha:
            raise BlobCorruptError(f"{self!r}: blob {sha} is corrupt (its {len(data)} bytes hash to {got})")
        return data

    def exists(self, sha: str) -> bool:
        return self._head(sha) is not None

    def url(self, sha: str, expires: int = 3600) -> str:
        """A presigned GET URL valid for ``expires`` seconds."""
        if not 1 <= int(expires) <= 7 * 24 * 3600:
            raise ValueError(f"expires must be between 1 s and 7 days, got {expires}")
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(sha)}, ExpiresIn=int(expires)
        )

    def delete(self, sha: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(sha))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("delete", sha, exc) from exc


def s3_client(endpoint_url: str | None = None, region: str | None = None, **kwargs: Any) -> Any:
    """A boto3 S3 client; ``endpoint_url`` defaults to env ``GEOLABEL_S3_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL``.

    Credentials come from boto3's usual chain (env, profile, instance role); nothing is passed or logged here.
    """
    import boto3
    from botocore.config import Config

    endpoint_url = endpoint_url or os.environ.get("GEOLABEL_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs.setdefault("config", Config(retries={"max_attempts": 3, "mode": "standard"}, signature_version="s3v4"))
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, **kwargs)


def open_blob_store(url: str | Path, **kw: Any) -> BlobStore:
    """A blob store from a URL: ``file:///dir`` or a path -> local; ``s3://bucket/prefix`` -> S3.

    For S3, ``client=`` may be given; otherwise one is made by :func:`s3_client` (``endpoint_url=`` passed on).
    """
    text = str(url)
    parsed = urlparse(text)
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"file URLs must be local (file:///abs/path), got {text!r}")
            path = parsed.path
        else:
            path = text
        if not path:
            raise ValueError("empty blob store path")
        return LocalBlobStore(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"s3 URL needs a bucket: s3://bucket/prefix, got {text!r}")
        client = kw.pop("client", None) or s3_client(**kw)
        return S3BlobStore(parsed.netloc, parsed.path.strip("/"), client)
    raise ValueError(f"unsupported blob store URL {text!r}: use file:///dir, a path, or s3://bucket/prefix")
