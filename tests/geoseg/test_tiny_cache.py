"""geoseg.tiny.cache.build_atomically: the one build helper of every tiny model (idempotent, atomic, one marker)."""

from __future__ import annotations

import json
import threading

import pytest

from geoseg.tiny.cache import MARKER, TINY_VERSION, build_atomically, is_built


def test_idempotent_and_marked(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "weights.bin").write_bytes(b"x")
        return {"seed": 7}

    final = build_atomically(tmp_path / "m", "tiny-test", build)
    info = json.loads((final / MARKER).read_text())
    assert info["version"] == TINY_VERSION and info["kind"] == "tiny-test" and info["seed"] == 7
    assert "mean nothing" in info["warning"]
    assert build_atomically(tmp_path / "m", "tiny-test", build) == final and len(calls) == 1
    assert not is_built(final, "other-kind")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary sibling left behind


def test_stale_marker_is_rebuilt_and_interrupted_build_leaves_nothing(tmp_path):
    final = tmp_path / "m"
    final.mkdir()
    (final / MARKER).write_text(json.dumps({"version": "0", "kind": "tiny-test"}))
    (final / "old.bin").write_bytes(b"old")

    def broken(tmp):
        (tmp / "half.bin").write_bytes(b"half")
        raise KeyboardInterrupt  # killed halfway

    with pytest.raises(KeyboardInterrupt):
        build_atomically(final, "tiny-test", broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"] and not is_built(final, "tiny-test")
    build_atomically(final, "tiny-test", lambda tmp: (tmp / "new.bin").write_bytes(b"new") and None)
    assert is_built(final, "tiny-test") and sorted(p.name for p in final.iterdir()) == [MARKER, "new.bin"]


def test_concurrent_builders_end_with_one_complete_copy(tmp_path):
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def build(tmp):
        barrier.wait()  # all four build at once
        (tmp / "w.bin").write_bytes(b"w")

    def run():
        try:
            build_atomically(tmp_path / "m", "tiny-test", build)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and is_built(tmp_path / "m", "tiny-test")
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
