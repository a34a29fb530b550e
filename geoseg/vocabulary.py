"""The words every package shares: difficulty levels, GeoSeg-Bench domains, fusion routes and query identity.

One rule per concept, used by the queries-file parser, the storage records, Label Studio intake, dataset filters,
snapshots and the benchmark reader alike:

* :func:`normalise_level`: ``"L2"``, ``"l2"``, ``"2"``, ``2``, ``"medium"`` -> ``"L2"``; empty -> ``None``.
* :func:`normalise_domain`: one of GeoSeg-Bench's domains, case-insensitive (``"urban"`` -> ``"Urban"``);
  empty -> ``None``.
* :func:`normalise_query`: the text an item is stored with (NFKC, whitespace runs collapsed to one space, stripped);
  :func:`query_key`: the identity of a query on an image (the normalised text, case-folded), so "Red  roof" from a
  CSV and "red roof" from intake are one item.

Unknown values raise ``ValueError`` with a one-line message naming the value and the allowed ones.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any, Literal

#: Difficulty levels of GeoSeg-Bench (paper §4), easiest first.
LEVELS: tuple[str, ...] = ("L1", "L2", "L3")
#: GeoSeg-Bench's published composition (paper §4): pairs per domain and share per level.
GEOSEG_BENCH_DOMAINS: dict[str, int] = {"Urban": 330, "Rural": 160, "Traffic": 240, "Nature": 80}
GEOSEG_BENCH_LEVELS: dict[str, float] = {"L1": 0.6, "L2": 0.3, "L3": 0.1}
DOMAINS: tuple[str, ...] = tuple(GEOSEG_BENCH_DOMAINS)
#: The fusion routes a prediction can take (which masks made the final one).
Route = Literal["intersection", "point", "text", "empty"]
ROUTES: tuple[str, ...] = ("intersection", "point", "text", "empty")

_LEVEL_ALIASES = {
    **{lv.lower(): lv for lv in LEVELS},
    **{lv[1]: lv for lv in LEVELS},
    "easy": "L1",
    "medium": "L2",
    "hard": "L3",
}
_DOMAIN_BY_FOLD = {d.casefold(): d for d in DOMAINS}
_WS = re.compile(r"\s+")


def normalise_level(value: Any) -> str | None:
    """The canonical level (``"L1"``..``"L3"``) of ``value``; ``None`` for ``None`` or blank; else ``ValueError``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"level must be L1, L2 or L3 (or empty), got {value!r}")
    s = str(value).strip()
    if not s:
        return None
    lvl = _LEVEL_ALIASES.get(s.lower())
    if lvl is None:
        raise ValueError(f"level must be L1, L2 or L3 (or empty), got {value!r}")
    return lvl


def normalise_domain(value: Any) -> str | None:
    """The GeoSeg-Bench domain named by ``value`` (case-insensitive); ``None`` for ``None`` or blank."""
    if value is None:
        return None
    s = str(value).strip()
    if not s:
        return None
    dom = _DOMAIN_BY_FOLD.get(s.casefold())
    if dom is None:
        shown = s if len(s) <= 40 else s[:40] + "..."
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)} (or empty), got {shown!r}")
    return dom


def normalise_query(text: Any) -> str:
    """NFKC, whitespace runs collapsed to one space, stripped: the text an item is stored with."""
    if not isinstance(text, str):
        raise ValueError(f"a query must be text, got {type(text).__name__}")
    return _WS.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def query_key(text: Any) -> str:
    """The identity of a query on an image: normalised and case-folded ("Red  roofs" == "red roofs")."""
    return normalise_query(text).casefold()
