"""Errors raised by grounder backends (never by the parser, which turns bad answers into a Grounding with `error`)."""

from __future__ import annotations


class GrounderError(RuntimeError):
    """A grounder could not produce an answer (server unreachable, persistent 5xx, bad request, model failure)."""


class GrounderLoadError(GrounderError):
    """The model or processor could not be loaded (missing weights, wrong path, no network for a hub id)."""


class GrounderAuthError(GrounderError):
    """The served model refused the credentials (HTTP 401/403); the message names the env var holding the key."""
