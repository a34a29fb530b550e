"""Query intake in Label Studio: annotators browse ingested imagery and write the queries, the label cycle pulls them.

The intake project (:data:`INTAKE_CONFIG`) shows one image per task with a ``TextArea`` for one or more queries (one per
line, or one per text box) and optional single choices for the level (L1/L2/L3) and the domain
(Urban/Rural/Traffic/Nature). Tasks carry ``data = {image, image_sha256, image_id}``.

* :func:`ensure_intake_project` finds or creates the project (recorded as a ``LabelProject`` row).
* :func:`create_intake_tasks` imports one task per registered image not in the project yet (idempotent: the project's
  tasks are listed and matched by ``data.image_sha256``).
* :func:`pull_queries` reads every intake task with its annotations and makes storage ``Item`` rows of the queries.

Idempotence and normalisation: a query is NFKC-normalised and its whitespace collapsed (:func:`normalise_query`);
two queries on the same image with the same :func:`query_key` (the normalised text, case-folded) are one item, also
when an item with that text came from a CSV ingest. Several annotations (annotators) of a task contribute the union
of their queries; a cancelled (skipped) annotation contributes nothing. The level/domain of the newest annotation
naming a query are written to the item (metadata only: they do not change predictions).

Edits and deletions. Each intake task keeps a ledger in its Label Studio ``meta`` (``meta.geolabel.items``:
query key -> item id, and ``meta.geolabel.created``: the ids of the items intake itself created), written after the
database commit (a crash in between only makes a new item look pre-existing, so it is kept rather than deleted).
On every pull the current queries are compared with the ledger; a query that disappeared (the annotator deleted it,
or edited its text: an edit is the old text gone plus the new text added) is *withdrawn from intake*:

* an item that intake created and that has no prediction, no Label Studio review task and no annotation (status
  ``new``) is deleted: nothing was done on it yet, so nothing is lost;
* an item that existed before the annotator wrote the query (e.g. from a queries file) is never deleted by intake;
* an item that already has predictions or a review task is **kept** with all of its work (predictions, review task,
  annotations, triplets are never deleted by intake); the pull report lists it under ``kept`` so that a person can
  reject it in the review project if the query was wrong. It leaves the ledger, so it is reported once.

Deleting a whole intake task deletes its ledger too: its items are then left as they are (no deletion). Malformed
annotations (a level outside L1-L3, an over-long query) are reported per annotation and the pull goes on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from geoseg.vocabulary import DOMAINS, LEVELS, normalise_domain, normalise_level, normalise_query, query_key
from labeling.client import LabelStudioClient
from labeling.project import ProjectHandle, ensure_project
from storage import claims, repo
from storage.models import Item
from storage.records import MAX_QUERY_CHARS, ItemRecord
from storage.repo.base import chunked

log = logging.getLogger(__name__)

QUERIES_FROM = "queries"
LEVEL_FROM = "level"
DOMAIN_FROM = "domain"
IMAGE_TO = "image"
DEFAULT_INTAKE_TITLE = "GeoSeg query intake"
META_KEY = "geolabel"

INTAKE_CONFIG = f"""<View>
  <Header value="Write one or more queries for this image: one per line (what should be segmented?)"/>
  <Image name="{IMAGE_TO}" value="$image" zoom="true" zoomControl="true"/>
  <TextArea name="{QUERIES_FROM}" toName="{IMAGE_TO}" editable="true" rows="3" maxSubmissions="50"
            placeholder="e.g. the largest building next to the roundabout"/>
  <Header value="Level (optional)"/>
  <Choices name="{LEVEL_FROM}" toName="{IMAGE_TO}" choice="single" showInline="true">
    {"".join(f'<Choice value="{lv}"/>' for lv in LEVELS)}
  </Choices>
  <Header value="Domain (optional)"/>
  <Choices name="{DOMAIN_FROM}" toName="{IMAGE_TO}" choice="single" showInline="true">
    {"".join(f'<Choice value="{d}"/>' for d in DOMAINS)}
  </Choices>
</View>
"""

class MalformedIntakeError(ValueError):
    """An intake annotation whose result cannot be turned into queries."""


@dataclass(frozen=True)
class IntakeQuery:
    """One query an annotator wrote on an image."""

    query: str
    level: str | None = None
    domain: str | None = None


def parse_intake_result(result: Iterable[Mapping[str, Any]]) -> list[IntakeQuery]:
    """The queries of one intake annotation's ``result`` (blank lines dropped, duplicates within it merged)."""
    texts: list[str] = []
    level = domain = None
    for region in result or []:
        if not isinstance(region, Mapping):
            raise MalformedIntakeError(f"result entries must be objects, got {type(region).__name__}")
        name = region.get("from_name")
        value = region.get("value") or {}
        if name == QUERIES_FROM:
            raw = value.get("text")
            if isinstance(raw, str):
                raw = [raw]
            if not isinstance(raw, list):
                raise MalformedIntakeError(f"'{QUERIES_FROM}' text must be a list of strings, got {raw!r}")
            for entry in raw:
                if not isinstance(entry, str):
                    raise MalformedIntakeError(f"'{QUERIES_FROM}' text must be strings, got {entry!r}")
                texts.extend(entry.splitlines())
        elif name in (LEVEL_FROM, DOMAIN_FROM):
            choices = value.get("choices") or []
            if len(choices) > 1:
                raise MalformedIntakeError(f"'{name}' must be a single choice, got {choices}")
            if choices:
                try:
                    if name == LEVEL_FROM:
                        level = normalise_level(choices[0])
                    else:
                        domain = normalise_domain(choices[0])
                except ValueError:
                    allowed = LEVELS if name == LEVEL_FROM else DOMAINS
                    raise MalformedIntakeError(f"{name} must be one of {allowed}, got {choices[0]!r}") from None
    out: dict[str, IntakeQuery] = {}
    for t in texts:
        q = normalise_query(t)
        if not q:
            continue
        if len(q) > MAX_QUERY_CHARS:
            raise MalformedIntakeError(f"a query is longer than {MAX_QUERY_CHARS} characters: {q[:60]!r}...")
        out.setdefault(query_key(q), IntakeQuery(q, level, domain))
    return list(out.values())


def intake_result(queries: Iterable[str], level: str | None = None, domain: str | None = None) -> list[dict[str, Any]]:
    """An intake annotation result as Label Studio stores it (what an annotator's submit sends); tests and scripts."""
    res: list[dict[str, Any]] = [
        {
            "from_name": QUERIES_FROM,
            "to_name": IMAGE_TO,
            "type": "textarea",
            "value": {"text": [str(q) for q in queries]},
        }
    ]
    for name, v in ((LEVEL_FROM, level), (DOMAIN_FROM, domain)):
        if v is not None:
            res.append({"from_name": name, "to_name": IMAGE_TO, "type": "choices", "value": {"choices": [v]}})
    return res


# --- project and tasks ----------------------------------------------------------------------------------------------


def ensure_intake_project(
    client: LabelStudioClient,
    session: Session,
    title: str = DEFAULT_INTAKE_TITLE,
    *,
    imagery_root: str | Path | None = None,
) -> ProjectHandle:
    """Find (database row, then title) or create the intake project; record it in the database (caller commits)."""
    return ensure_project(
        client,
        session,
        title,
        imagery_root=imagery_root,
        description="Write what should be segmented on each image: one query per line.",
        config=INTAKE_CONFIG,
    )


@dataclass
class IntakeTasksReport:
    created: int = 0
    existing: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (image id, reason)
    skipped: int = 0  # images another run was creating tasks for (create_intake_tasks_once)


def create_intake_tasks(
    client: LabelStudioClient,
    session: Session,
    project: ProjectHandle,
    image_url: Callable[[str], str],
    *,
    image_ids: Iterable[int] | None = None,
    batch_size: int = 200,
) -> IntakeTasksReport:
    """One intake task per registered image (all, or ``image_ids``) that the project does not show yet."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    report = IntakeTasksReport()
    images = repo.get_images(session, image_ids)
    present = {
        (t.get("data") or {}).get("image_sha256")
        for t in client.iter_tasks(project.ls_project_id, fields="task_only", page_size=500)
    }
    todo: list[dict[str, Any]] = []
    for img in images:
        if img.sha256 in present:
            report.existing += 1
            continue
        try:
            url = image_url(img.uri)
        except Exception as exc:  # noqa: BLE001 - recorded per image; the others go on
            report.failed.append((img.id, f"{type(exc).__name__}: {exc}"))
            continue
        todo.append({"data": {"image": url, "image_sha256": img.sha256, "image_id": int(img.id)}})
        present.add(img.sha256)
    for batch in chunked(todo, batch_size):
        report.created += len(client.import_tasks(project.ls_project_id, batch))
    return report


def create_intake_tasks_once(
    client: LabelStudioClient,
    session: Session,
    project: ProjectHandle,
    image_url: Callable[[str], str],
    *,
    image_ids: Iterable[int] | None = None,
    batch_size: int = 200,
) -> IntakeTasksReport:
    """:func:`create_intake_tasks` with a claim per (intake project, image) held around the listing and the import
    (``storage.claims``, kind ``"intake-task"``), so two runs at once cannot both import a task for one image; images
    another run holds are skipped (that run creates them). Commits the session's open transaction first."""
    if image_ids is None:
        image_ids = [r[3] for r in repo.image_refs(session)]
    session.commit()
    keys = [(project.label_project_id, int(i)) for i in image_ids]
    with claims.Lease(session.get_bind(), "intake-task", keys) as lease:
        held = [int(k[1]) for k in lease.held]
        report = create_intake_tasks(client, session, project, image_url, image_ids=held, batch_size=batch_size)
        session.rollback()  # end the read before the lease releases on its own connection (SQLite)
    report.skipped = len(lease.skipped)
    return report


# --- pulling queries ------------------------------------------------------------------------------------------------


@dataclass
class PullReport:
    tasks_seen: int = 0
    queries: int = 0  # distinct (image, query) written in the intake project now
    items_new: int = 0  # items created by this pull
    items_updated: int = 0  # level/domain changed
    deleted: list[tuple[int, str]] = field(default_factory=list)  # (item id, query): withdrawn, nothing done on it
    kept: list[tuple[int, str, str]] = field(default_factory=list)  # (item id, query, why): withdrawn, work kept
    malformed: list[tuple[int, str]] = field(default_factory=list)  # (LS annotation id, reason)
    skipped_tasks: list[tuple[int, str]] = field(default_factory=list)  # (LS task id, reason)
    item_ids: list[int] = field(default_factory=list)  # the items the intake project holds now

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Ledger:
    """What an intake task produced: query key -> item id, and the ids of the items intake itself created."""

    items: Mapping[str, int]
    created: frozenset[int] = frozenset()

    def meta(self) -> dict[str, Any]:
        return {"items": dict(self.items), "created": sorted(self.created)}


def _ids(values: Any) -> list[int]:
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)] if values else []


def _ledger(task: Mapping[str, Any]) -> Ledger:
    meta = task.get("meta") or {}
    raw = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("items"), Mapping):
        return Ledger({})
    items = {str(k): int(v) for k, v in raw["items"].items() if isinstance(v, int) and not isinstance(v, bool)}
    created = raw.get("created") if isinstance(raw.get("created"), list) else []
    return Ledger(items, frozenset(_ids(created)))


def _task_queries(task: Mapping[str, Any], report: PullReport) -> dict[str, IntakeQuery]:
    """key -> query, over the task's annotations oldest first (so the newest level/domain wins)."""
    anns = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
    anns.sort(key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), int(a.get("id") or 0)))
    out: dict[str, IntakeQuery] = {}
    for ann in anns:
        try:
            parsed = parse_intake_result(ann.get("result") or [])
        except MalformedIntakeError as exc:
            report.malformed.append((int(ann.get("id") or 0), str(exc)))
            continue
        for q in parsed:
            k = query_key(q.query)
            prev = out.get(k)
            out[k] = IntakeQuery(
                prev.query if prev else q.query,
                q.level or (prev.level if prev else None),
                q.domain or (prev.domain if prev else None),
            )
    return out


Plan = tuple[dict[str, Any], int, dict[str, IntakeQuery], Ledger]  # (task, image id, key -> query, ledger)


def _plans(session: Session, tasks: list[dict[str, Any]], report: PullReport) -> list[Plan]:
    """One plan per task whose image is registered here (the others are reported as skipped)."""
    plans: list[Plan] = []
    by_sha = repo.image_ids_by_sha(session, ((t.get("data") or {}).get("image_sha256") for t in tasks))
    for task in tasks:
        report.tasks_seen += 1
        sha = (task.get("data") or {}).get("image_sha256")
        image_id = by_sha.get(sha) if isinstance(sha, str) else None
        if image_id is None:
            report.skipped_tasks.append((int(task["id"]), f"image {sha!r} is not registered in this database"))
            continue
        plans.append((task, image_id, _task_queries(task, report), _ledger(task)))
    return plans


def _write_items(session: Session, plans: list[Plan], report: PullReport) -> tuple[dict[tuple[int, str], Item],
                                                                                    set[int]]:
    """Create the items of new queries, update level/domain of known ones; returns (items by (image, key), new ids).

    Known items are matched by query key, so a CSV item "Red roof" is the intake query "red  roof"."""
    existing = repo.items_on_images(session, [p[1] for p in plans])
    new_records: dict[tuple[int, str], ItemRecord] = {}
    for _task, image_id, queries, _ in plans:
        for k, q in queries.items():
            it = existing.get((image_id, k))
            if it is None:
                new_records[(image_id, k)] = ItemRecord(image_id, q.query, q.level, q.domain)
                continue
            lv, dom = q.level or it.level, q.domain or it.domain
            if (lv, dom) != (it.level, it.domain):
                it.level, it.domain = lv, dom
                report.items_updated += 1
    new_ids: set[int] = set()
    if new_records:
        ids = repo.upsert_items(session, list(new_records.values()))
        report.items_new = len(new_records)
        session.flush()
        for key, r in new_records.items():
            existing[key] = session.get(Item, ids[(r.image_id, r.query)])
            new_ids.add(existing[key].id)
    return existing, new_ids


def _withdraw(session: Session, gone: list[int], created_by_intake: dict[int, bool], report: PullReport) -> None:
    """Delete the withdrawn items intake created and nothing was done on; report the others as kept."""
    work = repo.item_work(session, gone)
    deletable: dict[int, str] = {}
    for iid in gone:
        item = session.get(Item, iid)
        if item is None:
            continue  # deleted by an earlier pull whose ledger write did not happen
        if iid in work:
            report.kept.append((iid, item.query, work[iid]))
        elif not created_by_intake[iid]:
            report.kept.append((iid, item.query, "an origin outside intake (e.g. a queries file)"))
        else:
            deletable[iid] = item.query
    deleted = set(repo.delete_untouched_items(session, list(deletable)))
    report.deleted.extend((iid, q) for iid, q in deletable.items() if iid in deleted)
    report.kept.extend((iid, q, "work was done on it meanwhile") for iid, q in deletable.items() if iid not in deleted)


def pull_queries(client: LabelStudioClient, session: Session, project: ProjectHandle) -> PullReport:
    """Make items of every query written in the intake project; handle edits/deletions (module docstring).

    Commits the database before writing each task's ledger back to Label Studio, so a crash in between only means the
    next pull writes the same ledger again.
    """
    report = PullReport()
    plans = _plans(session, list(client.iter_tasks(project.ls_project_id, fields="all", page_size=200)), report)
    existing, new_ids = _write_items(session, plans, report)

    # withdrawn queries: in a task's ledger, no longer written on it
    withdrawn: dict[int, bool] = {}  # item id -> created by intake (deletable when untouched)
    new_ledgers: dict[int, Ledger] = {}
    for task, image_id, queries, ledger in plans:
        current = {k: existing[(image_id, k)].id for k in queries}
        report.queries += len(current)
        report.item_ids.extend(current.values())
        for k, iid in ledger.items.items():
            if k not in current:
                withdrawn[iid] = iid in ledger.created
        created = frozenset((ledger.created | new_ids) & set(current.values()))
        if (current, created) != (dict(ledger.items), ledger.created):
            new_ledgers[int(task["id"])] = Ledger(current, created)
    still_written = set(report.item_ids)  # the same item may still be written on another task of the same image
    gone = sorted(i for i in withdrawn if i not in still_written)
    if gone:
        _withdraw(session, gone, withdrawn, report)
    session.commit()
    for task_id, ledger in new_ledgers.items():
        task = next(t for t, *_ in plans if int(t["id"]) == task_id)
        meta = dict(task.get("meta") or {})
        meta[META_KEY] = ledger.meta()
        client.request("PATCH", f"/api/tasks/{task_id}", json_body={"meta": meta})
    if report.kept:
        log.warning(
            "intake: %d withdrawn quer(ies) kept because work exists on them (reject them in review if wrong): %s",
            len(report.kept),
            ", ".join(f"item {i}" for i, *_ in report.kept[:10]),
        )
    return report
