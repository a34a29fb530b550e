"""The PostgreSQL skip policy of the storage fixtures: an unreachable server skips the PostgreSQL half of the suite,
unless ``CI`` is set -- then it fails. Checked by running pytest on a one-test file in a subprocess pointed at a
closed port (the fixtures are loaded as a plugin, no conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.storage import free_port

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
def test_probe(db_url):
    assert db_url
"""


def _run(tmp_path: Path, ci: bool) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["GEOLABEL_TEST_PG_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    env["PYTHONPATH"] = str(ROOT)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # only our fixtures: seconds faster on a busy machine
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--noconftest",
         "-p", "tests.fixtures.storage", "-c", os.devnull, "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize("ci", [False, True])
def test_unreachable_postgres_policy(tmp_path, ci):
    res = _run(tmp_path, ci)
    out = res.stdout + res.stderr
    if ci:
        assert res.returncode == 1, out
        assert "1 passed" in out and "1 error" in out and "CI is set" in out
    else:
        assert res.returncode == 0, out
        assert "1 passed, 1 skipped" in out and "unreachable" in out
