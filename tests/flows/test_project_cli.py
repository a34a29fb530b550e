"""``geolabel project`` against a REAL Label Studio: overlap, consensus threshold and the label stream are set on the
server (what its label stream and the consensus rule read) and in the database."""

from __future__ import annotations

import json

import pytest

from flows.cli import main

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]


def test_project_sets_overlap_threshold_and_label_stream(prefect_harness, labelstudio_server, tiny_models_root,
                                                         tmp_path, monkeypatch, capsys):
    ls = labelstudio_server
    monkeypatch.setenv("GEOLABEL_MODEL_CACHE", str(tiny_models_root))
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", ls.token)
    monkeypatch.setenv("GEOLABEL_LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("GEOLABEL_IMAGERY_ROOTS", str(ls.imagery_root))
    data_dir = ls.imagery_root / "geolabel-project-cli"
    title = "project cli test"

    def run(*argv: str) -> dict:
        capsys.readouterr()
        main(["project", "--project", title, "--data-dir", str(data_dir), "--json", *argv])
        out = capsys.readouterr().out
        return json.loads(out[out.index("{"):])

    got = run("--overlap", "2", "--min-agreement", "0.6", "--label-stream", "sequential")
    assert got["consensus"] == {"overlap": 2, "min_agreement": 0.6} and got["label_stream"] == "sequential"
    pid = int(got["project"].rsplit("/", 1)[1])
    project = ls.client.get_project(pid)
    assert project["maximum_annotations"] == 2 and project["sampling"] == "Sequential sampling"

    got = run("--min-agreement", "0.8")  # the overlap stays, only the threshold changes; no second project
    assert got["consensus"] == {"overlap": 2, "min_agreement": 0.8}
    assert int(got["project"].rsplit("/", 1)[1]) == pid
    assert [p["id"] for p in ls.client.projects(title=title) if p["title"] == title] == [pid]

    with pytest.raises(SystemExit):
        main(["project", "--project", title, "--data-dir", str(data_dir), "--label-stream", "random"])
    assert "label stream must be 'uncertainty' or 'sequential'" in capsys.readouterr().err
    # uncertainty sampling ranks pushed pre-labels (tests/labeling/test_priority_labelstudio.py): none pushed yet
    with pytest.raises(SystemExit):
        main(["project", "--project", title, "--data-dir", str(data_dir), "--label-stream", "uncertainty"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no pre-labels of geoseg-tiny-" in err[0] and "push them first" in err[0]
