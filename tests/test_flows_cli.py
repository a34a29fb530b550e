"""The loop's CLI commands in-process (flows.cli.main): init, ingest, preannotate, status --json, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main

AERIAL = Path(__file__).parent / "data" / "aerial"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([*argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.mark.slow
def test_ingest_preannotate_status_json(prefect_harness, tmp_path, capsys):
    from benchmarks.bench_loop import register_instant

    d = str(tmp_path / "data")
    code, out, err = _run(capsys, "init", "--no-models", "--data-dir", d)
    assert code == 0 and "database:" in out and "geolabel.db" in out
    code, out, err = _run(capsys, "ingest", str(AERIAL), "--queries", str(AERIAL / "queries.csv"), "--data-dir", d)
    assert code == 0, err
    assert "images: 6 new, 0 already known; items: 10 new, 0 already known; 0 skipped" in out
    profile = register_instant("instant-cli")
    code, out, err = _run(capsys, "preannotate", "--profile", profile, "--data-dir", d, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["predicted"] == 10 and rep["failed"] == 0
    code, out, err = _run(capsys, "status", "--json", "--data-dir", d)
    st = json.loads(out)
    assert {"images", "items", "predictions", "tasks", "annotations", "triplets"} <= set(st)
    assert st["images"]["total"] == 6 and st["items"]["by_status"] == {"predicted": 10}
    assert st["predictions"]["by_model_version"] == {rep["model_version"]: {"ok": 10, "failed": 0}}
    assert st["tasks"]["total"] == 0 and st["triplets"]["total"] == 0
    code, out, err = _run(capsys, "status", "--data-dir", d)
    assert code == 0 and "predictions" in out and rep["model_version"] in out


@pytest.mark.slow
def test_errors_are_one_line(prefect_harness, tmp_path):
    """As a user sees it: the installed `geolabel` script in a subprocess (Prefect API: the session's harness)."""
    import os
    import subprocess
    import sys

    import prefect.settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_API_URL"] = prefect.settings.PREFECT_API_URL.value()
    exe = Path(sys.executable).parent / "geolabel"
    d = str(tmp_path / "data")

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(exe), *argv], env=env, capture_output=True, text=True, timeout=180)

    p = run("ingest", str(tmp_path / "nope"), "--queries", "q.csv", "--data-dir", d)
    assert p.returncode == 1
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: image source {tmp_path / 'nope'} does not exist"
    ], p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    p = run("ingest", str(AERIAL), "--queries", "q.csv", "--bands", "red", "--data-dir", d)
    assert p.returncode in (1, 2) and "--bands must be comma-separated integers" in p.stderr
    assert "Traceback" not in p.stderr
    p = run("--debug", "ingest", str(tmp_path / "nope"), "--queries", "q.csv", "--data-dir", d)
    assert p.returncode != 0 and "Traceback" in p.stderr  # --debug shows it
