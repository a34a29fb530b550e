"""Counts per stage and per model version: what ``geolabel status`` prints (``--json``: :func:`collect_status`)."""

from __future__ import annotations

from typing import Any


def collect_status(rt: Any) -> dict[str, Any]:
    """A JSON-able summary of the database behind ``rt`` (a :class:`flows.runtime.Runtime`).

    Keys: ``images``, ``items``, ``predictions``, ``tasks``, ``annotations``, ``triplets`` (each a dict with at least
    ``total``), ``prelabel_quality`` (one row per model version: acceptance rate, IoU of the pre-label against the
    accepted mask, share accepted unchanged, median lead time), plus ``database`` (URL, password masked) and
    ``blob_store``. The counts come from :func:`storage.status.stage_counts`.
    """
    from storage.db import safe_url
    from storage.status import stage_counts

    with rt.session() as s:
        counts = stage_counts(s, rt.blobs)
    return {"database": safe_url(rt.settings.database_url), "blob_store": str(rt.settings.blob_url), **counts}
