"""What every flow needs: the settings, a database engine with the schema in place, and the blob store.

One :class:`Runtime` per (database URL, blob URL) per process, built on first use; flows take JSON-able parameters
(deployments serialise them) and open their runtime here instead of receiving engines or clients.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.repo.base import chunked as chunks  # noqa: F401 - the one batching helper, under its flows name

_lock = threading.Lock()
_cache: dict[tuple[str, str], Runtime] = {}


@dataclass(frozen=True)
class Runtime:
    settings: Any  # storage.settings.Settings
    engine: Any  # sqlalchemy Engine
    blobs: Any  # storage.blobs.BlobStore

    def session(self) -> Any:
        from storage.db import session_scope

        return session_scope(self.engine)


def ensure_schema(engine: Any, url: str) -> None:
    """Bring the database to the current schema: Alembic ``upgrade head`` when the project ships migrations,
    otherwise the models' ``create_all`` (both are no-ops on an up-to-date database)."""
    from storage import db

    migrations = Path(db.__file__).resolve().parent.parent / "migrations" / "env.py"
    if migrations.is_file():
        db.upgrade(url)
    else:
        db.create_all(engine)


def open_runtime(settings: Any = None, *, init_schema: bool = True) -> Runtime:
    """The runtime for ``settings`` (default ``Settings.load()``), cached per database and blob URL."""
    from storage.blobs import open_blob_store
    from storage.db import make_engine
    from storage.settings import Settings

    settings = settings or Settings.load()
    key = (settings.database_url, settings.blob_url)
    with _lock:
        rt = _cache.get(key)
        if rt is not None:
            return rt
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.database_url)
        if init_schema:
            ensure_schema(engine, settings.database_url)
        kw: dict[str, Any] = {}
        if str(settings.blob_url).startswith("s3://") and settings.s3_endpoint_url:
            kw["endpoint_url"] = settings.s3_endpoint_url
        blobs = open_blob_store(settings.blob_url, **kw)
        rt = Runtime(settings=settings, engine=engine, blobs=blobs)
        _cache[key] = rt
        return rt


def forget_runtimes() -> None:
    """Dispose cached engines (tests, and processes that switch settings)."""
    with _lock:
        for rt in _cache.values():
            rt.engine.dispose()
        _cache.clear()


def settings_from(overrides: dict[str, Any] | None) -> Any:
    """``Settings.load(**overrides)`` pointed at the data dir's local Label Studio (:func:`with_local_label_studio`);
    flows accept overrides as a plain dict so deployments can carry them."""
    from storage.settings import Settings

    return with_local_label_studio(Settings.load(**(overrides or {})), overrides)


def with_local_label_studio(settings: Any, overrides: dict[str, Any] | None = None) -> Any:
    """``settings`` with the URL of the Label Studio this data dir started (``<data_dir>/labelstudio/server.json``),
    unless a URL was set explicitly (override, ``GEOLABEL_LABEL_STUDIO_URL``, or a non-default value in the config
    file). Its token is found the same way when needed (``labeling.server.token_for``)."""
    import dataclasses

    from labeling.server import recorded_url

    default = next(f.default for f in dataclasses.fields(settings) if f.name == "label_studio_url")
    if (
        (overrides or {}).get("label_studio_url")
        or os.environ.get("GEOLABEL_LABEL_STUDIO_URL")
        or settings.label_studio_url != default
    ):
        return settings
    url = recorded_url(settings.data_dir)
    return settings.with_(label_studio_url=url) if url else settings

