"""The adjudication queue in Label Studio: a review project beside a labeling project.

Items whose annotators disagree (storage.consensus: no verdict majority, masks that disagree, or agreement below the
project's ``min_agreement``) wait in the queue (``item_consensus.state = "adjudication"``). :func:`push_adjudication`
sends each of them to the review project once, as a task that shows the reviewer

* the image and the query, as in the labeling project;
* a "Why adjudication" text: the number of annotators, verdict agreement, pairwise mask IoU / Boundary F, the
  agreement figure and the reason;
* every annotator's answer as a prediction (``model_version`` = ``annotator NAME: VERDICT``, with the mask and the
  verdict), so the reviewer can load one, correct it, or draw anew -- then choose accept / no target / reject.

The reviewer's annotation is synced like any other (labeling.sync) and, being in a project with role ``review``,
is final: the consensus state becomes ``adjudicated`` and the triplet says so.

Idempotent: an item with a task in the review project (recorded, or found in Label Studio by ``item_id`` after a
crash between import and record) is not sent again.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from labeling.client import LabelStudioClient
from labeling.project import VERDICT_FROM, ProjectHandle, ensure_project, label_config
from labeling.push import brush_result
from storage import repo
from storage.blobs import BlobStore
from storage.maskcodec import decode_mask
from storage.records import LabelTaskRecord

log = logging.getLogger(__name__)

REVIEW_SUFFIX = " - adjudication"
_CHOICE = {"accept": "accept", "no_target": "no target", "reject": "reject"}


def review_config() -> str:
    """The verification config plus a text block that says why the item is in adjudication."""
    why = '  <Header value="Why adjudication"/>\n  <Text name="consensus" value="$consensus"/>\n'
    return label_config().replace("<View>\n", "<View>\n" + why, 1)


def ensure_review_project(
    client: LabelStudioClient, session: Session, labeling: ProjectHandle, *, imagery_root: Any = None
) -> ProjectHandle:
    """Find or create the review project of ``labeling`` and record it (role ``review``); commit is the caller's."""
    handle = ensure_project(
        client, session, labeling.title + REVIEW_SUFFIX, imagery_root=imagery_root, config=review_config(),
        description="Adjudication: annotators disagreed. Load an annotator's answer (predictions), fix it, decide.",
    )  # fmt: skip
    repo.set_project_consensus(session, handle.label_project_id, role="review", review_of=labeling.label_project_id)
    return handle


def review_handle(session: Session, labeling: ProjectHandle) -> ProjectHandle | None:
    row = repo.review_project_of(session, labeling.label_project_id)
    if row is None:
        return None
    return ProjectHandle(row.id, row.ls_project_id, row.title or "", row.label_studio_url)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def consensus_text(case: repo.AdjudicationCase) -> str:
    c = case.consensus
    verdicts: dict[str, int] = {}
    for v in case.votes:
        verdicts[v["verdict"]] = verdicts.get(v["verdict"], 0) + 1
    return (
        f"{c['n_annotators']} annotators (overlap {c['required']}); verdicts {verdicts}; verdict agreement "
        f"{_fmt(c['verdict_agreement'])}; pairwise mask IoU {_fmt(c['mask_iou'])}, Boundary F {_fmt(c['boundary_f'])};"
        f" agreement {_fmt(c['agreement'])}. Reason: {c['reason']}"
    )


def case_payload(case: repo.AdjudicationCase, blobs: BlobStore, image: str) -> dict[str, Any]:
    """The review task of one case: its data and one prediction per annotator."""
    preds = []
    for v in case.votes:
        result: list[dict[str, Any]] = []
        if v["verdict"] == "accept" and v["mask_sha256"]:
            result = brush_result(decode_mask(blobs.get(v["mask_sha256"]), shape=(case.height, case.width)))
        result.append({"from_name": VERDICT_FROM, "to_name": "image", "type": "choices",
                       "value": {"choices": [_CHOICE[v["verdict"]]]}})  # fmt: skip
        who = v["annotator"] or f"annotation {v['annotation_id']}"
        preds.append({"model_version": f"annotator {who}: {_CHOICE[v['verdict']]}", "result": result})
    data = {"image": image, "query": case.query, "item_id": case.item_id, "consensus": consensus_text(case)}
    return {"data": data, "predictions": preds}


def push_adjudication(
    client: LabelStudioClient, session: Session, blobs: BlobStore, labeling: ProjectHandle, review: ProjectHandle
) -> int:
    """Send the queue's new items to the review project; commits; returns how many tasks were created."""
    cases = repo.adjudication_cases(session, labeling.label_project_id, review.label_project_id)
    if not cases:
        return 0
    wanted = {c.item_id for c in cases}
    found = {}
    for task in client.iter_tasks(review.ls_project_id, fields="task_only", page_size=500):
        iid = (task.get("data") or {}).get("item_id")
        if iid in wanted and iid not in found:
            found[iid] = int(task["id"])
    records = [LabelTaskRecord(review.label_project_id, iid, tid) for iid, tid in found.items()]
    todo = [c for c in cases if c.item_id not in found]
    tasks = []
    for c in todo:
        image = (client.get_task(c.ls_task_id).get("data") or {}).get("image")
        tasks.append(case_payload(c, blobs, image))
    ids = client.import_tasks(review.ls_project_id, tasks) if tasks else []
    records += [LabelTaskRecord(review.label_project_id, c.item_id, tid) for c, tid in zip(todo, ids, strict=True)]
    repo.record_label_tasks(session, records)
    session.commit()
    log.info("adjudication: %d items sent to review project %d", len(ids), review.ls_project_id)
    return len(ids)
