"""Which task comes next: the order rule of the label stream (uncertainty first, under-filled strata first).

The label stream (Label Studio's "Uncertainty sampling") serves the task whose prediction has the LOWEST ``score``
first. The score a prediction carries there is its **queue score**, :func:`queue_score`:

* ``s`` -- the pre-label's own score (``Prediction.score``: the dual-route certainty, higher = more certain;
  a prediction without one counts as 0, the least certain) -- while the item's domain x level stratum is still
  below its target count of accepted triplets;
* ``1 + s`` once the stratum has reached its target: its tasks are served after every under-filled stratum's.

So the order is lexicographic: (stratum full?, certainty), i.e. under-filled strata first and, within them, the least
certain pre-label first. Annotators see the plain certainty on every task of an under-filled stratum; a score above 1
means "this stratum is full". Targets default to GeoSeg-Bench's 810 pairs (Urban 330, Rural 160, Traffic 240,
Nature 80; L1 60 %, L2 30 %, L3 10 %, split per cell by largest remainder, storage.datasets.snapshot.Stratification).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage.datasets.snapshot import GEOSEG_BENCH_DOMAINS, GEOSEG_BENCH_LEVELS, UNKNOWN_DOMAIN, Stratification
from storage.models import Triplet

Cell = tuple[str, str]


def stratum_targets(
    domains: Mapping[str, float] | None = None, levels: Mapping[str, float] | None = None, total: int | None = None
) -> dict[Cell, int]:
    """Target count of accepted triplets per (domain, level) (default: GeoSeg-Bench's 810)."""
    strat = Stratification(domains=dict(domains or GEOSEG_BENCH_DOMAINS), levels=dict(levels or GEOSEG_BENCH_LEVELS),
                           total=total)  # fmt: skip
    return strat.targets()


def cell_of(domain: str | None, level: str | None) -> Cell:
    return (domain or UNKNOWN_DOMAIN, level or "L?")


def stratum_fill(session: Session) -> dict[Cell, int]:
    """Live accepted triplets per (domain, level)."""
    q = sa.select(Triplet.domain, Triplet.level, sa.func.count()).where(Triplet.withdrawn.is_(False))
    out: dict[Cell, int] = {}
    for d, lv, n in session.execute(q.group_by(Triplet.domain, Triplet.level)):
        out[cell_of(d, lv)] = out.get(cell_of(d, lv), 0) + int(n)
    return out


def is_full(cell: Cell, fill: Mapping[Cell, int], targets: Mapping[Cell, int]) -> bool:
    """A stratum is full when its accepted count reached its target; a stratum without a target is never full."""
    return cell in targets and fill.get(cell, 0) >= targets[cell]


def queue_score(score: float | None, full: bool) -> float:
    """The score a prediction carries in the label stream (lower = served first); see the module docstring."""
    s = 0.0 if score is None else min(max(float(score), 0.0), 1.0)
    return s + 1.0 if full else s


def queue_order(items: list[dict[str, Any]], fill: Mapping[Cell, int], targets: Mapping[Cell, int]) -> list[int]:
    """Ids of ``items`` (``id``, ``domain``, ``level``, ``score``) in the order the rule serves them, by id on ties."""
    def key(it: dict[str, Any]) -> tuple[float, int]:
        return queue_score(it["score"], is_full(cell_of(it["domain"], it["level"]), fill, targets)), int(it["id"])

    return [int(it["id"]) for it in sorted(items, key=key)]


def full_cells(session: Session, targets: Mapping[Cell, int]) -> frozenset[Cell]:
    fill = stratum_fill(session)
    return frozenset(c for c in targets if is_full(c, fill, targets))


def queue_rows(session: Session, label_project_id: int, model_version: str) -> list[dict[str, Any]]:
    """The project's tasks with the item's stratum and the score of its ``model_version`` prediction."""
    from storage.models import Item, LabelTask, Prediction

    q = (
        sa.select(LabelTask.ls_task_id, Item.id, Item.domain, Item.level, Prediction.score)
        .join(Item, LabelTask.item_id == Item.id)
        .outerjoin(Prediction, sa.and_(Prediction.item_id == Item.id, Prediction.model_version == model_version))
        .where(LabelTask.label_project_id == label_project_id)
        .order_by(LabelTask.ls_task_id)
    )
    return [{"ls_task_id": int(t), "id": int(i), "domain": d, "level": lv, "score": s}
            for t, i, d, lv, s in session.execute(q)]  # fmt: skip
