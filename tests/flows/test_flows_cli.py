"""The loop's CLI commands in-process (flows.cli.main): init, ingest, preannotate, status --json, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from tests.helpers.cli import geolabel_argv

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main([*argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(exc.value.code or 0), out.out, out.err


@pytest.mark.slow
def test_ingest_preannotate_status_json(prefect_harness, tmp_path, capsys):
    from tests.fixtures.instant import register_instant

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


def test_demo_next_steps_are_one_plain_command_without_the_token(tmp_path):
    """The demo's closing steps: `cd REPO && .venv/bin/geolabel cycle --intake` (plus --data-dir when the data dir
    is not REPO/.geolabel); nothing to export or source, no token anywhere in the printout."""
    from flows.demo import REPO_ROOT, DemoResult, next_steps, print_summary

    token = "t0ken-" + "x" * 34
    creds = tmp_path / "data dir" / "labelstudio" / "credentials.json"  # a space: the path must be quoted
    creds.parent.mkdir(parents=True)
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
    assert token not in text and "export " not in text and "source " not in text
    assert res.intake_url in text and res.project_url in text and res.commands["cycle"] in text
    assert res.commands["cycle"].startswith(f"cd {REPO_ROOT} && ")
    cyc = geolabel_argv(res.commands["cycle"])
    assert Path(cyc[0]).parts[-3:] == (".venv", "bin", "geolabel") and (REPO_ROOT / cyc[0]).exists()
    assert cyc[1:] == ["cycle", "--intake", "--data-dir", str(res.data_dir)]
    assert geolabel_argv(res.commands["open"])[1:] == ["open", "--data-dir", str(res.data_dir)]
    ml = geolabel_argv(res.commands["ml_backend"])
    assert ml[1] == "ml-backend" and "--connect" in ml
    # the demo's default data dir: no --data-dir at all
    res.data_dir = REPO_ROOT / ".geolabel"
    assert geolabel_argv(next_steps(res)["cycle"])[1:] == ["cycle", "--intake"]


def test_commands_find_the_local_label_studio_of_the_data_dir(tmp_path, monkeypatch):
    """Zero-export: URL from <data_dir>/labelstudio/server.json, token from its credentials.json (for that URL only);
    an explicit URL or token variable wins; the data dir is ./.geolabel or GEOLABEL_DATA_DIR."""
    from flows.runtime import settings_from
    from labeling.server import token_for

    for k in ("GEOLABEL_LABEL_STUDIO_URL", "LABEL_STUDIO_USER_TOKEN", "GEOLABEL_DATA_DIR", "GEOLABEL_CONFIG"):
        monkeypatch.delenv(k, raising=False)
    d = tmp_path / "proj" / ".geolabel"
    (d / "labelstudio").mkdir(parents=True)
    (d / "labelstudio" / "server.json").write_text(json.dumps({"pid": 1, "url": "http://127.0.0.1:18123"}))
    (d / "labelstudio" / "credentials.json").write_text(json.dumps({"email": "e", "password": "p", "token": "t" * 30}))
    monkeypatch.chdir(d.parent)  # the current directory's .geolabel
    s = settings_from(None)
    assert s.data_dir == d.resolve() and s.label_studio_url == "http://127.0.0.1:18123"
    assert token_for(s).get_secret_value() == "t" * 30 and "t" * 30 not in repr(token_for(s))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEOLABEL_DATA_DIR", str(d))
    assert settings_from(None).label_studio_url == "http://127.0.0.1:18123"
    monkeypatch.setenv("GEOLABEL_LABEL_STUDIO_URL", "http://127.0.0.1:9999")  # explicit wins, and gets no local token
    s = settings_from(None)
    assert s.label_studio_url == "http://127.0.0.1:9999" and token_for(s) is None
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "from-env")
    assert token_for(s).get_secret_value() == "from-env"


def test_init_refuses_a_data_dir_that_is_a_file_or_read_only(tmp_path, capsys):
    import os

    f = tmp_path / "file"
    f.write_text("x")
    code, out, err = _run(capsys, "init", "--no-models", "--data-dir", str(f))
    assert code == 1 and err.strip() == f"error: data dir {f} is a file, not a directory: pass another --data-dir"
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            code, out, err = _run(capsys, "init", "--no-models", "--data-dir", str(ro))
            assert code == 1 and "is not writable" in err and len(err.strip().splitlines()) == 1
        finally:
            ro.chmod(0o700)


def test_every_command_has_data_dir_json_and_help_for_each_option():
    """--data-dir and --json on every command that reads or writes a data dir; every option has help text."""
    import typer.main

    from flows.cli import app

    root = typer.main.get_command(app)
    no_data = {"version", "predict"}  # no data dir involved
    servers = {"serve", "ml-backend", "labelstudio webhook"}  # long-running servers: no --json result

    def walk(cmd, path: str):  # click objects (typer may bring its own click)
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            yield path, cmd

    seen = 0
    for path, cmd in walk(root, ""):
        seen += 1
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        for p in cmd.params:
            if p.param_type_name == "option":
                assert p.help, f"{path}: {p.opts} has no help"
        if path not in no_data:
            assert "--data-dir" in opts, path
        if path not in servers and path != "version":
            assert "--json" in opts, path
        assert "--project-title" not in opts, path
    assert seen > 20


def test_db_downgrade_takes_minus_one_and_counts_dropped_rows(tmp_path, capsys):
    from storage import db

    url = f"sqlite:///{tmp_path / 'g.db'}"
    code, out, err = _run(capsys, "db", "upgrade", "--url", url)
    assert code == 0, err
    code, out, err = _run(capsys, "db", "downgrade", "-1", "--url", url)
    assert code != 0 and "--yes" in err
    code, out, err = _run(capsys, "db", "downgrade", "-1", "--url", url, "--yes", "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert rep["revision"] == db.current(url) and rep["dropped_rows"] == sum(rep["dropped_tables"].values())


def test_predict_names_never_collide():
    from flows.cli_predict import slug

    assert slug("the conifer") == "the-conifer"
    queries = ("東京タワー", "東京駅", "the Conifer", "the conifer", "the  conifer", "x" * 60, "x" * 61)
    names = {slug(q) for q in queries}
    assert len(names) == 7


def test_export_refuses_a_non_empty_folder_that_is_no_earlier_export(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    code, _, err = _run(capsys, "export", "coco", str(out), "--data-dir", str(tmp_path / "d"))
    assert code == 1 and err.strip() == (
        f"error: export folder {out} is not empty and holds no earlier export: choose an empty folder"
    )
    assert (out / "notes.txt").read_text() == "keep me"


def test_doctor_says_what_to_do_for_each_failure(tmp_path, capsys, monkeypatch):
    from labeling.server import free_port

    monkeypatch.setenv("GEOLABEL_LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    code, out, err = _run(capsys, "doctor", "--json", "--data-dir", str(tmp_path / "d"))
    checks = {c["name"]: c for c in json.loads(out)}
    assert code == 1
    assert {"app venv", "Label Studio venv", "Label Studio", "database", "blob store", "GPU"} <= set(checks)
    assert {"grounder weights", "matcher weights", "segmenter weights"} <= set(checks)
    assert checks["Label Studio"]["status"] == "fail" and "geolabel labelstudio start" in checks["Label Studio"]["fix"]
    assert checks["database"]["status"] == "warn" and "geolabel init" in checks["database"]["fix"]  # not migrated
    assert checks["blob store"]["status"] == "ok"
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok")


def test_labelstudio_start_on_a_busy_port_fails_at_once(tmp_path, capsys):
    import socket
    import time

    from labeling.server import default_venv

    if not (default_venv() / "bin" / "label-studio").exists():
        pytest.skip(f"no Label Studio venv at {default_venv()} (scripts/setup.sh creates it)")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        code, _, err = _run(capsys, "labelstudio", "start", "--port", str(port), "--data-dir", str(tmp_path / "d"))
        assert time.monotonic() - t0 < 30
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 1 and len(errors) == 1 and f"port {port} on 127.0.0.1 is already in use" in errors[0], err
    assert not (tmp_path / "d" / "labelstudio" / "server.json").exists()  # no wrong port recorded
