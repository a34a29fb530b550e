"""Immutable benchmark snapshots: members, manifest hash, lookup."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.models import Image, Snapshot, SnapshotMember, Triplet


class SnapshotConflictError(ValueError):
    """A snapshot (name, version) already exists with different members: snapshots are immutable."""


def manifest_sha256(entries: Sequence[dict[str, Any]]) -> str:
    """Hash of a snapshot manifest: its entries sorted by triplet id, canonical JSON."""
    canon = json.dumps(sorted(entries, key=lambda e: e["triplet_id"]), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def get_snapshot(session: Session, name: str, version: str) -> Snapshot | None:
    return session.scalars(
        sa.select(Snapshot).where(Snapshot.name == name, Snapshot.version == str(version))
    ).one_or_none()


def create_snapshot(
    session: Session,
    name: str,
    version: str,
    members: Sequence[tuple[int, str]],
    *,
    description: str | None = None,
    params: dict[str, Any] | None = None,
) -> Snapshot:
    """Freeze ``members`` (triplet id, split) as snapshot ``name``/``version``.

    Idempotent: the same members again return the existing snapshot; different members raise
    :class:`SnapshotConflictError` (bump the version instead).
    """
    if not name or not str(version):
        raise ValueError("a snapshot needs a name and a version")
    pairs = {int(t): str(s) for t, s in members}
    if len(pairs) != len(list(members)):
        raise ValueError("a triplet appears twice in the snapshot members")
    if not pairs:
        raise ValueError("a snapshot needs at least one triplet")
    rows = session.execute(
        sa.select(Triplet.id, Image.sha256, Triplet.mask_sha256, Triplet.withdrawn, Triplet.agreement,
                  Triplet.n_annotators, Triplet.adjudicated)
        .join(Image, Image.id == Triplet.image_id)
        .where(Triplet.id.in_(list(pairs)))
    ).all()
    found = {r[0]: r for r in rows}
    missing = sorted(set(pairs) - set(found))
    if missing:
        raise LookupError(f"snapshot members refer to unknown triplets {missing[:10]}")
    withdrawn = sorted(t for t, r in found.items() if r[3])
    if withdrawn:
        raise ValueError(f"triplets {withdrawn[:10]} were withdrawn (their annotation was retracted)")
    entries = [
        {"triplet_id": t, "split": pairs[t], "image_sha256": found[t][1], "mask_sha256": found[t][2]} for t in pairs
    ]
    digest = manifest_sha256(entries)
    existing = get_snapshot(session, name, str(version))
    if existing is not None:
        if existing.manifest_sha256 != digest:
            raise SnapshotConflictError(
                f"snapshot {name!r} version {version!r} already exists with other members; snapshots are immutable"
            )
        return existing
    snap = Snapshot(name=name, version=str(version), manifest_sha256=digest, description=description, params=params)
    snap.members = [  # consensus figures frozen beside the hashes (not part of the manifest digest)
        SnapshotMember(**e, agreement=found[e["triplet_id"]][4], n_annotators=found[e["triplet_id"]][5],
                       adjudicated=found[e["triplet_id"]][6])
        for e in sorted(entries, key=lambda e: e["triplet_id"])
    ]
    session.add(snap)
    session.flush()
    return snap


def snapshot_manifest(snapshot: Snapshot) -> dict[str, Any]:
    """A JSON-able manifest: name, version, created, manifest hash, and the member entries."""
    return {
        "name": snapshot.name,
        "version": snapshot.version,
        "created_at": snapshot.created_at.isoformat(),
        "manifest_sha256": snapshot.manifest_sha256,
        "description": snapshot.description,
        "params": snapshot.params,
        "members": [
            {
                "triplet_id": m.triplet_id,
                "split": m.split,
                "image_sha256": m.image_sha256,
                "mask_sha256": m.mask_sha256,
            }
            for m in snapshot.members
        ],
    }


def list_snapshots(session: Session) -> list[tuple[str, str, Any, int]]:
    """(name, version, created_at, members) of every snapshot, by name then age."""
    q = (
        sa.select(Snapshot.name, Snapshot.version, Snapshot.created_at, sa.func.count(SnapshotMember.id))
        .join(SnapshotMember, SnapshotMember.snapshot_id == Snapshot.id)
        .group_by(Snapshot.id)
        .order_by(Snapshot.name, Snapshot.id)
    )
    return [tuple(r) for r in session.execute(q)]
