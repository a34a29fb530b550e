"""Scale-out for real: `prefect server start`, a process work pool with two `prefect worker start` processes,
PostgreSQL and moto_server S3; the model stage is the fixed-time ``py:tests.helpers.scaleout:sleepy_pipeline`` (its
masks mean nothing). One test per behaviour:

* 200 items dispatched as batch flow runs: each item predicted exactly once, by both workers together;
* three concurrent ``geolabel push`` into one project: one Label Studio task per item;
* two overlapping runs of the label-cycle deployment: the second is cancelled by the server (cancel-new);
* a worker SIGKILLed mid-batch: its lease expires, the dispatcher re-dispatches, the other worker finishes.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures.storage import MOTO_CREDENTIALS, MOTO_REGION, add_image, add_item

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
AERIAL = ROOT / "tests" / "data" / "aerial"
IMAGES = ("SOAP_031.png", "SOAP_061.png")
PROFILE = "py:tests.helpers.scaleout:sleepy_pipeline"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": MOTO_CREDENTIALS["aws_access_key_id"],
    "AWS_SECRET_ACCESS_KEY": MOTO_CREDENTIALS["aws_secret_access_key"],
    "AWS_DEFAULT_REGION": MOTO_REGION,
}


def _env(api_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(AWS_ENV)
    env.update(
        PREFECT_API_URL=api_url,
        PYTHONPATH=str(ROOT),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def pool(prefect_server, tmp_path_factory):
    """A process work pool with the geolabel deployments and two workers (one flow run at a time each)."""
    import prefect.settings

    from flows.dispatch import deploy

    tmp = tmp_path_factory.mktemp("pool")
    name = f"gpu-{uuid.uuid4().hex[:6]}"
    calls = tmp / "model-calls.log"
    sleep = tmp / "sleep_s"
    sleep.write_text("0.02")
    with prefect.settings.temporary_settings({prefect.settings.PREFECT_API_URL: prefect_server}):
        deploy(name, profile=PROFILE)
    env = _env(prefect_server, GEOLABEL_TEST_MODEL_SLEEP_S=str(sleep), GEOLABEL_TEST_MODEL_LOG=str(calls))
    workers, logs = [], []
    for k in range(2):
        log = open(tmp / f"worker{k}.log", "wb")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", name, "--name", f"w{k}", "--limit", "1"]
        workers.append(
            subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
        logs.append(log)
    try:
        yield {"name": name, "api": prefect_server, "calls": calls, "sleep": sleep, "workers": workers, "tmp": tmp}
    finally:
        for p in workers:
            _stop(p)
        for log in logs:
            log.close()


@pytest.fixture
def shared(pg_schema_url, moto_server, s3_bucket, tmp_path, monkeypatch, pool):
    """Settings every process shares: a fresh PostgreSQL schema and an S3 bucket on moto_server."""
    import prefect.settings

    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)
    overrides = {
        "data_dir": str(tmp_path / "data"),
        "database_url": pg_schema_url,
        "blob_url": f"s3://{s3_bucket}/blobs",
        "s3_endpoint_url": moto_server,
    }
    with prefect.settings.temporary_settings({prefect.settings.PREFECT_API_URL: pool["api"]}):
        yield overrides
    from flows.runtime import forget_runtimes

    forget_runtimes()


def _add_items(overrides: dict, prefix: str, n: int) -> list[int]:
    """``n`` items over the aerial images, their bytes in the S3 blob store."""
    from flows.runtime import open_runtime, settings_from
    from geoseg.imagery import read_image
    from storage.records import ImageRecord, ItemRecord

    rt = open_runtime(settings_from(overrides))
    ids = []
    with rt.session() as s:
        image_ids = []
        for name in IMAGES:
            data = (AERIAL / name).read_bytes()
            sha = rt.blobs.put(data)
            assert sha == hashlib.sha256(data).hexdigest()
            rec = ImageRecord.from_loaded(read_image(data, name=name), sha256=sha, uri=str(AERIAL / name))
            image_ids.append(add_image(s, rec))
        for k in range(n):
            ids.append(add_item(s, ItemRecord(image_ids[k % len(image_ids)], f"{prefix} target {k}")))
    return ids


def _calls(path: Path, prefix: str) -> list[tuple[int, int, str]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        pid, ppid, query = line.split("\t", 2)
        if query.startswith(prefix + " "):
            out.append((int(pid), int(ppid), query))
    return out


def _predictions(overrides: dict) -> collections.Counter:
    import sqlalchemy as sa

    from flows.runtime import open_runtime, settings_from
    from storage.models import Prediction

    rt = open_runtime(settings_from(overrides))
    with rt.session() as s:
        rows = s.execute(sa.select(Prediction.item_id, Prediction.error)).all()
    assert all(err is None for _, err in rows), [r for r in rows if r[1]][:3]
    return collections.Counter(i for i, _ in rows)


def test_two_workers_predict_each_item_exactly_once(pool, shared):
    from flows.dispatch import dispatch_flow

    prefix = f"once-{uuid.uuid4().hex[:6]}"
    ids = _add_items(shared, prefix, 200)
    rep = dispatch_flow(PROFILE, settings_overrides=shared, batch_size=25, lease_s=30, poll_s=1, timeout_s=400)
    assert rep.pending == 200 and rep.batches == 8 and rep.runs == {"COMPLETED": 8} and rep.still_pending == 0
    preds = _predictions(shared)
    assert sorted(preds) == sorted(ids) and set(preds.values()) == {1}
    calls = _calls(pool["calls"], prefix)
    per_query = collections.Counter(q for _, _, q in calls)
    assert len(per_query) == 200 and set(per_query.values()) == {1}  # no duplicated model work
    assert {ppid for _, ppid, _ in calls} == {w.pid for w in pool["workers"]}  # both workers took batches


@pytest.mark.labelstudio
def test_three_concurrent_pushes_make_one_task_per_item(pool, shared, labelstudio_server):
    from flows.preannotate import pending_work, predict_batch
    from flows.runtime import open_runtime, settings_from

    ls = labelstudio_server
    prefix = f"push-{uuid.uuid4().hex[:6]}"
    ids = _add_items(shared, prefix, 30)
    rt = open_runtime(settings_from(shared))
    from flows.preannotate import model_version_of

    assert predict_batch(rt, PROFILE, pending_work(rt, model_version_of(PROFILE), None, True)).predicted == 30
    title = f"scaleout {uuid.uuid4().hex[:6]}"
    data_dir = ls.imagery_root.parent / f"push-{uuid.uuid4().hex[:6]}"
    env = _env(
        pool["api"],
        GEOLABEL_DATA_DIR=str(data_dir),
        GEOLABEL_DATABASE_URL=shared["database_url"],
        GEOLABEL_BLOB_URL=shared["blob_url"],
        GEOLABEL_S3_ENDPOINT_URL=shared["s3_endpoint_url"],
        GEOLABEL_LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_USER_TOKEN=ls.token,
    )
    cmd = [sys.executable, "-m", "flows.cli", "push", "--profile", PROFILE, "--project", title, "--json"]
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    summaries = [json.loads(out.decode()[out.decode().index("{") :]) for out, _ in outs]
    projects = [p for p in ls.client.projects(title=title) if p.get("title") == title]
    assert len(projects) == 1  # one project for three runs
    tasks = list(ls.client.iter_tasks(projects[0]["id"], fields="task_only", page_size=500))
    per_item = collections.Counter((t.get("data") or {}).get("item_id") for t in tasks)
    assert sorted(per_item) == sorted(ids) and set(per_item.values()) == {1}, per_item.most_common(3)
    assert sum(s.get("pushed", 0) + s.get("reconciled", 0) for s in summaries) == 30, summaries


@pytest.mark.labelstudio
def test_overlapping_cycles_second_is_cancelled(pool, shared, labelstudio_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.serve import LABEL_CYCLE

    ls = labelstudio_server
    overrides = {
        **shared,
        "data_dir": str(ls.imagery_root.parent / f"cycle-{uuid.uuid4().hex[:6]}"),
        "label_studio_url": ls.url,
    }
    script = (
        "from flows.serve import ServeConfig, serve_deployments\n"
        f"serve_deployments(ServeConfig(every_minutes=600, profile={PROFILE!r}, source={str(AERIAL)!r}, "
        f"queries={str(AERIAL / 'queries.csv')!r}, settings_overrides={overrides!r}, intake=False, "
        f"project_title={'cycle ' + uuid.uuid4().hex[:6]!r}))\n"
    )
    hold = tmp_path / "sleep_s"  # the first cycle's model stage stays slow until the second run is decided
    hold.write_text("3.0")
    env = _env(pool["api"], LABEL_STUDIO_USER_TOKEN=ls.token, GEOLABEL_TEST_MODEL_SLEEP_S=str(hold))
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 180
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                try:
                    dep = client.read_deployment_by_name(f"label-cycle/{LABEL_CYCLE}")
                    break
                except Exception:  # noqa: BLE001 - not registered yet
                    time.sleep(1)
            assert dep.global_concurrency_limit.limit == 1
            assert dep.concurrency_options.collision_strategy.value == "CANCEL_NEW"
            first = run_deployment(f"label-cycle/{LABEL_CYCLE}", timeout=0)
            while client.read_flow_run(first.id).state.type.value not in ("RUNNING", "COMPLETED", "FAILED", "CRASHED"):
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.5)
            second = run_deployment(f"label-cycle/{LABEL_CYCLE}", timeout=0)  # due while the first still works
            end = time.monotonic() + 240
            first_when_decided = None
            while time.monotonic() < end:
                s1, s2 = client.read_flow_run(first.id).state, client.read_flow_run(second.id).state
                if s2.is_final() and first_when_decided is None:
                    first_when_decided = s1.type.value
                    hold.write_text("0")  # the second is decided: let the first finish
                if s1.is_final() and s2.is_final():
                    break
                time.sleep(1)
    finally:
        _stop(proc)
        log.close()
    assert s1.is_completed(), (s1, (tmp_path / "serve.log").read_text()[-3000:])
    assert s2.is_cancelled() and "concurrency limit" in (s2.message or ""), (s2, first_when_decided)


def test_killed_worker_lease_expires_and_the_other_worker_finishes(pool, shared):
    """Last in the module: it kills one of the two workers."""
    from flows.dispatch import dispatch_flow

    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    ids = _add_items(shared, prefix, 60)
    pool["sleep"].write_text("0.3")  # 30 items: a 9 s batch on each worker
    result: dict = {}

    def run() -> None:
        result["report"] = dispatch_flow(
            PROFILE, settings_overrides=shared, batch_size=30, lease_s=3, poll_s=1, timeout_s=300
        )

    t = threading.Thread(target=contextvars.copy_context().run, args=(run,))  # the Prefect API settings with it
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_calls(pool["calls"], prefix)) < 5:
        time.sleep(0.05)
    calls = _calls(pool["calls"], prefix)
    assert calls, "no batch started"
    victim = next(w for w in pool["workers"] if w.pid == calls[-1][1])
    os.killpg(victim.pid, signal.SIGKILL)  # the worker, mid-batch
    with contextlib.suppress(ProcessLookupError):
        os.kill(calls[-1][0], signal.SIGKILL)  # and its flow-run process (if it is in another process group)
    victim.wait(timeout=10)
    t.join(timeout=300)
    rep = result["report"]
    assert len(rep.lost_runs) == 1 and rep.still_pending == 0 and rep.rounds == 2, rep
    preds = _predictions(shared)
    assert sorted(preds) == sorted(ids) and set(preds.values()) == {1}
    per_query = collections.Counter(q for _, _, q in _calls(pool["calls"], prefix))
    assert len(per_query) == 60
    twice = [q for q, n in per_query.items() if n > 1]
    assert len(twice) <= 30  # only the killed batch's items that it had started can have been run twice
