"""Label Studio faults (issue 9, part 3), on the session's REAL Label Studio behind an HTTP fault proxy
(tests/helpers/faults.py) that injects 5xx answers, delays, lost answers and "server stopped" (connection refused).

Each case: transient faults are retried with backoff and the push/sync completes; persistent ones end in a clear
error naming Label Studio's URL; after recovery a re-run completes with every item exactly once in Label Studio and in
the database, and every annotation stored once.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import sqlalchemy as sa

from labeling.client import LabelStudioAuthError, LabelStudioClient, LabelStudioUnavailableError
from labeling.push import brush_result, push_predictions
from labeling.sync import sync_annotations
from storage import repo
from storage.models import Annotation, LabelTask, Triplet
from tests.helpers.faults import HttpFaultProxy
from tests.helpers.labelstudio import MV
from tests.helpers.labelstudio import resolver as _resolver
from tests.helpers.labelstudio import seed as _seed
from tests.helpers.labelstudio import verdict as _verdict

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

IMPORT = ("POST", "import")


@pytest.fixture
def proxy(labelstudio_server):
    with HttpFaultProxy(labelstudio_server.url) as px:
        yield px


def _client(px, token, **kw) -> LabelStudioClient:
    kw = {"retries": 4, "backoff": 0.05, "max_backoff": 0.2, "timeout": 30.0, **kw}
    return LabelStudioClient(px.url, token, **kw)


def _assert_exactly_once(p, item_ids):
    tasks = list(p.ls.client.iter_tasks(p.handle.ls_project_id, fields="all"))
    per_item = Counter(t["data"]["item_id"] for t in tasks)
    assert set(per_item) == set(item_ids) and set(per_item.values()) == {1}, per_item
    assert all(len(t["predictions"]) == 1 for t in tasks)
    p.session.expire_all()
    db = dict(p.session.execute(sa.select(LabelTask.item_id, LabelTask.ls_task_id)).tuples().all())
    assert db == {t["data"]["item_id"]: t["id"] for t in tasks}
    return tasks


def _imports(px) -> int:
    return sum(n for (m, path), n in px.seen.items() if m == "POST" and path.endswith("/import"))


def test_transient_5xx_on_import_is_retried_then_push_completes(ls_project, proxy):
    p = ls_project
    ids = _seed(p, 4, tag="t5xx")
    faults = {1: {"status": 503}, 2: {"status": 502}, 4: {"status": 503}}  # LS surely did not act on these
    proxy.trigger = lambda m, path, n: faults.get(n) if m == "POST" and path.endswith("/import") else None
    with _client(proxy, p.ls.token) as c:
        rep = push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=2)
    assert rep.pushed == 4 and not rep.failed
    assert [a for _, _, a in proxy.actions] == [{"status": 503}, {"status": 502}, {"status": 503}]
    assert _imports(proxy) == 5  # 2 batches, 3 retried attempts
    _assert_exactly_once(p, ids)


def test_persistent_5xx_gives_clear_error_then_rerun_completes(ls_project, proxy):
    p = ls_project
    ids = _seed(p, 3, tag="p5xx")
    proxy.trigger = lambda m, path, n: {"status": 503}
    t0 = time.perf_counter()
    with _client(proxy, p.ls.token) as c, pytest.raises(LabelStudioUnavailableError) as ei:
        push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert proxy.url in str(ei.value) and "503" in str(ei.value) and "after 4 attempt" in str(ei.value)
    assert time.perf_counter() - t0 >= 0.05 + 0.1 + 0.2  # backoff between the attempts
    p.session.rollback()
    proxy.trigger = None  # recovered
    with _client(proxy, p.ls.token) as c:
        rep = push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert rep.pushed + rep.reconciled == 3
    _assert_exactly_once(p, ids)


@pytest.mark.parametrize("after", [500, "drop"])
def test_import_acted_on_but_answer_lost_is_reconciled_not_duplicated(ls_project, proxy, after):
    """Between a Label Studio import and the database write: LS created the tasks, the client saw a 500 / nothing."""
    p = ls_project
    ids = _seed(p, 4, tag=f"lost{after}")
    proxy.trigger = lambda m, path, n: {"after": after} if m == "POST" and path.endswith("/import") else None
    with _client(proxy, p.ls.token) as c:
        rep = push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=4)
    assert _imports(proxy) == 1  # a non-idempotent POST with an unknown outcome is NOT blindly retried...
    assert rep.pushed + rep.reconciled == 4 and not rep.failed  # ...but reconciled by data.item_id at once
    _assert_exactly_once(p, ids)
    proxy.trigger = None
    with _client(proxy, p.ls.token) as c:  # a re-run has nothing left to do
        rep2 = push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=4)
    assert (rep2.pushed, rep2.reconciled, _imports(proxy)) == (0, 0, 1)
    _assert_exactly_once(p, ids)


def test_label_studio_stopped_mid_push_then_back(ls_project, proxy):
    p = ls_project
    ids = _seed(p, 6, tag="down")
    # the 2nd import is carried out, then Label Studio "dies": its answer is lost and the port refuses connections
    proxy.trigger = lambda m, path, n: {"after": "down"} if m == "POST" and path.endswith("import") and n == 2 else None
    with _client(proxy, p.ls.token) as c, pytest.raises(LabelStudioUnavailableError) as ei:
        push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=2)
    assert proxy.url in str(ei.value)
    p.session.rollback()
    committed = p.session.scalar(sa.select(sa.func.count()).select_from(LabelTask))
    assert committed == 2  # the first batch was committed before the fault
    with _client(proxy, p.ls.token, retries=2) as c, pytest.raises(LabelStudioUnavailableError, match="ConnectError"):
        c.version()  # still down: connection refused, retried, clear error
    proxy.trigger = None
    proxy.up()
    with _client(proxy, p.ls.token) as c:
        rep = push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p), batch_size=2)
    assert rep.reconciled == 2 and rep.pushed == 2
    _assert_exactly_once(p, ids)


def test_slow_label_studio_times_out_reads_retry_and_writes_reconcile(ls_project, proxy):
    p = ls_project
    ids = _seed(p, 2, tag="slow")
    proxy.queue({"sleep": 1.5})  # one slow read: the client times out, retries, succeeds
    with _client(proxy, p.ls.token, timeout=0.5) as c:
        assert c.version()
    assert proxy.actions == [("GET", "/api/version", {"sleep": 1.5})]
    # a slow import: the client gives up waiting (outcome unknown), the import is still running inside Label Studio.
    # Re-importing at once would duplicate every task when the slow one lands: push waits for it and reconciles.
    proxy.trigger = lambda m, path, n: {"sleep": 1.5} if m == "POST" and path.endswith("/import") else None
    with _client(proxy, p.ls.token, timeout=0.5) as c:
        rep = push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert rep.reconciled == 2 and rep.pushed == 0 and _imports(proxy) == 1
    proxy.trigger = None
    time.sleep(0.5)
    _assert_exactly_once(p, ids)
    with _client(proxy, p.ls.token) as c:  # a re-run has nothing left to do
        rep = push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert rep.pushed + rep.reconciled == 0
    _assert_exactly_once(p, ids)


def test_wrong_token_fails_fast_with_the_variable_named(ls_project, proxy):
    p = ls_project
    _seed(p, 1, tag="tok")
    with _client(proxy, "0" * 40) as c, pytest.raises(LabelStudioAuthError, match="LABEL_STUDIO_USER_TOKEN"):
        push_predictions(c, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    assert sum(proxy.seen.values()) == 1  # not retried: a wrong token is not transient
    p.session.rollback()
    assert p.session.scalar(sa.select(sa.func.count()).select_from(LabelTask)) == 0


def test_label_studio_stopped_mid_sync_then_rerun_stores_everything_once(ls_project, proxy):
    p = ls_project
    ids = _seed(p, 6, tag="sync")
    push_predictions(p.ls.client, p.session, p.blobs, p.handle, MV, image_url=_resolver(p))
    lts = {lt.item_id: lt for lt in repo.label_tasks(p.session, p.handle.label_project_id)}
    made = []

    def annotate(some):
        for i in some:
            m = np.zeros((48, 64), bool)
            m[i % 30 : i % 30 + 10, 5:25] = True
            made.append(p.ls.client.create_annotation(lts[i].ls_task_id, [*brush_result(m), _verdict("accept")])["id"])

    annotate(ids[:3])
    with _client(proxy, p.ls.token) as c:
        assert sync_annotations(c, p.session, p.blobs, p.handle).upserted == 3
    annotate(ids[3:])
    # Label Studio dies while answering the next sync's task listing
    proxy.trigger = lambda m, path, n: {"after": "down"} if m == "GET" and path == "/api/tasks" else None
    with _client(proxy, p.ls.token, retries=2) as c, pytest.raises(LabelStudioUnavailableError):
        sync_annotations(c, p.session, p.blobs, p.handle)
    p.session.rollback()
    proxy.trigger = None
    proxy.up()
    with _client(proxy, p.ls.token) as c:
        assert sync_annotations(c, p.session, p.blobs, p.handle).upserted >= 3
    p.session.expire_all()
    got = Counter(p.session.scalars(sa.select(Annotation.ls_annotation_id)))
    assert set(got) == set(made) and set(got.values()) == {1}
    trip = Counter(p.session.scalars(sa.select(Triplet.item_id).where(Triplet.withdrawn.is_(False))))
    assert set(trip) == set(ids) and set(trip.values()) == {1}
