"""geoseg.registry: named, file and py: profiles; one build per profile per process, also under concurrent first
calls; a failed build is not cached; model_version_of loads nothing for a named profile."""

from __future__ import annotations

import threading
import time

import pytest

from geoseg import registry
from geoseg.profiles import load_profile


class _Stub:
    """The smallest object with the Pipeline surface (the registry hands out whatever the factory builds)."""

    meaningless = True

    def __init__(self, version: str) -> None:
        self.model_version = version

    def __call__(self, image, query):  # pragma: no cover - never run here
        raise NotImplementedError

    def run_batch(self, items, batch_size=16):  # pragma: no cover - never run here
        return iter(())


def stub_factory() -> _Stub:
    return _Stub("stub-from-path")


def test_registered_name_is_built_once_even_by_concurrent_first_calls():
    calls = []

    def factory():
        calls.append(1)
        time.sleep(0.05)  # a slow model load: the other threads must wait for this build, not start their own
        return _Stub("reg-v1")

    registry.register_pipeline("test-reg-once", factory)
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(registry.load_pipeline("test-reg-once"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(p) for p in out}) == 1
    assert registry.model_version_of("test-reg-once") == "reg-v1"
    assert "test-reg-once" in registry.registered_pipelines()
    registry.register_pipeline("test-reg-once", lambda: _Stub("reg-v2"))  # re-registering replaces the cached one
    assert registry.load_pipeline("test-reg-once").model_version == "reg-v2"


def test_py_path_profile_and_its_errors():
    p = registry.load_pipeline("py:tests.geoseg.test_registry:stub_factory")
    assert p.model_version == "stub-from-path" and registry.load_pipeline(
        "py:tests.geoseg.test_registry:stub_factory") is p
    with pytest.raises(ValueError, match="expected py:package.module:function"):
        registry.load_pipeline("py:nocolon")
    with pytest.raises(ValueError, match="cannot import"):
        registry.load_pipeline("py:tests.geoseg.test_registry:missing")
    with pytest.raises(ValueError, match="reserved"):
        registry.register_pipeline("py:x", stub_factory)
    with pytest.raises(ValueError, match="callable"):
        registry.register_pipeline("x", 3)


def test_failed_build_is_not_cached():
    state = {"fail": True}

    def flaky():
        if state["fail"]:
            raise RuntimeError("weights not there yet")
        return _Stub("late")

    registry.register_pipeline("test-flaky-build", flaky)
    with pytest.raises(RuntimeError, match="weights"):
        registry.load_pipeline("test-flaky-build")
    state["fail"] = False
    assert registry.load_pipeline("test-flaky-build").model_version == "late"


def test_named_and_file_profiles_answer_their_version_without_loading(tmp_path):
    assert registry.model_version_of("tiny") == load_profile("tiny").model_version
    f = tmp_path / "p.toml"
    f.write_text('extends = "tiny"\nk = 3\n')
    assert registry.model_version_of(str(f)) == load_profile(str(f)).model_version != registry.model_version_of("tiny")
    with pytest.raises(ValueError):
        registry.load_pipeline("no-such-profile-or-file")
    with pytest.raises(ValueError, match="non-empty"):
        registry.load_pipeline("")
