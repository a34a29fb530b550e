"""Benchmark snapshots (``geolabel snapshot create NAME``): an immutable, versioned selection of accepted triplets.

A snapshot is a database record (``snapshot`` + ``snapshot_member`` rows via :func:`storage.repo.create_snapshot`,
with the hash of its member list) and a directory in the GeoSeg-Bench layout::

    <root>/<name>/v<version>/
        images/<sha16>.<ext>          each image once
        masks/<triplet id>.png        8-bit masks, 0 / 255
        annotations/<Domain>.json     lists of {id, file_name, mask_path, height, width, difficulty, question}
        manifest.json                 name, version, params, counts, members, and the sha256 of every other file

Versions count up per name (1, 2, ...): creating NAME again makes a new version, never a change to an old one.
Files are written into a hidden temporary directory, made read-only and then renamed into place, so a snapshot
directory is either complete or absent. :func:`verify_snapshot` re-hashes every file against the manifest;
:func:`read_snapshot` verifies then reads it as a :class:`geoseg.evaluation.bench.Benchmark`-compatible directory.

Stratification (optional) draws, with a seed, a sample whose domain counts and level shares follow targets such as
GeoSeg-Bench's (Urban 330, Rural 160, Traffic 240, Nature 80; L1 60 %, L2 30 %, L3 10 %): domain counts are scaled
to ``total`` (largest remainder), each domain's count is split over levels the same way, and each (domain, level)
cell is drawn without replacement. A cell with too few triplets is an error listing every shortfall, unless
``allow_shortfall`` (then the cell takes what there is, and the manifest records the shortfall).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from geoseg.vocabulary import GEOSEG_BENCH_DOMAINS, GEOSEG_BENCH_LEVELS, LEVELS
from storage import repo
from storage.blobs import BlobStore
from storage.datasets.coco import image_file_name, place_image
from storage.datasets.select import DatasetFilter, parse_snapshot_ref, triplet_ids
from storage.maskcodec import decode_mask
from storage.models import Image, Snapshot, SnapshotMember, Triplet

UNKNOWN_DOMAIN = "Unknown"
MANIFEST = "manifest.json"


class SnapshotError(ValueError):
    """A snapshot that cannot be created, found or trusted; the message says which and why."""


class StratificationError(SnapshotError):
    """Too few triplets in some (domain, level) cells for the requested stratification."""


def allocate(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` over keys in proportion to ``weights`` (largest-remainder; ties by key order)."""
    if total < 0:
        raise SnapshotError(f"total must be >= 0, got {total}")
    w = {k: float(v) for k, v in weights.items()}
    if not w or any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise SnapshotError(f"weights must be non-negative with a positive sum, got {dict(weights)}")
    s = sum(w.values())
    exact = {k: total * v / s for k, v in w.items()}
    out = {k: int(np.floor(x)) for k, x in exact.items()}
    rest = total - sum(out.values())
    for k in sorted(w, key=lambda k: (-(exact[k] - out[k]), list(w).index(k)))[:rest]:
        out[k] += 1
    return out


@dataclass(frozen=True)
class Stratification:
    """Target domain weights (counts or shares), level shares, sample size and seed.

    ``total=None`` takes the domain weights as counts (they must then be integers), e.g. GeoSeg-Bench's 810.
    """

    domains: Mapping[str, float] = field(default_factory=lambda: dict(GEOSEG_BENCH_DOMAINS))
    levels: Mapping[str, float] = field(default_factory=lambda: dict(GEOSEG_BENCH_LEVELS))
    total: int | None = None
    seed: int = 0
    allow_shortfall: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", dict(self.domains))
        object.__setattr__(self, "levels", dict(self.levels))
        if self.total is None and any(float(v) != int(v) for v in self.domains.values()):
            raise SnapshotError("domain weights are shares: give total= (the snapshot size)")
        bad = [k for k in self.levels if k not in LEVELS]
        if bad:
            raise SnapshotError(f"unknown levels {bad} in the stratification; use {', '.join(LEVELS)}")

    def targets(self) -> dict[tuple[str, str], int]:
        total = int(sum(self.domains.values())) if self.total is None else int(self.total)
        per_domain = allocate(total, self.domains)
        return {(d, lv): n for d, nd in per_domain.items() for lv, n in allocate(nd, self.levels).items()}

    def describe(self) -> dict[str, Any]:
        return {"domains": self.domains, "levels": self.levels, "total": self.total, "seed": self.seed,
                "allow_shortfall": self.allow_shortfall}


def stratified_sample(
    pool: Mapping[tuple[str, str], list[int]], strat: Stratification
) -> tuple[list[int], dict[str, Any]]:
    """Draw triplet ids from ``pool`` ((domain, level) -> sorted ids) to the targets; returns (ids, shortfall)."""
    rng = np.random.default_rng(strat.seed)
    picked: list[int] = []
    shortfall: dict[str, Any] = {}
    targets = strat.targets()
    for (d, lv) in sorted(targets):
        want, have = targets[(d, lv)], sorted(pool.get((d, lv), []))
        if want > len(have):
            shortfall[f"{d}/{lv}"] = {"wanted": want, "available": len(have)}
            want = len(have)
        if want:
            idx = rng.choice(len(have), size=want, replace=False)
            picked.extend(have[i] for i in sorted(idx))
    if shortfall and not strat.allow_shortfall:
        lines = ", ".join(f"{k}: {v['available']} of {v['wanted']}" for k, v in shortfall.items())
        raise StratificationError(f"not enough accepted triplets for the stratification ({lines}); lower total=, "
                                  "change the targets or allow the shortfall")
    return sorted(picked), shortfall


@dataclass(frozen=True)
class SnapshotInfo:
    name: str
    version: int
    path: Path
    n_triplets: int
    manifest_sha256: str
    counts: Mapping[str, Mapping[str, int]]
    shortfall: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


def snapshot_path(root: str | Path, name: str, version: int | str) -> Path:
    return Path(root) / name / f"v{int(version)}"


def next_version(session: Session, name: str) -> int:
    versions = session.scalars(sa.select(Snapshot.version).where(Snapshot.name == name)).all()
    nums = [int(v) for v in versions if str(v).isdigit()]
    return max(nums, default=0) + 1


def _sha_file(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def materialize(
    session: Session, blobs: BlobStore, snap: Snapshot, root: str | Path, *, s3_client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write snapshot ``snap``'s directory from its frozen members (no-op when a verified copy is there)."""
    from PIL import Image as PILImage

    dest = snapshot_path(root, snap.name, snap.version)
    if dest.exists():
        problems = verify_snapshot(dest)
        if problems:
            raise SnapshotError(f"{dest} exists but does not match its manifest: {problems[:5]}")
        members = json.loads((dest / MANIFEST).read_text(encoding="utf-8")).get("members_sha256")
        if members != snap.manifest_sha256:
            raise SnapshotError(
                f"{dest} holds other members than snapshot {snap.name}@{snap.version} in the database (a leftover "
                "of a create that was not committed?); move it away and run the command again"
            )
        return dest
    tmp = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("images", "masks", "annotations"):
        (tmp / sub).mkdir(parents=True)
    q = (
        sa.select(SnapshotMember.triplet_id, SnapshotMember.split, SnapshotMember.mask_sha256, Triplet.query,
                  Triplet.domain, Triplet.level, Image.id, Image.sha256, Image.uri, Image.width, Image.height,
                  Image.format, SnapshotMember.agreement, SnapshotMember.n_annotators, SnapshotMember.adjudicated)
        .join(Triplet, SnapshotMember.triplet_id == Triplet.id).join(Image, Triplet.image_id == Image.id)
        .where(SnapshotMember.snapshot_id == snap.id).order_by(SnapshotMember.triplet_id)
    )
    annotations: dict[str, list[dict[str, Any]]] = {}
    members: list[dict[str, Any]] = []
    counts: Counter[tuple[str, str]] = Counter()
    try:
        rows = session.execute(q).all()
        for i, r in enumerate(rows, 1):
            name = image_file_name(r.sha256, r.uri, r.format)
            place_image(r, tmp / "images" / name, "copy", blobs, s3_client)
            mask = decode_mask(blobs.get(r.mask_sha256), shape=(r.height, r.width))
            PILImage.fromarray(mask.astype(np.uint8) * 255, "L").save(tmp / "masks" / f"{r.triplet_id}.png")
            domain, level = r.domain or UNKNOWN_DOMAIN, r.level or "L?"
            annotations.setdefault(domain, []).append({
                "id": r.triplet_id, "file_name": f"images/{name}", "mask_path": f"masks/{r.triplet_id}.png",
                "height": r.height, "width": r.width, "difficulty": level, "question": r.query,
                "agreement": r.agreement, "n_annotators": r.n_annotators, "adjudicated": r.adjudicated,
            })
            members.append({"triplet_id": r.triplet_id, "split": r.split, "image_sha256": r.sha256,
                            "mask_sha256": r.mask_sha256, "agreement": r.agreement,
                            "n_annotators": r.n_annotators, "adjudicated": r.adjudicated})
            counts[(domain, level)] += 1
            if progress:
                progress(i, len(rows))
        for domain, entries in annotations.items():
            (tmp / "annotations" / f"{domain}.json").write_text(json.dumps(entries, indent=1), encoding="utf-8")
        files = {p.relative_to(tmp).as_posix(): _sha_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        nested: dict[str, dict[str, int]] = {}
        for (d, lv), n in sorted(counts.items()):
            nested.setdefault(d, {})[lv] = n
        manifest = {
            "format": "geoseg-bench", "name": snap.name, "version": int(snap.version),
            "created_at": snap.created_at.isoformat(), "description": snap.description, "params": snap.params,
            "members_sha256": snap.manifest_sha256, "n_triplets": len(members), "counts": nested,
            "members": members, "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
        for p in tmp.rglob("*"):
            if p.is_file():
                p.chmod(0o444)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def create_snapshot(
    session: Session,
    blobs: BlobStore,
    name: str,
    root: str | Path,
    *,
    filters: DatasetFilter | None = None,
    stratify: Stratification | None = None,
    limit: int | None = None,
    description: str | None = None,
    s3_client: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> SnapshotInfo:
    """Select live accepted triplets (``filters``, then ``stratify`` or ``limit``), record the next version of
    ``name`` in the database and write its directory under ``root``. Returns what was made."""
    parse_snapshot_ref(name)
    if "@" in name:
        raise SnapshotError("give the snapshot NAME only: versions are assigned (1, 2, ...)")
    f = filters or DatasetFilter()
    if f.snapshot:
        raise SnapshotError("a snapshot is selected from live triplets; use domains/levels/dates, not a snapshot")
    ids_q = triplet_ids(session, f).subquery()
    rows = session.execute(
        sa.select(Triplet.id, Triplet.domain, Triplet.level).where(Triplet.id.in_(sa.select(ids_q.c.id)))
        .order_by(Triplet.id)
    ).all()
    shortfall: dict[str, Any] = {}
    if stratify is not None:
        pool: dict[tuple[str, str], list[int]] = {}
        for tid, d, lv in rows:
            pool.setdefault((d or UNKNOWN_DOMAIN, lv or "L?"), []).append(tid)
        chosen, shortfall = stratified_sample(pool, stratify)
    else:
        chosen = [r[0] for r in rows][: limit if limit is not None else None]
    if not chosen:
        raise SnapshotError(f"no accepted triplets match the filters {f.describe()}: nothing to snapshot")
    params = {"filters": f.describe(), "stratify": stratify.describe() if stratify else None, "limit": limit,
              "shortfall": shortfall or None}
    # Another process may take the version we computed. Seen before our insert (repo raises SnapshotConflictError
    # and writes nothing): take the next one. Seen at our insert (IntegrityError): the transaction is spoilt, so
    # the caller's transaction rolls back and the message says to run again. (No SAVEPOINT: pysqlite's is unsafe.)
    for attempt in range(3):
        version = next_version(session, name)
        try:
            snap = repo.create_snapshot(session, name, str(version), [(t, "test") for t in chosen],
                                        description=description, params=params)
            break
        except repo.SnapshotConflictError as exc:
            if attempt == 2:
                raise SnapshotError(f"could not claim a new version of snapshot {name!r}: {exc}") from exc
        except sa.exc.IntegrityError as exc:
            raise SnapshotError(f"snapshot {name!r} version {version} was created concurrently; run again") from exc
    path = materialize(session, blobs, snap, root, s3_client=s3_client, progress=progress)
    manifest = json.loads((path / MANIFEST).read_text())
    return SnapshotInfo(name=name, version=version, path=path, n_triplets=len(chosen),
                        manifest_sha256=snap.manifest_sha256, counts=manifest["counts"], shortfall=shortfall)


def verify_snapshot(path: str | Path) -> list[str]:
    """Problems found re-hashing a snapshot directory against its manifest (empty list: intact)."""
    root = Path(path)
    mf = root / MANIFEST
    if not mf.is_file():
        return [f"{mf}: no manifest"]
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
        files: dict[str, str] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        return [f"{mf}: unreadable manifest ({exc})"]
    problems = []
    for rel, sha in sorted(files.items()):
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif _sha_file(p) != sha:
            problems.append(f"{rel}: sha256 differs from the manifest")
    extra = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.is_file() and p.name != MANIFEST and p.relative_to(root).as_posix() not in files)
    problems += [f"{rel}: not in the manifest" for rel in extra]
    return problems


def read_snapshot(path: str | Path, *, verify: bool = True):
    """A snapshot directory as a Benchmark (verified against its manifest first unless ``verify=False``)."""
    from geoseg.evaluation.bench import read_benchmark

    if verify:
        problems = verify_snapshot(path)
        if problems:
            raise SnapshotError(f"snapshot {path} failed verification: {'; '.join(problems[:5])}")
    bench = read_benchmark(path)
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
        return dataclasses.replace(bench, name=f"{manifest['name']}@{manifest['version']}")
    except (OSError, ValueError, KeyError):
        return bench


def resolve_snapshot_dir(session: Session, blobs: BlobStore, ref: str, root: str | Path) -> Path:
    """The directory of snapshot ``NAME`` / ``NAME@VERSION`` under ``root`` (re-written from the DB when absent)."""
    from storage.datasets.select import find_snapshot

    snap = find_snapshot(session, ref)
    return materialize(session, blobs, snap, root)
