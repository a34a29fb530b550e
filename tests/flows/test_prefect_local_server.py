"""The data dir's local Prefect server (flows.prefect_server), against a real ``prefect server start`` that the module
itself starts: reuse by the next command, artifacts of a real flow run read back through the server's API, an
explicit PREFECT_API_URL winning, and a SIGKILLed command leaving no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_server(tmp_path_factory):
    """A data dir and its local Prefect server (started by flows.prefect_server, stopped after the module)."""
    from flows.prefect_server import PrefectServer

    data_dir = tmp_path_factory.mktemp("prefect-local") / "data"
    srv = PrefectServer.for_data_dir(data_dir)
    st = srv.start(timeout=300)
    try:
        yield data_dir, srv, st
    finally:
        assert srv.stop()
        assert not srv.status().running


def _artifacts(api: str, flow_run_id) -> list[dict]:
    r = httpx.post(f"{api}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}},
                   timeout=30)
    r.raise_for_status()
    return r.json()


def test_server_is_found_again_and_serves_ui(local_server):
    from flows.prefect_server import PrefectServer

    data_dir, srv, st = local_server
    assert st.running and st.api_url.startswith("http://127.0.0.1:") and (data_dir / "prefect" / "server.json").exists()
    again = PrefectServer.for_data_dir(data_dir).start(timeout=60)  # the next command: same server, nothing new
    assert again.pid == st.pid and again.api_url == st.api_url
    assert (data_dir / "prefect" / "prefect.db").is_file()  # run history lives in the data dir
    ui = httpx.get(st.ui_url, timeout=30)
    assert ui.status_code == 200 and "<html" in ui.text.lower()


def test_explicit_prefect_api_url_wins(tmp_path, monkeypatch):
    from flows.prefect_server import use_local_server

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert use_local_server(tmp_path / "d") == "http://127.0.0.1:9/api"
    assert not (tmp_path / "d" / "prefect" / "server.json").exists()  # nothing started


def test_flow_runs_publish_report_and_progress_artifacts(local_server, tmp_path):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ingest import ingest_flow
    from flows.prefect_server import stage_progress
    from flows.runtime import forget_runtimes

    data_dir, _, st = local_server
    queries = tmp_path / "q.csv"
    queries.write_text("image,query,level\nSOAP_031.png,the dark pond,L1\nmissing.png,the road,L2\n")

    @flow(name="progress-probe")
    def probe(n: int) -> None:
        p = stage_progress("probe", n)
        for _ in range(n):
            p.advance()

    with temporary_settings(updates={PREFECT_API_URL: st.api_url}):
        state = ingest_flow(str(AERIAL), str(queries), settings_overrides={"data_dir": str(data_dir)},
                            return_state=True)
        probe_state = probe(3, return_state=True)
    forget_runtimes()
    assert state.is_completed(), state
    arts = {a["key"]: a for a in _artifacts(st.api_url, state.state_details.flow_run_id)}
    md = arts["geolabel-ingest-report"]
    assert md["type"] == "markdown"
    assert "| items_new | 1 |" in md["data"] and "| images_listed | 6 |" in md["data"], md["data"]
    assert "missing.png" in md["data"] and "line 3" in md["data"]  # the failure with its reason
    table = arts["geolabel-ingest-failures"]
    assert table["type"] == "table" and "missing.png" in str(table["data"])
    (progress,) = _artifacts(st.api_url, probe_state.state_details.flow_run_id)
    assert progress["type"] == "progress" and float(progress["data"]) == 100.0
    # ... and a person sees the report in the Prefect UI: the UI is told where this server's API is, and lists it
    assert httpx.get(f"{st.ui_url}/ui-settings", timeout=30).json()["api_url"] == st.api_url
    from tests.fixtures.browser import chromium_page

    with chromium_page(1400, 900) as page:
        page.goto(f"{st.ui_url}/artifacts")
        page.get_by_text("geolabel-ingest-report").first.wait_for(timeout=60_000)


def _processes_with(marker: str) -> list[tuple[int, str]]:
    """Live processes whose environment carries ``marker`` (children inherit it, wherever they were reparented)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes()
            if marker.encode() in env:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if (d / "stat").read_text().split()[2] != "Z":
                    found.append((int(d.name), cmd))
        except OSError:
            continue
    return found


def test_sigkilled_command_leaves_no_process(local_server, tiny_models_root):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.ingest import ingest_flow
    from flows.runtime import forget_runtimes

    data_dir, srv, st = local_server
    with temporary_settings(updates={PREFECT_API_URL: st.api_url}):  # 10 items to pre-annotate
        ingest_flow(str(AERIAL), str(AERIAL / "queries.csv"), settings_overrides={"data_dir": str(data_dir)})
    forget_runtimes()
    marker = f"GEOLABEL_KILL_MARK_{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({marker: "1", "GEOLABEL_PREFECT_SERVER": "local", "GEOLABEL_MODEL_CACHE": str(tiny_models_root),
                "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    before = {r["id"] for r in httpx.post(f"{st.api_url}/flow_runs/filter", json={}, timeout=30).json()}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "preannotate", "--batch-size", "1",
                             "--data-dir", str(data_dir)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    running = None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and running is None:
        runs = httpx.post(f"{st.api_url}/flow_runs/filter", json={}, timeout=30).json()
        running = next((r for r in runs if r["id"] not in before and r["state_type"] == "RUNNING"), None)
        time.sleep(0.2)
    assert running is not None, f"no running flow run on the local server; rc={proc.poll()} " + (
        proc.stderr.read().decode(errors="replace")[-2000:] if proc.poll() is not None else "")
    assert _processes_with(marker)  # the command itself is there
    os.kill(proc.pid, signal.SIGKILL)  # as `kill -9` from a terminal: the command only, not a process group
    proc.wait(timeout=30)
    proc.stderr.close()
    time.sleep(1.0)
    assert _processes_with(marker) == []  # no Prefect server, worker or other child outlived it
    # the flow run is on the data dir's server, which is still the one server, still answering
    assert srv.status().running and srv.status().pid == st.pid
    assert httpx.get(f"{st.api_url}/flow_runs/{running['id']}", timeout=30).status_code == 200
