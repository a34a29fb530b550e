"""Queries files: CSV (header ``image,query[,level][,domain]``) or JSONL (one object per line with those keys).

:func:`parse_queries` turns the bytes into :class:`QueryRow` records plus one :class:`IngestIssue` per bad row (with
its line number); the rest of the file goes on. Queries, levels and domains are normalised by
:mod:`geoseg.vocabulary`, and two rows naming the same image with the same :func:`~geoseg.vocabulary.query_key`
("Red  roof" and "red roof") are one row: the second is reported as a duplicate. A file that cannot be used at all
(missing, empty, not UTF-8, no image/query columns, malformed CSV) raises :class:`QueriesError`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from geoseg.vocabulary import normalise_domain, normalise_level, normalise_query, query_key


class QueriesError(ValueError):
    """The queries file as a whole cannot be used (missing, unreadable, no image/query columns)."""


@dataclass(frozen=True)
class QueryRow:
    image: str
    query: str
    level: str | None
    domain: str | None
    line: int
    bbox: str | None = None  # scene rows: chips meeting minx,miny,maxx,maxy (scene CRS); storage.scenes.scene_rows


@dataclass(frozen=True)
class IngestIssue:
    """One bad input: ``kind`` is "image" or "query"; ``ref`` the object or file; ``line`` in the queries file."""

    kind: str
    ref: str
    message: str
    line: int | None = None


RawRow = tuple[int, dict[str, Any] | None, str | None]  # (line, fields, error)


def _jsonl_rows(text: str) -> list[RawRow]:
    out: list[RawRow] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append((n, None, f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            out.append((n, None, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        out.append((n, obj, None))
    return out


def _csv_rows(text: str, name: str, delim: str) -> list[RawRow]:
    out: list[RawRow] = []
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "image" not in cols or "query" not in cols:
            raise QueriesError(f"{name}: the CSV header must name the columns image and query, got {reader.fieldnames}")
        for rec in reader:
            n = reader.line_num
            if None in rec:
                out.append((n, None, f"more fields than the header has columns: {rec[None]!r}"))
                continue
            out.append((n, {k.strip().lower(): v for k, v in rec.items() if k is not None}, None))
    except csv.Error as exc:  # malformed CSV (stray CR, a 128 KB field, ...): say where, never a raw csv.Error
        raise QueriesError(f"{name}: malformed CSV at line {reader.line_num}: {exc}") from None
    return out


def query_row(obj: dict[str, Any], line: int) -> QueryRow:
    """One row's fields as a :class:`QueryRow`; ``ValueError`` with a one-line reason when it is unusable."""
    image = str(obj.get("image") or "").strip()
    query = normalise_query(str(obj.get("query") or ""))
    if not image:
        raise ValueError("missing image")
    if not query:
        raise ValueError(f"empty query for image {image!r}")
    level = normalise_level(obj.get("level"))
    domain = str(obj.get("domain") or "").strip()
    if len(domain) > 64:
        raise ValueError(f"domain longer than 64 characters: {domain[:40]!r}...")
    bbox = str(obj.get("bbox") or "").strip() or None
    return QueryRow(image=image, query=query, level=level, domain=normalise_domain(domain), line=line, bbox=bbox)


def parse_queries(data: bytes | str, name: str = "<queries>") -> tuple[list[QueryRow], list[IngestIssue]]:
    """Rows and per-row issues from a CSV or JSONL queries file (format from the extension, else sniffed)."""
    text = data.decode("utf-8-sig") if isinstance(data, bytes) else data.lstrip("\ufeff")
    if not text.strip():
        raise QueriesError(f"{name}: the queries file is empty")
    suffix = PurePosixPath(name).suffix.lower()
    is_jsonl = suffix in (".jsonl", ".ndjson", ".json") or (suffix not in (".csv", ".tsv") and text.lstrip()[:1] == "{")
    raw_rows = _jsonl_rows(text) if is_jsonl else _csv_rows(text, name, "\t" if suffix == ".tsv" else ",")
    rows: list[QueryRow] = []
    issues: list[IngestIssue] = []
    seen: dict[tuple[str, str], int] = {}
    for n, obj, err in raw_rows:
        if err is not None or obj is None:
            issues.append(IngestIssue("query", name, err or "unreadable row", n))
            continue
        try:
            row = query_row(obj, n)
        except ValueError as exc:
            issues.append(IngestIssue("query", name, str(exc), n))
            continue
        key = (row.image, query_key(row.query))
        if key in seen:
            issues.append(IngestIssue("query", name, f"duplicate of line {seen[key]} (same image and query)", n))
            continue
        seen[key] = n
        rows.append(row)
    return rows, issues


def load_queries(path_or_uri: str, client: Any = None) -> tuple[list[QueryRow], list[IngestIssue]]:
    """:func:`parse_queries` on a local path or ``s3://`` URI; :class:`QueriesError` when it cannot be read."""
    from storage.sources import SourceError, read_bytes

    try:
        data = read_bytes(path_or_uri, client=client)
    except SourceError as exc:
        raise QueriesError(f"queries file: {exc}") from exc
    try:
        return parse_queries(data, name=str(path_or_uri))
    except UnicodeDecodeError as exc:
        raise QueriesError(f"{path_or_uri}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
