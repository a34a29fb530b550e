"""The label stream's order in Label Studio: uncertainty sampling over queue scores (storage.priority).

:func:`configure_label_stream` sets the project's sampling to "Uncertainty sampling" for ``model_version`` (Label
Studio then serves the task whose prediction of that version has the lowest ``score``) and writes every task's queue
score; :func:`reprioritize` rewrites the scores of the tasks whose stratum filled up or fell below target (sync calls
it when that happens). Scores are changed with ``PATCH /api/predictions/{id}``; only those that differ are sent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from sqlalchemy.orm import Session

from labeling.client import LabelStudioClient
from labeling.project import SAMPLING, ProjectHandle, configure_sampling
from storage.priority import Cell, cell_of, full_cells, queue_rows, queue_score, stratum_targets

log = logging.getLogger(__name__)


def reprioritize(
    client: LabelStudioClient,
    session: Session,
    handle: ProjectHandle,
    model_version: str,
    *,
    targets: Mapping[Cell, int] | None = None,
    cells: Iterable[Cell] | None = None,
) -> int:
    """Bring the queue scores of the project's ``model_version`` predictions in line (only ``cells`` when given);
    returns how many predictions were changed."""
    targets = dict(targets or stratum_targets())
    full = full_cells(session, targets)
    only = None if cells is None else set(cells)
    changed = 0
    for row in queue_rows(session, handle.label_project_id, model_version):
        cell = cell_of(row["domain"], row["level"])
        if only is not None and cell not in only:
            continue
        want = queue_score(row["score"], cell in full)
        for pred in client.task_predictions(row["ls_task_id"]):
            if pred.get("model_version") != model_version:
                continue
            have = pred.get("score")
            if have is None or abs(float(have) - want) > 1e-9:
                client.request("PATCH", f"/api/predictions/{int(pred['id'])}", json_body={"score": want})
                changed += 1
    log.info("label stream: %d prediction scores updated in project %d", changed, handle.ls_project_id)
    return changed


def configure_label_stream(
    client: LabelStudioClient,
    session: Session,
    handle: ProjectHandle,
    model_version: str,
    *,
    targets: Mapping[Cell, int] | None = None,
) -> int:
    """Uncertainty sampling over queue scores (under-filled strata first, least certain first); returns the number
    of prediction scores written."""
    configure_sampling(client, handle, model_version, "uncertainty")
    return reprioritize(client, session, handle, model_version, targets=targets)


def uses_uncertainty(client: LabelStudioClient, handle: ProjectHandle) -> str | None:
    """The project's ``model_version`` when its label stream is uncertainty sampling, else None."""
    project = client.get_project(handle.ls_project_id)
    if project.get("sampling") == SAMPLING["uncertainty"] and project.get("model_version"):
        return str(project["model_version"])
    return None
