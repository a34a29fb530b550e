"""The pipeline registry: one process-wide, thread-safe place that turns a *profile* into a loaded pipeline.

A profile is one of:

* ``"tiny"`` or ``"paper"`` (``geoseg.profiles``), or the path of a TOML/JSON profile file;
* a name registered in this process with :func:`register_pipeline` (tests, benchmarks, orchestration-only doubles);
* ``py:package.module:function`` naming a zero-argument factory that returns a pipeline, resolved by import in
  whichever process runs it (Prefect deployments and workers cannot share a registration made elsewhere).

:func:`load_pipeline` builds each profile once per process (models loaded once) and hands every later caller the same
object; concurrent first calls for one profile build it once, and a slow build of one profile does not block another.
:func:`model_version_of` answers without loading models when the profile is a named one or a file (the version is a
hash of the config); a registered or ``py:`` factory is built to ask it.

Like torchgeo's ``models/api.py`` and segment-anything's ``sam_model_registry``: names to builders, nothing else.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable

from geoseg.protocols import Pipeline

PipelineFactory = Callable[[], Pipeline]

_factories: dict[str, PipelineFactory] = {}
_pipelines: dict[str, Pipeline] = {}
_building: dict[str, threading.Lock] = {}
_lock = threading.Lock()  # guards the three dicts; never held while a pipeline builds


def register_pipeline(name: str, factory: PipelineFactory) -> None:
    """Make ``load_pipeline(name)`` build its pipeline with ``factory()``; a re-registration replaces the cached one."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a pipeline name must be a non-empty string, got {name!r}")
    if name.startswith("py:"):
        raise ValueError(f"pipeline name {name!r}: the py: prefix is reserved for import paths")
    if not callable(factory):
        raise ValueError(f"the factory for pipeline {name!r} must be callable, got {type(factory).__name__}")
    with _lock:
        _factories[name] = factory
        _pipelines.pop(name, None)


def registered_pipelines() -> tuple[str, ...]:
    """The names registered in this process, sorted."""
    with _lock:
        return tuple(sorted(_factories))


def factory_from_path(profile: str) -> PipelineFactory:
    """``py:package.module:function`` -> that function (a zero-argument pipeline factory); ValueError otherwise."""
    spec = profile[3:] if profile.startswith("py:") else profile
    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise ValueError(f"profile {profile!r}: expected py:package.module:function")
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"profile {profile!r}: cannot import {spec}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"profile {profile!r}: {spec} is not callable")
    return fn


def _build(profile: str) -> Pipeline:
    with _lock:
        factory = _factories.get(profile)
    if factory is not None:
        return factory()
    if profile.startswith("py:"):
        return factory_from_path(profile)()
    from geoseg.pipeline import GeoSegPipeline
    from geoseg.profiles import load_profile

    return GeoSegPipeline(load_profile(profile)).load()


def load_pipeline(profile: str) -> Pipeline:
    """The process-wide pipeline for ``profile`` (see the module docstring), built and its models loaded once.

    A build that raises is not cached: the next call tries again.
    """
    if not isinstance(profile, str) or not profile.strip():
        raise ValueError(f"profile must be a non-empty string, got {profile!r}")
    with _lock:
        p = _pipelines.get(profile)
        if p is not None:
            return p
        gate = _building.setdefault(profile, threading.Lock())
    with gate:  # one builder per profile; others wait for it, other profiles go on
        with _lock:
            p = _pipelines.get(profile)
        if p is not None:
            return p
        p = _build(profile)
        with _lock:
            _pipelines[profile] = p
        return p


def model_version_of(profile: str) -> str:
    """The model version ``profile`` predicts under; loads no model for a named profile or a profile file."""
    with _lock:
        registered = profile in _factories
    if registered or profile.startswith("py:"):
        return load_pipeline(profile).model_version
    from geoseg.profiles import load_profile

    return load_profile(profile).model_version


def forget_pipelines() -> None:
    """Drop every cached pipeline (registrations stay): the next :func:`load_pipeline` builds afresh."""
    with _lock:
        _pipelines.clear()
