"""Query intake against a real Label Studio (``labelstudio_server``, one per session) and a fresh SQLite database.

An annotator writes queries on an intake task through Label Studio's API (the request the UI's submit sends), the
pull makes items of them (idempotent, normalised), edits and deletions are followed, and the items go through
pre-annotation with the tiny models and the push to a review task with a GeoSeg prediction. Tiny-model masks are
meaningless: only the mechanics are checked.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from labeling.intake import (
    MalformedIntakeError,
    intake_result,
    normalise_query,
    parse_intake_result,
    query_key,
)
from tests.fixtures.storage import add_image, add_item

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"


def test_normalise_and_parse():
    assert normalise_query("  the  red\u00a0roof\t") == "the red roof"
    assert query_key("The Red  roof") == query_key("the red roof")
    qs = parse_intake_result(intake_result(["a pond\n\n  trees  near the road", "A pond"], "l2", "Nature"))
    assert [q.query for q in qs] == ["a pond", "trees near the road"]
    assert {(q.level, q.domain) for q in qs} == {("L2", "Nature")}
    assert parse_intake_result([]) == []
    with pytest.raises(MalformedIntakeError, match="level must be one of"):
        parse_intake_result(intake_result(["x"], level="L9"))
    with pytest.raises(MalformedIntakeError, match="domain must be one of"):
        parse_intake_result(intake_result(["x"], domain="Ocean"))
    with pytest.raises(MalformedIntakeError, match="longer than"):
        parse_intake_result(intake_result(["x" * 1001]))
    with pytest.raises(MalformedIntakeError, match="list of strings"):
        parse_intake_result([{"from_name": "queries", "value": {"text": 5}}])


@pytest.fixture
def intake_env(labelstudio_server, tmp_path):
    """A database with two real aerial images below the server's local-files root, and the intake project."""
    from labeling.intake import ensure_intake_project
    from labeling.push import ImageUrlResolver
    from storage.blobs import LocalBlobStore, sha256_hex
    from storage.db import create_all, make_engine
    from storage.records import ImageRecord

    ls = labelstudio_server
    img_dir = ls.imagery_root / f"intake-{uuid.uuid4().hex[:6]}"
    img_dir.mkdir()
    engine = make_engine(f"sqlite:///{(tmp_path / 'geolabel.db').as_posix()}")
    create_all(engine)
    session = Session(engine)
    for name in ("SOAP_031.png", "SOAP_061.png"):
        dst = img_dir / name
        shutil.copy(AERIAL / name, dst)
        from PIL import Image as PILImage

        w, h = PILImage.open(dst).size
        add_image(session, ImageRecord(sha256_hex(dst.read_bytes()), str(dst), w, h, format="PNG"))
    session.commit()
    handle = ensure_intake_project(
        ls.client, session, f"intake test {uuid.uuid4().hex[:6]}", imagery_root=ls.imagery_root
    )
    session.commit()
    yield {
        "ls": ls,
        "session": session,
        "engine": engine,
        "project": handle,
        "resolver": ImageUrlResolver(ls.imagery_root),
        "blobs": LocalBlobStore(tmp_path / "blobs"),
    }
    session.close()
    engine.dispose()


def _items(session) -> dict[str, object]:
    from storage.models import Item

    session.expire_all()
    return {i.query: i for i in session.scalars(sa.select(Item))}


def test_intake_tasks_pull_edit_delete(intake_env):
    from labeling.intake import create_intake_tasks, ensure_intake_project, pull_queries
    from storage.models import Item

    ls, s, proj = intake_env["ls"], intake_env["session"], intake_env["project"]
    client = ls.client
    rep = create_intake_tasks(client, s, proj, intake_env["resolver"])
    assert (rep.created, rep.existing, rep.failed) == (2, 0, [])
    again = create_intake_tasks(client, s, proj, intake_env["resolver"])
    assert (again.created, again.existing) == (0, 2)
    assert ensure_intake_project(client, s, proj.title).ls_project_id == proj.ls_project_id
    tasks = list(client.iter_tasks(proj.ls_project_id))
    assert len(tasks) == 2 and all(t["data"]["image"].startswith("/data/local-files/?d=") for t in tasks)
    t1, t2 = sorted(tasks, key=lambda t: t["id"])
    # an item from a queries file already exists on image 2 (other case and spacing than the annotator will write)
    from storage.records import ItemRecord

    csv_item = add_item(s, ItemRecord(t2["data"]["image_id"], "Bare  soil patch"))  # stored as "Bare soil patch"
    s.commit()

    # the annotator writes two queries on image 1 (one duplicated with other spacing/case) and one on image 2
    a1 = client.create_annotation(
        t1["id"], intake_result(["the pond", "The  POND", "trees along the road"], "L1", "Nature"), lead_time=12.0
    )
    a2 = client.create_annotation(t2["id"], intake_result(["ｂａｒｅ soil\u00a0 PATCH"]))  # fullwidth, NBSP, case
    r1 = pull_queries(client, s, proj)
    assert (r1.tasks_seen, r1.queries, r1.items_new, r1.malformed) == (2, 3, 2, [])
    items = _items(s)
    assert set(items) == {"the pond", "trees along the road", "Bare soil patch"}  # one item for the CSV's query
    assert items["Bare soil patch"].id == csv_item
    assert (items["the pond"].level, items["the pond"].domain) == ("L1", "Nature")
    assert items["Bare soil patch"].level is None
    ledger = client.get_task(t1["id"])["meta"]["geolabel"]["items"]
    assert sorted(ledger.values()) == sorted([items["the pond"].id, items["trees along the road"].id])

    # idempotent: a second pull creates nothing
    r2 = pull_queries(client, s, proj)
    assert (r2.items_new, r2.items_updated, r2.deleted, r2.kept) == (0, 0, [], [])
    assert s.execute(sa.select(sa.func.count()).select_from(Item)).scalar_one() == 3

    # a second annotator writes the same pond in other words' case -> still one item; a new level wins
    client.create_annotation(t1["id"], intake_result(["THE pond"], "L2"))
    r3 = pull_queries(client, s, proj)
    assert r3.items_new == 0 and r3.items_updated == 1 and _items(s)["the pond"].level == "L2"

    # an edit: "trees along the road" becomes "trees along the river" -> a new item, the old untouched one deleted
    client.update_annotation(a1["id"], intake_result(["the pond", "trees along the river"], "L1", "Nature"))
    r4 = pull_queries(client, s, proj)
    assert r4.items_new == 1 and [q for _, q in r4.deleted] == ["trees along the road"] and r4.kept == []
    assert set(_items(s)) == {"the pond", "trees along the river", "Bare soil patch"}

    # malformed annotation: reported, the others still pulled
    bad = client.create_annotation(t2["id"], [{"from_name": "level", "to_name": "image", "type": "choices",
                                                 "value": {"choices": ["L1", "L2"]}}])
    r5 = pull_queries(client, s, proj)
    assert [a for a, _ in r5.malformed] == [bad["id"]] and r5.items_new == 0 and r5.deleted == []
    client.delete_annotation(bad["id"])

    # the annotator deletes the query that a queries file also had: that item is not intake's to delete
    client.delete_annotation(a2["id"])
    r6 = pull_queries(client, s, proj)
    assert r6.deleted == [] and [(i, why) for i, _, why in r6.kept] == [(csv_item, r6.kept[0][2])]
    assert "outside intake" in r6.kept[0][2] and "Bare soil patch" in _items(s)


def test_intake_to_review_task_with_geoseg_prediction(intake_env, tiny_models_root, monkeypatch, prefect_harness):
    """Query written in LS -> pull -> pre-annotate (tiny) -> push -> review task with a GeoSeg prediction; then the
    query is deleted: the item keeps its prediction and review task (reported as kept), nothing is lost."""
    from flows.preannotate import pending_work, predict_batch
    from flows.runtime import Runtime
    from labeling.intake import create_intake_tasks, pull_queries
    from labeling.project import ensure_project
    from labeling.push import push_predictions
    from storage.models import Item, LabelTask, Prediction

    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    ls, s, proj = intake_env["ls"], intake_env["session"], intake_env["project"]
    client = ls.client
    create_intake_tasks(client, s, proj, intake_env["resolver"])
    t1 = min(client.iter_tasks(proj.ls_project_id), key=lambda t: t["id"])
    ann = client.create_annotation(t1["id"], intake_result(["the dark pond"], "L1", "Nature"))
    rep = pull_queries(client, s, proj)
    assert rep.items_new == 1

    from geoseg.profiles import load_profile
    from storage.settings import Settings

    settings = Settings.load(data_dir=str(Path(s.get_bind().url.database).parent), label_studio_url=ls.url)
    rt = Runtime(settings=settings, engine=s.get_bind(), blobs=intake_env["blobs"])
    mv = load_profile("tiny").model_version
    work = pending_work(rt, mv, None, False)
    assert sum(len(w.items) for w in work) == 1
    outcome = predict_batch(rt, "tiny", work)
    assert outcome.predicted == 1, outcome
    review = ensure_project(client, s, f"review {uuid.uuid4().hex[:6]}", imagery_root=ls.imagery_root)
    s.commit()
    pushed = push_predictions(client, s, rt.blobs, review, mv, image_url=intake_env["resolver"])
    assert pushed.pushed == 1 and pushed.failed == []
    (task,) = list(client.iter_tasks(review.ls_project_id, fields="all"))
    assert task["data"]["query"] == "the dark pond"
    assert [p["model_version"] for p in task["predictions"]] == [mv]

    # the annotator deletes the query: the item has work on it, so it is kept and reported
    client.delete_annotation(ann["id"])
    rep2 = pull_queries(client, s, proj)
    assert rep2.deleted == [] and [q for _, q, _ in rep2.kept] == ["the dark pond"]
    assert "prediction" in rep2.kept[0][2] and "review task" in rep2.kept[0][2]
    s.expire_all()
    assert s.execute(sa.select(sa.func.count()).select_from(Item)).scalar_one() == 1
    assert s.execute(sa.select(sa.func.count()).select_from(Prediction)).scalar_one() == 1
    assert s.execute(sa.select(sa.func.count()).select_from(LabelTask)).scalar_one() == 1
    assert pull_queries(client, s, proj).kept == []  # reported once
