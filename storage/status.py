"""Counts per stage and per model version: the numbers behind ``geolabel status`` (one read per stage)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.blobs import BlobStore
from storage.datasets.quality import consensus_quality, prelabel_quality
from storage.models import Annotation, Image, Item, LabelProject, LabelTask, Prediction, Triplet


def count(session: Session, model: Any, *where: Any) -> int:
    """Rows of ``model`` matching ``where`` (SQLAlchemy conditions)."""
    return int(session.execute(sa.select(sa.func.count()).select_from(model).where(*where)).scalar_one())


def count_predictions(session: Session, model_version: str) -> int:
    """Successful predictions stored for ``model_version``."""
    return count(session, Prediction, Prediction.model_version == model_version, Prediction.error.is_(None))


def count_label_tasks(session: Session) -> int:
    return count(session, LabelTask)


def stage_counts(session: Session, blobs: BlobStore) -> dict[str, Any]:
    """``images``, ``items``, ``predictions``, ``tasks``, ``annotations``, ``triplets`` (each a dict with at least
    ``total``) and ``prelabel_quality`` (one row per model version: acceptance rate, IoU of the pre-label against the
    accepted mask, share accepted unchanged, median lead time) and ``consensus`` (agreement per domain x level and per
    annotator, :func:`storage.datasets.quality.consensus_quality`)."""
    s = session
    images = {"total": count(s, Image)}
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
        "total": count(s, LabelTask),
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
    quality = [q.row() for q in prelabel_quality(s, blobs)]
    return {
        "images": images,
        "items": items,
        "predictions": predictions,
        "tasks": tasks,
        "annotations": annotations,
        "triplets": triplets,
        "prelabel_quality": quality,
        "consensus": consensus_quality(s),
    }
