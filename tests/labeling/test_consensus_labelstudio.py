"""Consensus with a REAL Label Studio and SIMULATED annotators (tests/helpers/simulated_annotators.py: API users whose
annotations carry masks the test chose). Expected agreement figures are computed here from those masks with numpy.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image as PILImage

from labeling.adjudication import ensure_review_project
from labeling.project import configure_consensus
from labeling.push import ImageUrlResolver, push_predictions
from labeling.sync import sync_annotations
from storage import repo
from storage.datasets.select import DatasetFilter
from storage.datasets.snapshot import create_snapshot
from storage.maskcodec import encode_mask
from storage.models import Item, ItemStatus
from storage.records import ImageRecord, ItemRecord, PredictionRecord
from tests.fixtures.storage import add_image, add_item, add_prediction
from tests.helpers.simulated_annotators import result, simulated_annotator

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]
MV = "geoseg-consensus-test-v1"
H, W = 48, 64


def disc(cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def np_iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


A, A2, FAR = disc(24, 30, 12), disc(24, 31, 12), disc(10, 8, 6)


def seed(p, n: int, tag: str) -> tuple[list[int], dict[int, int]]:
    """n images + items (Urban L1) + predictions, pushed; returns (item ids, {item id: Label Studio task id})."""
    rng = np.random.default_rng(7)
    s = p.session
    items = []
    for i in range(n):
        path = p.ls.imagery_root / f"consensus_{tag}_{i}.png"
        PILImage.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        img = add_image(s, ImageRecord(sha256=sha, uri=str(path), width=W, height=H, format="PNG"))
        it = add_item(s, ItemRecord(image_id=img, query=f"the roof {i}", level="L1", domain="Urban"))
        pre = disc(24, 30, 10)
        add_prediction(s, PredictionRecord(item_id=it, model_version=MV, mask_sha256=p.blobs.put(
            encode_mask(pre)), mask_area=int(pre.sum()), score=0.5, route="text"))  # fmt: skip
        items.append(it)
    s.commit()
    push_predictions(p.ls.client, s, p.blobs, p.handle, MV, image_url=ImageUrlResolver.for_server(p.ls.server))
    tasks = {lt.item_id: lt.ls_task_id for lt in repo.label_tasks(s, p.handle.label_project_id)}
    return items, tasks


def test_two_simulated_annotators_agreement_consensus_and_adjudication(ls_project, tmp_path):
    p, client, s = ls_project, ls_project.ls.client, ls_project.session
    items, tasks = seed(p, 3, "two")
    configure_consensus(client, s, p.handle, overlap=2)
    review = ensure_review_project(client, s, p.handle, imagery_root=p.ls.imagery_root)
    s.commit()
    assert client.get_project(p.handle.ls_project_id)["maximum_annotations"] == 2
    a, b = simulated_annotator(client, "a"), simulated_annotator(client, "b")
    a.annotate(client, tasks[items[0]], "accept", A)
    b_ann = b.annotate(client, tasks[items[0]], "accept", A2)
    a.annotate(client, tasks[items[1]], "accept", A)
    b.annotate(client, tasks[items[1]], "reject")
    a.annotate(client, tasks[items[2]], "accept", A)  # only one of two so far

    rep = sync_annotations(client, s, p.blobs, p.handle, full=True)
    assert rep.malformed == [] and rep.adjudication_pushed == 1
    (t,) = repo.accepted_triplets(s)
    assert t.item_id == items[0] and t.n_annotators == 2 and not t.adjudicated
    assert t.agreement == pytest.approx(np_iou(A, A2))
    c0 = repo.item_consensus(s, items[0])
    print(f"two annotators: agreement {c0.agreement:.4f} mask IoU {c0.mask_iou:.4f} Boundary F {c0.boundary_f:.4f}")
    assert s.get(Item, items[2]).status == ItemStatus.IN_REVIEW and repo.item_consensus(s, items[2]).state == "pending"
    assert [c.item_id for c in repo.adjudication_queue(s)] == [items[1]]
    # what the reviewer sees: the image, the query, why, and both annotators' answers as predictions
    (rtask,) = list(client.iter_tasks(review.ls_project_id, fields="all"))
    assert rtask["data"]["item_id"] == items[1] and "no verdict majority" in rtask["data"]["consensus"]
    assert sorted(pr["model_version"] for pr in rtask["predictions"]) == [
        f"annotator {a.email}: accept", f"annotator {b.email}: reject"]
    print("reviewer sees:", rtask["data"]["consensus"], [pr["model_version"] for pr in rtask["predictions"]])
    assert sync_annotations(client, s, p.blobs, p.handle).adjudication_pushed == 0  # sent once

    # the reviewer decides: final, recorded as adjudicated
    reviewer = simulated_annotator(client, "reviewer")
    client.create_annotation(rtask["id"], result("accept", A2), completed_by=reviewer.user_id)
    sync_annotations(client, s, p.blobs, p.handle)
    trips = {t.item_id: t for t in repo.accepted_triplets(s)}
    assert trips[items[1]].adjudicated and repo.item_consensus(s, items[1]).state == "adjudicated"
    assert s.get(Item, items[1]).status == ItemStatus.ACCEPTED and repo.adjudication_queue(s) == []

    # a snapshot of the multi-annotator items, then annotator b changes their mind after consensus
    info = create_snapshot(s, p.blobs, "consensus", tmp_path / "snaps", filters=DatasetFilter(min_annotators=2))
    s.commit()
    members = json.loads((info.path / "manifest.json").read_text())["members"]
    assert {m["triplet_id"]: (m["n_annotators"], m["adjudicated"]) for m in members} == {
        trips[items[0]].id: (2, False), trips[items[1]].id: (2, True)}
    client.update_annotation(b_ann["id"], result("reject"))
    rep = sync_annotations(client, s, p.blobs, p.handle)
    assert rep.adjudication_pushed == 1  # accept vs reject: back to a reviewer
    assert {t.item_id for t in repo.accepted_triplets(s)} == {items[1]}
    frozen = repo.accepted_triplets(s, snapshot=("consensus", "1"))
    assert {t.item_id for t in frozen} == {items[0], items[1]}  # the snapshot keeps its members


def test_three_simulated_annotators_majority_and_medoid(ls_project):
    p, client, s = ls_project, ls_project.ls.client, ls_project.session
    items, tasks = seed(p, 3, "three")
    configure_consensus(client, s, p.handle, overlap=3)
    ensure_review_project(client, s, p.handle, imagery_root=p.ls.imagery_root)
    s.commit()
    ann = [simulated_annotator(client, x) for x in ("a", "b", "c")]
    for who, mask in zip(ann, (A, A2, FAR), strict=True):  # two agree, one outlier
        who.annotate(client, tasks[items[0]], "accept", mask)
    for who, verdict in zip(ann, ("no_target", "no_target", "accept"), strict=True):
        who.annotate(client, tasks[items[1]], verdict, A if verdict == "accept" else None)
    for who, verdict in zip(ann, ("accept", "reject", "no_target"), strict=True):  # no majority
        who.annotate(client, tasks[items[2]], verdict, A if verdict == "accept" else None)
    rep = sync_annotations(client, s, p.blobs, p.handle, full=True)
    assert rep.malformed == [] and rep.adjudication_pushed == 1
    (t,) = repo.accepted_triplets(s)
    c0 = repo.item_consensus(s, items[0])
    assert t.item_id == items[0] and t.n_annotators == 3 and c0.support == 2
    assert t.agreement == pytest.approx(2 / 3 * np_iou(A, A2))
    assert c0.mask_iou == pytest.approx((np_iou(A, A2) + np_iou(A, FAR) + np_iou(A2, FAR)) / 3)
    print(f"three annotators: agreement {c0.agreement:.4f} pairwise mask IoU {c0.mask_iou:.4f} "
          f"Boundary F {c0.boundary_f:.4f} support {c0.support}/3")
    assert s.get(Item, items[1]).status == ItemStatus.NO_TARGET
    assert repo.item_consensus(s, items[1]).agreement == pytest.approx(2 / 3)
    assert [c.item_id for c in repo.adjudication_queue(s)] == [items[2]]
    from storage.datasets.quality import consensus_quality

    who = {r["annotator"]: r for r in consensus_quality(s)["by_annotator"]}
    print("per annotator IoU vs consensus:", {k: v["mean_iou_vs_consensus"] for k, v in who.items()})
    assert who[ann[2].email]["mean_iou_vs_consensus"] < who[ann[0].email]["mean_iou_vs_consensus"]
