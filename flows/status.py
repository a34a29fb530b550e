"""Counts per stage and per model version: what ``geolabel status`` prints (``--json``: :func:`collect_status`)."""

from __future__ import annotations

from typing import Any


def collect_status(rt: Any) -> dict[str, Any]:
    """A JSON-able summary of the database behind ``rt`` (a :class:`flows.runtime.Runtime`).

    Keys: ``images``, ``items``, ``predictions``, ``tasks``, ``annotations``, ``triplets`` (each a dict with at least
    ``total``), ``prelabel_quality`` (one row per model version: acceptance rate, IoU of the pre-label against the
    accepted mask, share accepted unchanged, median lead time), plus ``database`` (URL, password masked) and
    ``blob_store``.
    """
    import sqlalchemy as sa

    from storage.datasets.quality import consensus_quality, prelabel_quality
    from storage.db import safe_url
    from storage.models import Annotation, Image, Item, LabelProject, LabelTask, Prediction, Triplet

    def count(session: Any, q: Any) -> int:
        return int(session.execute(q).scalar_one())

    with rt.session() as s:
        images = {"total": count(s, sa.select(sa.func.count()).select_from(Image))}
        by_status = {
            str(getattr(k, "value", k)): n
            for k, n in s.execute(sa.select(Item.status, sa.func.count()).group_by(Item.status))
        }
        items = {"total": sum(by_status.values()), "by_status": dict(sorted(by_status.items()))}
        by_mv: dict[str, dict[str, int]] = {}
        q = sa.select(Prediction.model_version, Prediction.error.is_(None), sa.func.count()).group_by(
            Prediction.model_version, Prediction.error.is_(None)
        )
        for mv, ok, n in s.execute(q):
            d = by_mv.setdefault(mv, {"ok": 0, "failed": 0})
            d["ok" if ok else "failed"] += n
        predictions = {
            "total": sum(d["ok"] + d["failed"] for d in by_mv.values()),
            "failed": sum(d["failed"] for d in by_mv.values()),
            "by_model_version": dict(sorted(by_mv.items())),
        }
        q = (
            sa.select(LabelProject.label_studio_url, LabelProject.ls_project_id, sa.func.count(LabelTask.id))
            .join(LabelTask, LabelTask.label_project_id == LabelProject.id, isouter=True)
            .group_by(LabelProject.id, LabelProject.label_studio_url, LabelProject.ls_project_id)
        )
        by_project = {f"{url}/projects/{pid}": n for url, pid, n in s.execute(q)}
        q = (
            sa.select(Prediction.model_version, sa.func.count())
            .select_from(LabelTask)
            .join(Prediction, LabelTask.prediction_id == Prediction.id)
            .group_by(Prediction.model_version)
        )
        tasks_by_mv = dict(s.execute(q).tuples().all())
        tasks = {
            "total": count(s, sa.select(sa.func.count()).select_from(LabelTask)),
            "by_project": by_project,
            "by_model_version": tasks_by_mv,
        }
        q = sa.select(Annotation.verdict, Annotation.retracted, sa.func.count()).group_by(
            Annotation.verdict, Annotation.retracted
        )
        by_verdict: dict[str, int] = {}
        retracted = 0
        for verdict, is_retracted, n in s.execute(q):
            if is_retracted:
                retracted += n
            else:
                key = str(getattr(verdict, "value", verdict))
                by_verdict[key] = by_verdict.get(key, 0) + n
        annotations = {
            "total": sum(by_verdict.values()) + retracted,
            "by_verdict": dict(sorted(by_verdict.items())),
            "retracted": retracted,
        }
        q = sa.select(Triplet.withdrawn, Triplet.domain, sa.func.count()).group_by(Triplet.withdrawn, Triplet.domain)
        t_total = withdrawn = 0
        by_domain: dict[str, int] = {}
        for is_withdrawn, domain, n in s.execute(q):
            t_total += n
            if is_withdrawn:
                withdrawn += n
            else:
                by_domain[domain or "(none)"] = by_domain.get(domain or "(none)", 0) + n
        triplets = {"total": t_total, "active": t_total - withdrawn, "withdrawn": withdrawn, "by_domain": by_domain}
        quality = [q.row() for q in prelabel_quality(s, rt.blobs)]
        consensus = consensus_quality(s)
    return {
        "database": safe_url(rt.settings.database_url),
        "blob_store": str(rt.settings.blob_url),
        "images": images,
        "items": items,
        "predictions": predictions,
        "tasks": tasks,
        "annotations": annotations,
        "triplets": triplets,
        "prelabel_quality": quality,
        "consensus": consensus,
    }
