"""Label Studio project setup for GeoSeg verification, idempotent.

The labeling config (``geoseg_config.xml``) shows the annotator query as text, the image, a ``BrushLabels`` tag for
the target mask and a required verdict choice: accept / no target / reject. Its tag names are the contract with push
and sync (:data:`MASK_FROM`, :data:`IMAGE_TO`, :data:`VERDICT_FROM`, :data:`TARGET_LABEL`).

:func:`ensure_project` finds the project recorded in the database (``LabelProject``) or, failing that, one with the
same title in Label Studio, and only creates a project when neither exists; the Label Studio project id is recorded in
the database either way. Two runs at once cannot create two projects: the find-or-create step holds a claim on
``(Label Studio URL, title)`` (``storage.claims``, kind ``"project"``); a second run waits for it (up to
:data:`PROJECT_CLAIM_WAIT_S`) and then finds the project the first one created.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from labeling.client import LabelStudioClient, LabelStudioError, LabelStudioRequestError
from storage import claims, repo
from storage.models import LabelProject

MASK_FROM = "mask"
IMAGE_TO = "image"
VERDICT_FROM = "verdict"
TARGET_LABEL = "target"
#: Label Studio choice value -> storage.models.Verdict value
VERDICT_CHOICES = {"accept": "accept", "no target": "no_target", "reject": "reject"}
DEFAULT_TITLE = "GeoSeg verification"
#: How long a run waits for another run that is creating the same project (then fails with the holder's name).
PROJECT_CLAIM_WAIT_S = 120.0
PROJECT_CLAIM_TTL_S = 30.0


def label_config() -> str:
    return resources.files("labeling").joinpath("geoseg_config.xml").read_text()


@dataclass(frozen=True)
class ProjectHandle:
    """A Label Studio project and its row in the database."""

    label_project_id: int
    ls_project_id: int
    title: str
    url: str
    created: bool = False


def _norm(xml: str) -> str:
    return "".join(xml.split())


def ensure_project(
    client: LabelStudioClient,
    session: Session,
    title: str = DEFAULT_TITLE,
    *,
    imagery_root: str | Path | None = None,
    description: str = "Verify GeoSeg pre-labels: correct the mask, then choose accept / no target / reject.",
    config: str | None = None,
) -> ProjectHandle:
    """Find (database row, then title) or create a project; record it in the database (commit is the caller's).

    ``config`` is the labeling config (default: the verification project's, :func:`label_config`); an existing
    project with another config is updated to it. The session's open transaction is committed first (the claim on
    the title is written on its own connection).
    """
    title = title.strip()
    if len(title) < 3:
        raise ValueError(f"project title must have at least 3 characters, got {title!r}")
    config = label_config() if config is None else config
    session.commit()
    key = (client.url, title)
    with claims.Lease(session.get_bind(), "project", [key], ttl_s=PROJECT_CLAIM_TTL_S, wait_s=PROJECT_CLAIM_WAIT_S):
        pid, created = _find_or_create(client, session, title, config, description, imagery_root)
        session.rollback()  # end the read before the lease releases on its own connection (SQLite)
    row_id = repo.upsert_label_project(session, client.url, pid, title)
    return ProjectHandle(label_project_id=row_id, ls_project_id=pid, title=title, url=client.url, created=created)


def _find_or_create(
    client: LabelStudioClient,
    session: Session,
    title: str,
    config: str,
    description: str,
    imagery_root: str | Path | None,
) -> tuple[int, bool]:
    """The project's Label Studio id (found by database row, then by title, else created) and whether it was made."""
    project = None
    for row in session.scalars(
        sa.select(LabelProject)
        .where(LabelProject.label_studio_url == client.url, LabelProject.title == title)
        .order_by(LabelProject.id)
    ):
        try:
            project = client.get_project(row.ls_project_id)
            break
        except LabelStudioRequestError as exc:
            if exc.status_code != 404:
                raise
    if project is None:
        matches = [p for p in client.projects(title=title) if p.get("title") == title]
        project = min(matches, key=lambda p: p["id"]) if matches else None
    created = project is None
    if created:
        project = client.create_project(title, config, description)
    elif _norm(project.get("label_config", "")) != _norm(config):
        try:
            project = client.update_project(project["id"], label_config=config)
        except LabelStudioError as exc:
            raise LabelStudioError(
                f"project {project['id']} ({title!r}) has a different labeling config that Label Studio refused to "
                f"update (existing annotations may use other tags): {exc}"
            ) from exc
    pid = int(project["id"])
    if imagery_root is not None:
        _ensure_local_storage(client, pid, Path(imagery_root))
    return pid, created


def _ensure_local_storage(client: LabelStudioClient, project_id: int, root: Path) -> None:
    """Label Studio serves ``/data/local-files/`` only below a local storage of the project."""
    path = str(root.expanduser().resolve())
    if any(s.get("path") == path for s in client.local_storages(project_id)):
        return
    client.create_local_storage(project_id, path, title="geolabel imagery")


#: Label Studio's names of its task sampling modes (``Project.sampling``).
SAMPLING = {"sequential": "Sequential sampling", "uniform": "Uniform sampling", "uncertainty": "Uncertainty sampling"}


def configure_consensus(
    client: LabelStudioClient,
    session: Session,
    handle: ProjectHandle,
    *,
    overlap: int,
    min_agreement: float | None = None,
) -> dict:
    """Ask for ``overlap`` annotators per task: Label Studio's ``maximum_annotations`` on every task (cohort 100 %,
    its label stream keeps serving a task until that many people annotated it) and the database's setting that the
    consensus rule reads (storage.consensus). Returns the updated Label Studio project."""
    if int(overlap) < 1:
        raise ValueError(f"overlap must be >= 1 annotator per task, got {overlap}")
    project = client.update_project(
        handle.ls_project_id, maximum_annotations=int(overlap), overlap_cohort_percentage=100
    )
    repo.set_project_consensus(session, handle.label_project_id, overlap=int(overlap), min_agreement=min_agreement)
    return project


def configure_sampling(client: LabelStudioClient, handle: ProjectHandle, model_version: str, mode: str = "uncertainty"):
    """Set the label stream's order: ``uncertainty`` serves the task whose prediction of ``model_version`` has the
    lowest ``score`` first (Label Studio only ranks predictions of the project's ``model_version``)."""
    if mode not in SAMPLING:
        raise ValueError(f"sampling must be one of {sorted(SAMPLING)}, got {mode!r}")
    return client.update_project(handle.ls_project_id, sampling=SAMPLING[mode], model_version=model_version)
