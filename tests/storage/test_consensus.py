"""Consensus rule (storage.consensus) as pure functions, and redecide_items with it on SQLite and PostgreSQL.

Masks are synthetic discs and boxes chosen so that each case's agreement is clear; every expected figure is computed
here from those masks with plain numpy, never written down as a number.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from geoseg.metrics import boundary_f
from storage import repo
from storage.consensus import State, Vote, decide, pairwise_agreement
from storage.datasets.select import DatasetFilter, triplet_ids
from storage.maskcodec import encode_mask
from storage.models import Annotation, Item, ItemStatus
from storage.records import AnnotationRecord, ImageRecord, ItemRecord, LabelTaskRecord
from tests.fixtures.storage import add_image, add_item

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
H, W = 48, 64


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def np_iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


def v(i: int, verdict: str, mask=None, who: str | None = None, dt: int = 0, reviewer: bool = False) -> Vote:
    return Vote(i, verdict, T0 + timedelta(seconds=dt or i), who or f"annotator-{i}", mask, reviewer)


A, A2, FAR = disc(24, 30, 12), disc(24, 31, 12), disc(10, 8, 6)


def test_single_annotator_and_overlap_one_keep_newest_wins():
    c = decide([v(1, "accept", A)])
    assert c.state == State.DECIDED and c.annotation_id == 1 and c.agreement is None and c.n_annotators == 1
    c = decide([v(1, "accept", A), v(2, "reject", None)])  # overlap 1: the newest decides, figures informational
    assert c.verdict == "reject" and c.annotation_id == 2 and c.verdict_agreement == 0.5 and c.agreement is None


def test_two_annotators_agree_disagree_and_wait():
    c = decide([v(1, "accept", A), v(2, "accept", A2)], required=2)
    assert c.state == State.DECIDED and c.verdict == "accept" and c.annotation_id == 1  # medoid tie: lowest id
    assert c.agreement == pytest.approx(np_iou(A, A2)) and c.mask_iou == pytest.approx(np_iou(A, A2))
    assert c.boundary_f == pytest.approx(boundary_f(A, A2)) and c.verdict_agreement == 1.0
    assert decide([v(1, "accept", A)], required=2).state == State.PENDING
    c = decide([v(1, "accept", A), v(2, "reject")], required=2)
    assert c.state == State.ADJUDICATION and "no verdict majority" in c.reason and c.verdict is None
    c = decide([v(1, "accept", A), v(2, "accept", FAR)], required=2)
    assert c.state == State.ADJUDICATION and "masks disagree" in c.reason
    # the same annotator twice counts once (their newest answer)
    c = decide([v(1, "accept", A, who="ann"), v(2, "reject", who="ann", dt=9)], required=2)
    assert c.state == State.PENDING and c.n_annotators == 1


def test_three_annotators_majority_medoid_and_outlier():
    B = disc(24, 30, 11)
    c = decide([v(1, "accept", FAR), v(2, "accept", A2), v(3, "accept", A)], required=3)
    # A and A2 agree, FAR is the outlier: the medoid is one of the two, support 2 of 3
    ious = {2: (np_iou(A2, FAR) + np_iou(A2, A)) / 2, 3: (np_iou(A, FAR) + np_iou(A, A2)) / 2}
    assert c.state == State.DECIDED and c.annotation_id == max(ious, key=ious.get) and c.support == 2
    assert c.agreement == pytest.approx(2 / 3 * np_iou(A, A2))
    assert c.iou_vs_consensus[1] == pytest.approx(np_iou(FAR, A2 if c.annotation_id == 2 else A))
    m_iou, _, _, _ = pairwise_agreement([FAR, A2, A])
    assert c.mask_iou == pytest.approx(m_iou)
    # majority accept over a rejection; the rejecting annotator scores 0 against the accepted consensus
    c = decide([v(1, "accept", A), v(2, "reject"), v(3, "accept", B)], required=3)
    assert c.state == State.DECIDED and c.verdict == "accept" and c.iou_vs_consensus[2] == 0.0
    assert c.agreement == pytest.approx(2 / 3 * np_iou(A, B))
    # a high threshold sends the same votes to adjudication
    assert decide([v(1, "accept", A), v(2, "reject"), v(3, "accept", B)], required=3,
                  min_agreement=0.9).state == State.ADJUDICATION  # fmt: skip
    # no target majority
    empty = np.zeros((H, W), bool)
    c = decide([v(1, "no_target", empty), v(2, "no_target", empty), v(3, "accept", A)], required=3)
    assert c.verdict == "no_target" and c.agreement == pytest.approx(2 / 3) and c.iou_vs_consensus[3] == 0.0


def test_reviewer_is_final():
    c = decide([v(1, "accept", A), v(2, "reject"), v(9, "accept", A2, reviewer=True)], required=2)
    assert c.state == State.ADJUDICATED and c.adjudicated and c.annotation_id == 9 and c.verdict == "accept"
    assert c.iou_vs_consensus[1] == pytest.approx(np_iou(A, A2)) and c.iou_vs_consensus[2] == 0.0


def sha(t: str) -> str:
    return hashlib.sha256(t.encode()).hexdigest()


def test_redecide_consensus_in_the_database(session, blob_store):
    """Overlap 2 on SQLite and PostgreSQL: pending, consensus, adjudication, reviewer, edits after consensus, a
    snapshot's membership kept; re-running the same sync changes nothing."""
    pid = repo.upsert_label_project(session, "http://ls", 1, "consensus test")
    rid = repo.upsert_label_project(session, "http://ls", 2, "consensus test - adjudication")
    repo.set_project_consensus(session, pid, overlap=2, min_agreement=0.6)
    repo.set_project_consensus(session, rid, role="review", review_of=pid)
    img = add_image(session, ImageRecord(sha256=sha("i"), uri="file:///i.png", width=W, height=H))
    items = [add_item(session, ItemRecord(image_id=img, query=f"q{i}", level="L1", domain="Urban"))
             for i in range(2)]  # fmt: skip
    tasks = repo.record_label_tasks(session, [LabelTaskRecord(pid, it, 100 + k) for k, it in enumerate(items)])
    rtask = repo.record_label_tasks(session, [LabelTaskRecord(rid, items[1], 500)])[items[1]]
    ms = {k: blob_store.put(encode_mask(m)) for k, m in {"A": A, "A2": A2}.items()}

    def ann(i, it, verdict, mask=None, who="a", dt=0, task=None):
        t = T0 + timedelta(seconds=dt)
        return AnnotationRecord(i, task or tasks[it], verdict, t, t, ms.get(mask), None, who)

    repo.upsert_annotations(session, [ann(1, items[0], "accept", "A", "sim-a")], blob_store)
    assert session.get(Item, items[0]).status == ItemStatus.IN_REVIEW  # 1 of 2: pending
    assert repo.item_consensus(session, items[0]).state == "pending"
    batch = [ann(2, items[0], "accept", "A2", "sim-b"), ann(3, items[1], "accept", "A", "sim-a"),
             ann(4, items[1], "reject", None, "sim-b")]  # fmt: skip
    for _ in range(2):  # idempotent
        repo.upsert_annotations(session, batch, blob_store)
        session.commit()
    (t,) = repo.accepted_triplets(session)
    assert t.item_id == items[0] and t.n_annotators == 2 and not t.adjudicated
    assert t.agreement == pytest.approx(np_iou(A, A2)) and t.mask_sha256 == ms["A"]
    assert [c.item_id for c in repo.adjudication_queue(session, pid)] == [items[1]]
    ious = dict(session.execute(sa.select(Annotation.ls_annotation_id, Annotation.iou_vs_consensus)).tuples().all())
    assert ious[1] == 1.0 and ious[2] == pytest.approx(np_iou(A2, A))
    # the queue's case shows both votes
    assert repo.adjudication_cases(session, pid, rid) == []  # already has a review task
    # a reviewer accepts item 1: final, adjudicated
    repo.upsert_annotations(session, [ann(9, items[1], "accept", "A2", "reviewer", 30, rtask)], blob_store)
    session.commit()
    trips = {t.item_id: t for t in repo.accepted_triplets(session)}
    assert trips[items[1]].adjudicated and trips[items[1]].annotation_id is not None
    assert repo.adjudication_queue(session) == []
    # filters see the columns
    assert len(session.execute(triplet_ids(session, DatasetFilter(min_agreement=0.5))).all()) == 2  # adjudicated pass
    assert len(session.execute(triplet_ids(session, DatasetFilter(min_annotators=3))).all()) == 0
    # a snapshot, then annotator B deletes their annotation: item 0 waits again, the snapshot keeps its member
    snap = repo.create_snapshot(session, "bench", "1", [(t.id, "test") for t in trips.values()])
    repo.retract_annotations(session, [2], blob_store)
    session.commit()
    assert session.get(Item, items[0]).status == ItemStatus.IN_REVIEW
    assert {t.item_id for t in repo.accepted_triplets(session)} == {items[1]}
    assert len(repo.accepted_triplets(session, snapshot=("bench", "1"))) == 2 and snap is not None
    # agreement per domain x level and per annotator
    from storage.datasets.quality import consensus_quality

    q = consensus_quality(session)
    (row,) = q["by_stratum"]
    assert (row["domain"], row["level"], row["n_items"], row["adjudicated"]) == ("Urban", "L1", 2, 1)
    who = {r["annotator"]: r for r in q["by_annotator"]}
    assert who["sim-a"]["mean_iou_vs_consensus"] == pytest.approx(np_iou(A, A2), abs=1e-4)  # item 1: A vs reviewer A2
    assert who["sim-b"]["n_compared"] == 1 and who["sim-b"]["mean_iou_vs_consensus"] == 0.0  # rejected item 1
