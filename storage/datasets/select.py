"""Which triplets a dataset takes: one typed filter and the SQL it becomes (shared by COCO export and snapshots).

Only live triplets count: ``Triplet.withdrawn`` false and the accepting annotation not retracted. "No target"
decisions are annotations with verdict ``no_target`` (not retracted); they have no mask and no triplet row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from geoseg.vocabulary import LEVELS, normalise_level
from storage.models import Annotation, LabelTask, Prediction, Snapshot, SnapshotMember, Triplet, Verdict

_SNAP_RE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:@v?(?P<version>\d+))?$")


class SelectionError(ValueError):
    """A dataset filter that cannot be applied (unknown snapshot, bad level, inverted date range)."""


def parse_snapshot_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` -> (name, None) (the newest version); ``"name@3"`` / ``"name@v3"`` -> (name, 3)."""
    m = _SNAP_RE.match(ref.strip())
    if not m:
        raise SelectionError(f"not a snapshot reference {ref!r}: use NAME or NAME@VERSION (letters, digits, ._-)")
    return m["name"], int(m["version"]) if m["version"] else None


def find_snapshot(session: Session, ref: str) -> Snapshot:
    """The snapshot row for ``NAME`` (newest version) or ``NAME@VERSION``; SelectionError when there is none."""
    name, version = parse_snapshot_ref(ref)
    rows = session.scalars(sa.select(Snapshot).where(Snapshot.name == name)).all()
    if not rows:
        raise SelectionError(f"no snapshot named {name!r}")
    if version is None:
        return max(rows, key=lambda s: int(s.version))
    for s in rows:
        if int(s.version) == version:
            return s
    known = sorted(int(s.version) for s in rows)
    raise SelectionError(f"snapshot {name!r} has no version {version}; versions: {known}")


@dataclass(frozen=True)
class DatasetFilter:
    """Filters of an export: a snapshot (``NAME`` or ``NAME@VERSION``), domains, levels, a creation-date range
    ``[since, until)`` (timezone-aware), the model version whose pre-label the annotator saw, and consensus:
    ``min_agreement`` (storage.consensus agreement; single-annotator items have none and fail it; an adjudicated item
    passes -- a reviewer's decision is final) and ``min_annotators`` (annotators behind the decision)."""

    snapshot: str | None = None
    domains: tuple[str, ...] = ()
    levels: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    model_version: str | None = None
    min_agreement: float | None = None
    min_annotators: int | None = None

    def __post_init__(self) -> None:
        if self.min_agreement is not None and not 0.0 <= float(self.min_agreement) <= 1.0:
            raise SelectionError(f"min_agreement must lie in [0, 1], got {self.min_agreement}")
        if self.min_annotators is not None and int(self.min_annotators) < 1:
            raise SelectionError(f"min_annotators must be >= 1, got {self.min_annotators}")
        object.__setattr__(self, "domains", tuple(self.domains or ()))
        levels, bad = [], []
        for lv in self.levels or ():
            try:
                levels.append(normalise_level(lv))
            except ValueError:
                bad.append(lv)
        if bad or None in levels:
            raise SelectionError(f"unknown levels {bad or list(self.levels)}; use {list(LEVELS)}")
        object.__setattr__(self, "levels", tuple(levels))
        for name in ("since", "until"):
            v = getattr(self, name)
            if v is not None and (v.tzinfo is None or v.tzinfo.utcoffset(v) is None):
                raise SelectionError(f"{name} must be timezone-aware (e.g. 2026-01-01T00:00:00+00:00), got {v}")
        if self.since and self.until and self.until <= self.since:
            raise SelectionError(f"empty date range: until {self.until} is not after since {self.since}")
        if self.snapshot:
            parse_snapshot_ref(self.snapshot)

    def describe(self) -> dict[str, object]:
        return {
            "snapshot": self.snapshot, "domains": list(self.domains), "levels": list(self.levels),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None, "model_version": self.model_version,
            "min_agreement": self.min_agreement, "min_annotators": self.min_annotators,
        }


def _prelabel_version_ids(model_version: str) -> sa.Select:
    """Annotation ids whose task carried a pre-label from ``model_version``."""
    return (
        sa.select(Annotation.id)
        .join(LabelTask, Annotation.label_task_id == LabelTask.id)
        .join(Prediction, LabelTask.prediction_id == Prediction.id)
        .where(Prediction.model_version == model_version)
    )


def apply_filter(q: sa.Select, f: DatasetFilter, *, domain: sa.ColumnElement, level: sa.ColumnElement,
                 created_at: sa.ColumnElement, annotation_id: sa.ColumnElement) -> sa.Select:
    """``q`` narrowed by ``f``'s domains, levels, date range and pre-label model version, on the given columns."""
    if f.domains:
        q = q.where(domain.in_(f.domains))
    if f.levels:
        q = q.where(level.in_(f.levels))
    if f.since:
        q = q.where(created_at >= f.since)
    if f.until:
        q = q.where(created_at < f.until)
    if f.model_version:
        q = q.where(annotation_id.in_(_prelabel_version_ids(f.model_version)))
    return q


def triplet_ids(session: Session, f: DatasetFilter) -> sa.Select:
    """A SELECT of the ids of the live triplets (or the snapshot's frozen members) that pass ``f``, by id."""
    q = sa.select(Triplet.id).join(Annotation, Triplet.annotation_id == Annotation.id)
    if f.snapshot:  # a snapshot is frozen: its members stay, even if withdrawn since
        snap = find_snapshot(session, f.snapshot)
        q = q.where(Triplet.id.in_(sa.select(SnapshotMember.triplet_id).where(SnapshotMember.snapshot_id == snap.id)))
    else:
        q = q.where(Triplet.withdrawn.is_(False), Annotation.retracted.is_(False))
    q = apply_filter(q, f, domain=Triplet.domain, level=Triplet.level, created_at=Triplet.created_at,
                     annotation_id=Triplet.annotation_id)
    if f.min_agreement is not None:
        q = q.where(sa.or_(Triplet.agreement >= f.min_agreement, Triplet.adjudicated.is_(True)))
    if f.min_annotators is not None:
        q = q.where(Triplet.n_annotators >= f.min_annotators)
    return q.order_by(Triplet.id)


def no_target_annotation_ids(session: Session, f: DatasetFilter) -> sa.Select | None:
    """A SELECT of ids of live "no target" annotations that pass ``f`` (None for snapshot exports: snapshots hold
    triplets only). Domain and level come from the item."""
    from storage.models import Item, ItemConsensus

    if f.snapshot:
        return None
    q = (
        sa.select(Annotation.id)
        .join(Item, Annotation.item_id == Item.id)
        .where(Annotation.verdict == Verdict.NO_TARGET, Annotation.retracted.is_(False))
    )
    q = apply_filter(q, f, domain=Item.domain, level=Item.level, created_at=Annotation.created_at,
                     annotation_id=Annotation.id)
    if f.min_agreement is not None or f.min_annotators is not None:
        c = sa.select(ItemConsensus.annotation_id).where(ItemConsensus.annotation_id.is_not(None))
        if f.min_agreement is not None:
            c = c.where(sa.or_(ItemConsensus.agreement >= f.min_agreement, ItemConsensus.state == "adjudicated"))
        if f.min_annotators is not None:
            c = c.where(ItemConsensus.n_annotators >= f.min_annotators)
        q = q.where(Annotation.id.in_(c))  # the deciding "no target" annotation of a consensus that passes
    return q.order_by(Annotation.id)

