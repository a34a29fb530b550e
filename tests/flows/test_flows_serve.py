"""Deployments: `serve_deployments` (what `geolabel serve` runs) against a real `prefect server start`; one
deployment run triggered through the API, executed by the serving process, with real effects in the database and
Label Studio. Models: the orchestration-only instant pipeline, named by a ``py:`` profile that the flow-run process
resolves itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
ROOT = Path(__file__).resolve().parents[2]


def test_serve_config_validation():
    from flows.serve import ServeConfig

    with pytest.raises(ValueError, match="every_minutes must be > 0"):
        ServeConfig(every_minutes=0)
    with pytest.raises(ValueError, match="both source and queries"):
        ServeConfig(source="x")
    with pytest.raises(ValueError, match="bad export cron"):
        ServeConfig(export_cron="every night")


@pytest.mark.slow
@pytest.mark.labelstudio
def test_label_cycle_deployment_runs_on_a_real_prefect_server(prefect_server, labelstudio_server, tmp_path):
    import prefect.settings
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from flows.runtime import open_runtime, settings_from
    from flows.serve import LABEL_CYCLE, NIGHTLY_EXPORT
    from flows.status import collect_status

    ls = labelstudio_server
    overrides = {"data_dir": str(ls.imagery_root.parent / f"serve-{uuid.uuid4().hex[:6]}"), "label_studio_url": ls.url}
    script = (
        "from flows.serve import ServeConfig, serve_deployments\n"
        f"serve_deployments(ServeConfig(every_minutes=600, profile='py:tests.fixtures.instant:instant_pipeline', "
        f"source={str(AERIAL)!r}, queries={str(AERIAL / 'queries.csv')!r}, settings_overrides={overrides!r}, "
        f"project_title={'serve ' + uuid.uuid4().hex[:6]!r}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=prefect_server,
        PREFECT_RUNNER_POLL_FREQUENCY="2",
        LABEL_STUDIO_USER_TOKEN=ls.token,
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        with prefect.settings.temporary_settings({prefect.settings.PREFECT_API_URL: prefect_server}):
            deadline = time.monotonic() + 180
            deps = {}
            while time.monotonic() < deadline and len(deps) < 2:
                assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                with get_client(sync_client=True) as client:
                    deps = {d.name: d for d in client.read_deployments() if d.name in (LABEL_CYCLE, NIGHTLY_EXPORT)}
                time.sleep(1)
            assert set(deps) == {LABEL_CYCLE, NIGHTLY_EXPORT}, (tmp_path / "serve.log").read_text()[-3000:]
            cyc, exp = deps[LABEL_CYCLE], deps[NIGHTLY_EXPORT]
            assert cyc.schedules[0].schedule.interval.total_seconds() == 600 * 60
            assert exp.schedules[0].schedule.cron == "0 2 * * *"
            run = run_deployment(f"label-cycle/{LABEL_CYCLE}", timeout=300, poll_interval=2)
            assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-3000:])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    st = collect_status(open_runtime(settings_from(overrides)))
    assert (st["images"]["total"], st["items"]["total"], st["predictions"]["total"], st["tasks"]["total"]) == (
        6,
        10,
        10,
        10,
    )
