"""The loop's CLI commands in-process (flows.cli.main): init, ingest, preannotate, status --json, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"


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
    assert st["prelabel_quality"] == []  # nothing annotated yet
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


def test_intake_switch_from_settings_reaches_the_served_cycle(monkeypatch, tmp_path):
    """GEOLABEL_INTAKE (default true) decides whether the served label cycle pulls intake queries; an explicit
    ServeConfig.intake (`geolabel serve --intake/--no-intake`) wins; a bad value is a clear settings error."""
    from flows.serve import LABEL_CYCLE, ServeConfig, build_deployments
    from storage.settings import Settings, SettingsError

    ov = {"data_dir": str(tmp_path / "d")}
    monkeypatch.delenv("GEOLABEL_INTAKE", raising=False)

    def cycle_params(**kw) -> dict:
        (dep,) = [d for d in build_deployments(ServeConfig(settings_overrides=ov, **kw)) if d.name == LABEL_CYCLE]
        return dep.parameters

    assert Settings.load(**ov).intake is True
    assert (cycle_params()["intake"], cycle_params()["intake_title"]) == (True, None)
    assert cycle_params(intake=False, intake_title="my intake") == {
        **cycle_params(),
        "intake": False,
        "intake_title": "my intake",
    }
    monkeypatch.setenv("GEOLABEL_INTAKE", "false")
    assert Settings.load(**ov).intake is False and cycle_params()["intake"] is False
    assert cycle_params(intake=True)["intake"] is True
    monkeypatch.setenv("GEOLABEL_INTAKE", "sometimes")
    with pytest.raises(SettingsError, match="intake must be true or false"):
        Settings.load(**ov)


def test_cycle_and_serve_have_the_intake_flag(capsys):
    for cmd in ("cycle", "serve"):
        code, out, _ = _run(capsys, cmd, "--help")
        assert code == 0 and "--intake" in out and "--no-intake" in out and "--intake-title" in out, out


def test_demo_next_steps_are_runnable_shell_without_the_token(tmp_path):
    """The demo's printed commands: `source scripts/env.sh`, the Label Studio URL, the token read from the
    credentials file by the shell (never printed), and `.venv/bin/geolabel cycle --intake` on the demo's data dir."""
    import shlex
    import subprocess

    from flows.demo import DemoResult, next_steps, print_summary

    token = "t0ken-" + "x" * 34
    creds = tmp_path / "label studio" / "credentials.json"  # a space: the path must be quoted
    creds.parent.mkdir()
    creds.write_text(json.dumps({"email": "a@b.c", "password": "p", "token": token}))
    res = DemoResult(
        data_dir=tmp_path / "data dir",
        label_studio_url="http://127.0.0.1:18080",
        project_url="http://127.0.0.1:18080/projects/3",
        token_env="LABEL_STUDIO_USER_TOKEN",
        credentials_file=str(creds),
        started_label_studio=True,
        project_title="GeoSeg demo (tiny models)",
        intake_title="GeoSeg query intake",
        intake_url="http://127.0.0.1:18080/projects/4",
    )
    res.commands = next_steps(res)
    lines: list[str] = []
    print_summary(res, echo=lines.append)
    text = "\n".join(lines)
    assert token not in text
    assert "source scripts/env.sh" in text and "export GEOLABEL_LABEL_STUDIO_URL=http://127.0.0.1:18080" in text
    assert res.intake_url in text and res.project_url in text
    cyc = shlex.split(res.commands["cycle"])
    assert cyc[0].endswith("geolabel") and Path(cyc[0]).parts[-3:] == (".venv", "bin", "geolabel")
    assert cyc[1:] == ["cycle", "--intake", "--project", res.project_title, "--data-dir", str(res.data_dir)]
    ml = shlex.split(res.commands["ml_backend"])
    assert ml[1] == "ml-backend" and "--connect" in ml and ml[ml.index("--project-title") + 1] == res.project_title
    # the env lines run in bash and export the token read from the file
    p = subprocess.run(
        ["bash", "-c", res.commands["env"] + '\nprintf %s "$LABEL_STUDIO_USER_TOKEN|$GEOLABEL_LABEL_STUDIO_URL|$PWD"'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    from flows.demo import REPO_ROOT

    assert p.stdout == f"{token}|http://127.0.0.1:18080|{REPO_ROOT}"
    assert (REPO_ROOT / cyc[0]).exists()  # the printed script exists (relative to the repository root)
