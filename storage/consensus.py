"""Agreement between annotators and the consensus rule: pure functions over one item's live annotations.

No database, no Label Studio: :func:`decide` takes the item's live votes (verdict, mask, annotator, whether the vote is
a reviewer's) and the project's settings and returns a :class:`Consensus`; :mod:`storage.repo.consensus` stores it and
:func:`storage.repo.redecide_items` turns it into the item's status and triplet.

Agreement figures (all in [0, 1]; ``None`` where they are undefined)
--------------------------------------------------------------------
* ``verdict_agreement``: share of the annotators who chose the majority verdict (1.0 when all agree);
* ``mask_iou`` / ``boundary_f``: mean over all pairs of *accepting* annotations of their mask IoU and Boundary F
  (:mod:`geoseg.metrics`; both empty -> 1.0); ``None`` with fewer than two accepting annotations;
* ``agreement`` -- the one figure the adjudication threshold and ``--min-agreement`` look at:
  ``support / n * mean pairwise IoU of the supporting masks`` for an accepted item (``support`` = the accepting
  annotations whose mask agrees with the consensus mask at IoU >= ``inlier_iou``), ``support / n`` for a
  "no target" or reject decision (their masks carry no information). ``None`` for a single annotator: one person
  cannot agree with anybody, so ``--min-agreement`` leaves single-annotator items out.

Consensus rule
--------------
1. A reviewer's vote (an annotation in the project's adjudication project) is final: the newest one decides,
   ``adjudicated`` is true; the annotators' agreement figures are still reported.
2. One vote per annotator: when an annotator has several live annotations the newest counts.
3. Required overlap ``N = 1`` (the default project): the newest vote decides (the pre-consensus behaviour).
4. ``N >= 2``: the item waits (``pending``) until ``N`` annotators voted. Then the verdict is the strict majority
   (more than half of the votes); no majority -> adjudication. An accept majority needs a consensus *mask*: the
   **medoid** of the accepting masks (the one with the highest mean IoU to the others; ties: highest mean Boundary F,
   then the lowest annotation id), and its supporters (accepting masks at IoU >= ``inlier_iou`` to it, itself
   included) must again be more than half of all votes, or the item goes to adjudication. Finally an item whose
   ``agreement`` is below ``min_agreement`` goes to adjudication. The default 0.5 means: two annotators need a mask
   IoU of 0.5 (the inlier test itself), two of three need 0.75 between them, three of three a mean IoU of 0.5.

Why the medoid and not a pixel-majority mask: (a) with two annotators a pixel majority is a tie on every pixel where
they differ -- intersection or union, each a systematic bias of the benchmark's object size; (b) the medoid is a mask
one person actually drew: one coherent outline with a real boundary (a pixel vote can leave specks and holes no
annotator drew, which hurts Boundary F-based evaluation), and it stays traceable to an annotation -- the triplet keeps
pointing at an ``Annotation`` row and "IoU against consensus" per annotator is well defined; (c) it is robust to one
outlier among three or more (an outlier is never the medoid when the others agree); (d) no new mask blob is written,
so re-deciding is idempotent and cheap. The price -- the medoid keeps one person's small boundary noise instead of
averaging it out -- is below what the benchmark's Boundary F tolerance (0.75 % of the diagonal) measures.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from geoseg.metrics import Confusion, boundary_f

#: Defaults of a project's consensus settings (``label_project.min_agreement``) and of the inlier test.
DEFAULT_MIN_AGREEMENT = 0.5
DEFAULT_INLIER_IOU = 0.5
ACCEPT, NO_TARGET, REJECT = "accept", "no_target", "reject"


class State(enum.StrEnum):
    EMPTY = "empty"  # no live vote
    PENDING = "pending"  # fewer annotators than the project's overlap
    DECIDED = "decided"
    ADJUDICATION = "adjudication"  # in the reviewer's queue
    ADJUDICATED = "adjudicated"  # a reviewer decided


@dataclass(frozen=True)
class Vote:
    """One live annotation of an item."""

    annotation_id: int
    verdict: str
    updated_at: datetime
    annotator: str | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    reviewer: bool = False


@dataclass(frozen=True)
class Consensus:
    """The decision for one item and the agreement figures behind it."""

    state: State
    n_annotators: int
    required: int
    verdict: str | None = None  # the decided verdict (None while pending / in adjudication)
    annotation_id: int | None = None  # the deciding annotation; for accept, the one whose mask is the consensus mask
    verdict_agreement: float | None = None
    mask_iou: float | None = None
    boundary_f: float | None = None
    agreement: float | None = None
    support: int = 0
    reason: str | None = None
    #: annotation id -> IoU of its mask against the consensus mask (0.0 for a vote against an accepted consensus)
    iou_vs_consensus: dict[int, float | None] = field(default_factory=dict)

    @property
    def decided(self) -> bool:
        return self.state in (State.DECIDED, State.ADJUDICATED)

    @property
    def adjudicated(self) -> bool:
        return self.state == State.ADJUDICATED


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two masks (both empty -> 1.0)."""
    c = Confusion.of(a, b)
    return 1.0 if c.union == 0 else c.intersection / c.union


def pairwise_agreement(masks: Sequence[np.ndarray]) -> tuple[float | None, float | None, np.ndarray, np.ndarray]:
    """(mean pairwise IoU, mean pairwise Boundary F, IoU matrix, BF matrix) of ``masks``; means are None for < 2."""
    n = len(masks)
    iou_m = np.eye(n)
    bf_m = np.eye(n)
    for i, j in itertools.combinations(range(n), 2):
        iou_m[i, j] = iou_m[j, i] = mask_iou(masks[i], masks[j])
        bf_m[i, j] = bf_m[j, i] = boundary_f(masks[i], masks[j])
    if n < 2:
        return None, None, iou_m, bf_m
    upper = np.triu_indices(n, 1)
    return float(iou_m[upper].mean()), float(bf_m[upper].mean()), iou_m, bf_m


def medoid(iou_m: np.ndarray, bf_m: np.ndarray, ids: Sequence[int]) -> int:
    """Index of the medoid: highest mean IoU to the others, then highest mean Boundary F, then lowest id."""
    n = len(ids)
    if n == 1:
        return 0
    mean_iou = (iou_m.sum(axis=1) - 1.0) / (n - 1)
    mean_bf = (bf_m.sum(axis=1) - 1.0) / (n - 1)
    return min(range(n), key=lambda i: (-round(mean_iou[i], 12), -round(mean_bf[i], 12), ids[i]))


def one_per_annotator(votes: Sequence[Vote]) -> list[Vote]:
    """The newest vote of each annotator (votes without an annotator each count), ordered by annotation id."""
    best: dict[object, Vote] = {}
    for v in votes:
        key = v.annotator if v.annotator else ("#", v.annotation_id)
        cur = best.get(key)
        if cur is None or (v.updated_at, v.annotation_id) > (cur.updated_at, cur.annotation_id):
            best[key] = v
    return sorted(best.values(), key=lambda v: v.annotation_id)


def _newest(votes: Sequence[Vote]) -> Vote:
    return max(votes, key=lambda v: (v.updated_at, v.annotation_id))


def _iou_vs(votes: Sequence[Vote], verdict: str, consensus_mask: np.ndarray | None) -> dict[int, float | None]:
    """Each vote's IoU against the consensus (None where the consensus has no mask to compare with)."""
    out: dict[int, float | None] = {}
    for v in votes:
        if verdict == REJECT or consensus_mask is None:
            out[v.annotation_id] = None
        elif v.verdict == ACCEPT and v.mask is not None:
            out[v.annotation_id] = mask_iou(v.mask, consensus_mask)
        elif verdict == NO_TARGET:
            out[v.annotation_id] = 1.0 if v.verdict == NO_TARGET else 0.0
        else:
            out[v.annotation_id] = 0.0
    return out


def _figures(votes: Sequence[Vote]) -> tuple[float | None, float | None, np.ndarray, np.ndarray, list[Vote]]:
    accepts = [v for v in votes if v.verdict == ACCEPT and v.mask is not None]
    m_iou, m_bf, iou_m, bf_m = pairwise_agreement([v.mask for v in accepts])  # type: ignore[misc]
    return m_iou, m_bf, iou_m, bf_m, accepts


def _single_decider(votes: list[Vote], reviewer: Vote | None, required: int) -> Consensus:
    """Rules 1 and 3: a reviewer's vote, or the newest vote of an N = 1 project."""
    n = len(votes)
    m_iou, m_bf = _figures(votes)[:2] if n >= 2 else (None, None)
    d = reviewer or _newest(votes)
    va = max(sum(v.verdict == x for v in votes) for x in {v.verdict for v in votes}) / n if n >= 2 else None
    shape_of = next((v.mask for v in (d, *votes) if v.mask is not None), None)
    cmask = d.mask if d.verdict == ACCEPT else (np.zeros_like(shape_of) if shape_of is not None else None)
    return Consensus(
        state=State.ADJUDICATED if reviewer else State.DECIDED, n_annotators=n, required=required,
        verdict=d.verdict, annotation_id=d.annotation_id, verdict_agreement=va, mask_iou=m_iou, boundary_f=m_bf,
        support=1,
        reason="decided by a reviewer" if reviewer else None,
        iou_vs_consensus=_iou_vs(votes, d.verdict, cmask) if n >= 2 or reviewer else {},
    )  # fmt: skip


def decide(
    votes: Sequence[Vote],
    *,
    required: int = 1,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    inlier_iou: float = DEFAULT_INLIER_IOU,
) -> Consensus:
    """The consensus of one item's live votes (see the module docstring for the rule)."""
    if required < 1:
        raise ValueError(f"required overlap must be >= 1, got {required}")
    reviews = [v for v in votes if v.reviewer]
    annot = one_per_annotator([v for v in votes if not v.reviewer])
    n = len(annot)
    if reviews:
        return _single_decider(annot, _newest(reviews), required)
    if n == 0:
        return Consensus(state=State.EMPTY, n_annotators=0, required=required)
    if required == 1:
        return _single_decider(annot, None, required)
    if n < required:
        return Consensus(state=State.PENDING, n_annotators=n, required=required,
                         reason=f"{n} of {required} annotators so far")  # fmt: skip
    m_iou, m_bf, iou_m, bf_m, accepts = _figures(annot)
    tally = {x: sum(v.verdict == x for v in annot) for x in (ACCEPT, NO_TARGET, REJECT)}
    top = max(tally, key=lambda x: tally[x])
    va = tally[top] / n
    base = {"n_annotators": n, "required": required, "verdict_agreement": va, "mask_iou": m_iou, "boundary_f": m_bf}
    if tally[top] * 2 <= n:
        return Consensus(state=State.ADJUDICATION, reason=f"no verdict majority {tally}", **base)
    if top == ACCEPT:
        ids = [v.annotation_id for v in accepts]
        k = medoid(iou_m, bf_m, ids)
        inliers = [i for i in range(len(accepts)) if iou_m[k, i] >= inlier_iou]
        support = len(inliers)
        sub = iou_m[np.ix_(inliers, inliers)]
        inlier_iou_mean = float(sub[np.triu_indices(support, 1)].mean()) if support >= 2 else 1.0
        agreement = support / n * inlier_iou_mean
        d = accepts[k]
        ious = _iou_vs(annot, ACCEPT, d.mask)
        if support * 2 <= n:
            return Consensus(state=State.ADJUDICATION, agreement=agreement, support=support, iou_vs_consensus=ious,
                             reason=f"masks disagree: {support} of {n} within IoU {inlier_iou}", **base)  # fmt: skip
    else:
        support = tally[top]
        agreement = support / n
        d = _newest([v for v in annot if v.verdict == top])
        empty = next((np.zeros_like(v.mask) for v in annot if v.mask is not None), None)
        ious = _iou_vs(annot, top, empty if top == NO_TARGET else None)
    if agreement < min_agreement:
        return Consensus(state=State.ADJUDICATION, agreement=agreement, support=support, iou_vs_consensus=ious,
                         reason=f"agreement {agreement:.2f} below {min_agreement:.2f}", **base)  # fmt: skip
    return Consensus(state=State.DECIDED, verdict=top, annotation_id=d.annotation_id, agreement=agreement,
                     support=support, iou_vs_consensus=ious, **base)  # fmt: skip
