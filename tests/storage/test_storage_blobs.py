"""Blob stores: local directory and S3 against a real moto_server process (missing bucket, denied and failing
requests, corrupted objects, presigned URLs)."""

from __future__ import annotations

import hashlib
import urllib.request

import numpy as np
import pytest

from storage.blobs import (
    BlobCorruptError,
    BlobError,
    BlobNotFoundError,
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    blob_key,
    open_blob_store,
)
from storage.maskcodec import decode_mask, encode_mask
from tests.fixtures.storage import free_port, make_s3_client, start_moto_server, stop_process


def _exercise(store: BlobStore) -> str:
    data = b"hello blob" * 100
    sha = store.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.put(data) == sha  # idempotent
    assert store.put(bytearray(data)) == sha
    assert store.exists(sha)
    assert store.get(sha) == data
    other = "0" * 64
    assert not store.exists(other)
    with pytest.raises(BlobNotFoundError, match="no blob"):
        store.get(other)
    with pytest.raises(ValueError, match="sha256"):
        store.get("abc")
    with pytest.raises(TypeError, match="bytes"):
        store.put("text")  # type: ignore[arg-type]
    assert store.put_many([b"a", b"b", b"a"]) == [hashlib.sha256(x).hexdigest() for x in (b"a", b"b", b"a")]
    # an encoded mask survives the trip
    m = np.zeros((32, 32), bool)
    m[4:9, 3:30] = True
    msha = store.put(encode_mask(m))
    assert np.array_equal(decode_mask(store.get(msha), (32, 32)), m)
    return sha


def test_local_store(tmp_path):
    store = LocalBlobStore(tmp_path / "b")
    assert isinstance(store, BlobStore)
    sha = _exercise(store)
    path = tmp_path / "b" / blob_key(sha)
    assert path.is_file() and path.parent.parent.name == sha[:2]
    assert store.url(sha).startswith("file://") and store.url(sha).endswith(sha)
    assert not list((tmp_path / "b").rglob(".tmp-*"))  # no temp files left behind
    path.write_bytes(b"tampered")
    with pytest.raises(BlobCorruptError, match=f"blob {sha} is corrupt"):
        store.get(sha)
    # a put of the right bytes repairs it (sizes differ, so it is rewritten)
    store.put(b"hello blob" * 100)
    assert store.get(sha) == b"hello blob" * 100


def test_s3_store_against_moto(s3_client, s3_bucket):
    store = S3BlobStore(s3_bucket, "masks/v1", s3_client)
    assert isinstance(store, BlobStore)
    sha = _exercise(store)
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert f"masks/v1/{blob_key(sha)}" in keys
    # presigned URL: a plain HTTP GET (no credentials) gets the bytes
    url = store.url(sha, expires=60)
    assert "Signature" in url or "X-Amz-Signature" in url
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == sha
    with pytest.raises(ValueError, match="expires"):
        store.url(sha, expires=0)


def test_s3_corrupted_object(s3_client, s3_bucket):
    store = S3BlobStore(s3_bucket, "", s3_client)
    sha = store.put(b"the real bytes")
    s3_client.put_object(Bucket=s3_bucket, Key=blob_key(sha), Body=b"bit rot")
    with pytest.raises(BlobCorruptError, match="corrupt"):
        store.get(sha)


def test_s3_missing_bucket(s3_client):
    store = S3BlobStore("no-such-bucket-geolabel", "p", s3_client)
    sha = hashlib.sha256(b"x").hexdigest()
    for op in (lambda: store.put(b"x"), lambda: store.get(sha), lambda: store.exists(sha)):
        with pytest.raises(BlobError, match="bucket 'no-such-bucket-geolabel' does not exist"):
            op()


def test_s3_denied_request():
    """A second moto_server with IAM auth enforced: our fake keys are unknown to it, so every call is denied."""
    proc, endpoint = start_moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})
    try:
        store = S3BlobStore("any-bucket", "", make_s3_client(endpoint))
        with pytest.raises(BlobError, match="denied|InvalidAccessKeyId|403") as info:
            store.put(b"data")
        assert "testing" not in str(info.value)  # no credential echoed
        with pytest.raises(BlobError, match="denied|InvalidAccessKeyId|403"):
            store.get(hashlib.sha256(b"data").hexdigest())
    finally:
        stop_process(proc)


def test_s3_unreachable_endpoint():
    from botocore.config import Config

    from storage.blobs import s3_client

    client = s3_client(
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=1),
    )
    store = S3BlobStore("b", "", client)
    with pytest.raises(BlobError, match="failed: EndpointConnectionError"):
        store.put(b"data")


def test_open_blob_store(tmp_path, moto_server, s3_bucket):
    local = open_blob_store(tmp_path / "x")
    assert isinstance(local, LocalBlobStore) and local.root == (tmp_path / "x").resolve()
    assert open_blob_store((tmp_path / "y").as_uri()).root == (tmp_path / "y").resolve()
    s3 = open_blob_store(f"s3://{s3_bucket}/pre/fix", client=make_s3_client(moto_server))
    assert isinstance(s3, S3BlobStore) and s3.bucket == s3_bucket and s3.prefix == "pre/fix"
    assert s3.get(s3.put(b"via url")) == b"via url"
    for bad in ("ftp://x/y", "s3:///nobucket", "file://remotehost/x"):
        with pytest.raises(ValueError):
            open_blob_store(bad)
