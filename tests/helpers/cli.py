"""Helpers for tests that run the printed ``geolabel`` command lines."""

from __future__ import annotations

import shlex


def geolabel_argv(line: str) -> list[str]:
    """The ``geolabel ...`` argv of a printed ``cd REPO && [VAR=value ...] .venv/bin/geolabel ...`` line."""
    words = shlex.split(line)
    if "&&" in words:
        words = words[words.index("&&") + 1 :]
    while words and "=" in words[0] and not words[0].startswith("-"):
        words = words[1:]
    return words
