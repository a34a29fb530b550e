"""Errors raised by grounder backends (never by the parser, which turns bad answers into a Grounding with `error`)."""

from __future__ import annotations


class GrounderError(RuntimeError):
    """A grounder could not produce an answer (server unreachable, persistent 5xx, bad request, model failure)."""


class GrounderRejectedError(GrounderError):
    """The server refused the request itself (HTTP 4xx other than 401/403/429): retrying it unchanged cannot help."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class GrounderLoadError(GrounderError):
    """The model or processor could not be loaded (missing weights, wrong path, no network for a hub id)."""


class GrounderAuthError(GrounderError):
    """The served model refused the credentials (HTTP 401/403); the message names the env var holding the key."""
