"""The whole loop against real services: Prefect (test harness), SQLite, a real Label Studio (labeling.server).

* the demo (``flows.demo.run_demo``) on the real aerial imagery with the tiny models: ingest -> intake project ->
  preannotate -> push -> simulated annotator -> sync -> COCO export + snapshot; then checks what Label Studio and the
  database hold; then what the demo tells a person to do: a query written on an intake task (Label Studio API, as the
  UI's submit) and the printed ``geolabel cycle --intake ...`` command give a review task with a GeoSeg pre-label;
* a label cycle run in a subprocess is SIGKILLed at several points and re-run: no duplicate and nothing lost, both in
  the database and in Label Studio.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.helpers.cli import geolabel_argv

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.labelstudio]


@pytest.fixture
def ls_env(labelstudio_server, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", labelstudio_server.token)
    return labelstudio_server


def _data_dir_beside(ls, name: str) -> Path:
    """A data dir that the fixture's Label Studio can serve: its local-files document root is the parent of the
    fixture's imagery root, and a data dir used as the imagery root (no imagery_roots set) must sit in that parent."""
    return ls.imagery_root.parent / f"{name}-{uuid.uuid4().hex[:6]}"


def _ls_tasks(client, project_id: int) -> list[dict]:
    return list(client.iter_tasks(project_id, fields="all"))


def test_demo_end_to_end_with_tiny_models(prefect_harness, ls_env, tiny_models_root, monkeypatch, capsys):
    from flows.cli import main
    from flows.demo import SIMULATED_ANNOTATOR, print_summary, run_demo
    from flows.runtime import open_runtime, settings_from
    from flows.status import collect_status
    from labeling.intake import intake_result

    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    data_dir = _data_dir_beside(ls_env, "demo")
    title = f"demo {uuid.uuid4().hex[:6]}"
    intake_title = f"intake {title}"
    monkeypatch.setenv("GEOLABEL_LABEL_STUDIO_URL", ls_env.url)
    lines: list[str] = []
    res = run_demo(
        data_dir, start_label_studio=False, project_title=title, intake_title=intake_title, echo=lines.append
    )
    print_summary(res, echo=lines.append)
    text = "\n".join(lines)
    assert "tiny randomly initialised models" in text and SIMULATED_ANNOTATOR in text
    assert res.project_url in text and "LABEL_STUDIO_USER_TOKEN" in text and ls_env.token not in text
    # the printout tells a person what to do next: the intake project, the env, the exact cycle command
    assert res.intake_url in text and "source scripts/env.sh" not in text and res.commands["cycle"] in text
    assert res.commands["ml_backend"] in text and "ml-backend" in text

    cyc = res.reports["cycle"]
    assert cyc["ingest"]["images_new"] == 6 and cyc["ingest"]["items_new"] == 10
    assert cyc["preannotate"]["predicted"] + cyc["preannotate"]["failed"] == 10
    assert cyc["push"]["pushed"] == cyc["preannotate"]["predicted"]
    tasks = _ls_tasks(ls_env.client, cyc["push"]["ls_project_id"])
    assert len(tasks) == cyc["push"]["pushed"]
    for t in tasks:  # every task shows the image (a displayable rendition), the query and the model's pre-label
        assert t["data"]["image"].startswith("/data/local-files/?d=")
        assert t["data"]["query"] and len(t["predictions"]) == 1
        assert t["predictions"][0]["model_version"] == cyc["preannotate"]["model_version"]
        assert len(t["annotations"]) == 1
    # every image is served by Label Studio as a browser-displayable file (GeoTIFFs as PNG renditions)
    import httpx

    for t in tasks:
        assert t["data"]["image"].startswith("/data/local-files/?d=")
        r = httpx.get(ls_env.url + t["data"]["image"], headers={"Authorization": f"Token {ls_env.token}"}, timeout=60)
        assert r.status_code == 200, (t["data"]["image"], r.status_code)
        assert r.content[:3] in (b"\x89PN", b"\xff\xd8\xff")

    # the intake project: one task per ingested image, nothing written yet
    intake = cyc["intake"]
    assert (intake["tasks_created"], intake["queries"], intake["items_new"]) == (6, 0, 0)
    assert res.intake_url == f"{ls_env.url}/projects/{intake['ls_project_id']}"
    intake_tasks = sorted(_ls_tasks(ls_env.client, intake["ls_project_id"]), key=lambda t: t["id"])
    assert len(intake_tasks) == 6 and len({t["data"]["image_sha256"] for t in intake_tasks}) == 6

    acts = Counter(a.action for a in res.actions)
    assert sum(acts.values()) == len(tasks) and acts["reject"] >= 1 and acts["no target"] >= 1
    st = collect_status(open_runtime(settings_from({"data_dir": str(data_dir)})))
    assert st["annotations"]["total"] == len(tasks)
    assert st["triplets"]["active"] == acts["accept"] + acts["correct"]
    (quality,) = st["prelabel_quality"]  # one model version: the demo's tiny profile
    assert quality["n_annotations"] == len(tasks)
    assert quality["acceptance_rate"] == pytest.approx((acts["accept"] + acts["correct"]) / len(tasks))
    assert res.reports["export"]["annotations"] == st["triplets"]["active"]
    coco = json.loads(Path(res.outputs["coco"]).read_text())
    assert len(coco["annotations"]) == st["triplets"]["active"]
    assert "error" not in res.reports["snapshot"], res.reports["snapshot"]

    # a person follows the printout: writes a query on an intake task (the UI's submit = this API call), then runs the
    # printed `geolabel cycle --intake ...` (in-process; the env it names is this test's) -> a review task with the
    # GeoSeg pre-label (tiny models: the mask is meaningless; only its presence and model_version are checked)
    my_query = "the sunlit gap in the canopy"
    ls_env.client.create_annotation(intake_tasks[1]["id"], intake_result([my_query], "L2"), lead_time=12.0)
    argv = geolabel_argv(res.commands["cycle"])
    assert argv[0].endswith("geolabel") and argv[1:3] == ["cycle", "--intake"]
    capsys.readouterr()
    main([*argv[1:], "--json"])
    out = capsys.readouterr().out
    rep = json.loads(out[out.index("{") :])
    assert (rep["intake"]["ls_project_id"], rep["intake"]["items_new"]) == (intake["ls_project_id"], 1)
    assert (rep["preannotate"]["predicted"], rep["push"]["pushed"]) == (1, 1)
    assert rep["push"]["ls_project_id"] == cyc["push"]["ls_project_id"]  # the demo's review project
    # `sync` without --project reads the project holding this data dir's tasks (no empty default project)
    main(["sync", "--data-dir", str(data_dir), "--json"])
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{") :])["ls_project_id"] == cyc["push"]["ls_project_id"]
    mine = [t for t in _ls_tasks(ls_env.client, cyc["push"]["ls_project_id"]) if t["data"]["query"] == my_query]
    assert len(mine) == 1 and mine[0]["annotations"] == []
    assert [p["model_version"] for p in mine[0]["predictions"]] == [cyc["preannotate"]["model_version"]]

    # a second demo run changes nothing, and its simulated annotator leaves the person's review task alone
    res2 = run_demo(
        data_dir, start_label_studio=False, project_title=title, intake_title=intake_title, echo=lambda s: None
    )
    c2 = res2.reports["cycle"]
    assert (c2["ingest"]["images_new"], c2["ingest"]["items_new"], c2["preannotate"]["pending"]) == (0, 0, 0)
    assert (c2["intake"]["tasks_created"], c2["intake"]["items_new"], c2["intake"]["queries"]) == (0, 0, 1)
    assert (c2["push"]["pushed"], c2["push"]["reconciled"], res2.actions) == (0, 0, [])
    assert len(_ls_tasks(ls_env.client, cyc["push"]["ls_project_id"])) == len(tasks) + 1
    assert [
        t["annotations"] for t in _ls_tasks(ls_env.client, cyc["push"]["ls_project_id"]) if t["id"] == mine[0]["id"]
    ] == [[]]


_RUNNER = """
import json, sys
sys.path.insert(0, {root!r})
from tests.fixtures.instant import register_instant
from flows.cycle import label_cycle_flow
register_instant("instant-kill", delay_s={delay})
rep = label_cycle_flow({src!r}, {queries!r}, profile="instant-kill", settings_overrides={overrides!r},
                       project_title={title!r}, batch_size=2, push_batch_size=3)
print("CYCLE-DONE", json.dumps(rep.to_dict(), default=str))
"""


def _counts(overrides: dict) -> dict[str, int]:
    from flows.runtime import open_runtime, settings_from
    from flows.status import collect_status

    st = collect_status(open_runtime(settings_from(overrides)))
    return {k: st[k]["total"] for k in ("images", "items", "predictions", "tasks", "annotations")}


def _run_cycle(env: dict, script: str, kill_when=None, timeout: float = 300.0) -> tuple[bool, str]:
    """Run the cycle; when ``kill_when()`` turns true, SIGKILL the whole process group. Returns (killed, output)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + timeout
    killed = False
    while proc.poll() is None and time.monotonic() < deadline:
        if kill_when is not None:
            try:
                hit = kill_when()
            except Exception:  # noqa: BLE001 - schema not created yet
                hit = False
            if hit:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
        time.sleep(0.05)
    if proc.poll() is None and not killed:
        os.killpg(proc.pid, signal.SIGKILL)
    out = proc.communicate(timeout=30)[0].decode(errors="replace")
    return killed, out


def test_killed_label_cycle_resumes_without_duplicates_or_losses(prefect_harness, ls_env, tmp_path):
    import prefect.settings

    from flows.runtime import forget_runtimes

    data_dir = _data_dir_beside(ls_env, "kill")
    overrides = {"data_dir": str(data_dir), "label_studio_url": ls_env.url}
    title = f"kill test {uuid.uuid4().hex[:6]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=prefect.settings.PREFECT_API_URL.value(),  # the session's harness server
        LABEL_STUDIO_USER_TOKEN=ls_env.token,
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    script = _RUNNER.format(
        root=str(ROOT),
        delay=0.15,
        src=str(AERIAL),
        queries=str(AERIAL / "queries.csv"),
        overrides=overrides,
        title=title,
    )
    kill_points = [
        ("during ingest/preannotate", lambda: 0 < _counts(overrides)["predictions"] < 10),
        ("during preannotate, later", lambda: 4 <= _counts(overrides)["predictions"] < 10),
        ("during push", lambda: 0 < _counts(overrides)["tasks"] < 10),
    ]
    killed_at = []
    for name, when in kill_points:
        killed, out = _run_cycle(env, script, when)
        assert "Traceback" not in out or killed, out[-3000:]
        killed_at.append((name, killed, _counts(overrides)))
        forget_runtimes()
    assert any(k for _, k, _ in killed_at), killed_at  # at least one run really was killed mid-way
    killed, out = _run_cycle(env, script)  # and one to completion
    assert not killed and "CYCLE-DONE" in out, out[-3000:]

    final = _counts(overrides)
    assert final == {"images": 6, "items": 10, "predictions": 10, "tasks": 10, "annotations": 0}, killed_at
    from flows.runtime import open_runtime, settings_from
    from storage.models import LabelProject, LabelTask, Prediction

    rt = open_runtime(settings_from(overrides))
    with rt.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Prediction).where(Prediction.error.is_not(None))) == 0
        (ls_pid,) = s.execute(sa.select(LabelProject.ls_project_id).where(LabelProject.title == title)).one()
        db_tasks = dict(s.execute(sa.select(LabelTask.item_id, LabelTask.ls_task_id)).tuples().all())
    tasks = _ls_tasks(ls_env.client, ls_pid)
    per_item = Counter(t["data"]["item_id"] for t in tasks)
    assert len(tasks) == 10 and set(per_item.values()) == {1}, per_item  # no duplicate task in Label Studio
    assert {t["data"]["item_id"]: t["id"] for t in tasks} == db_tasks  # and the database points at them
    assert all(len(t["predictions"]) == 1 for t in tasks)
