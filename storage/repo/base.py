"""Shared SQL helpers of the repository modules: the dialect's upsert construct, chunking, record checks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy.orm import Session

CHUNK = 500
T = TypeVar("T")


def dialect_insert(session: Session, model: type) -> Any:
    """The dialect's INSERT construct (it has ``on_conflict_do_nothing`` / ``on_conflict_do_update``)."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - make_engine refuses other dialects
        raise ValueError(f"unsupported database dialect {name!r}")
    return insert(model.__table__)  # Core insert: skips the ORM bulk-insert layer (noticeably faster in bulk)


def chunked(items: Iterable[T], n: int = CHUNK) -> Iterator[list[T]]:
    """``items`` in lists of ``n`` (the last one shorter): the one batching helper of the codebase (SQL ``IN``
    lists, bulk inserts, Label Studio imports, Prefect task batches)."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    if isinstance(items, Sequence):
        for i in range(0, len(items), n):
            yield list(items[i : i + n])
        return
    batch: list[T] = []
    for x in items:
        batch.append(x)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def check_records(records: Sequence[Any], cls: type) -> list[Any]:
    records = list(records)
    for r in records:
        if not isinstance(r, cls):
            raise TypeError(f"expected {cls.__name__} records, got {type(r).__name__}")
    return records


def row_locks(session: Session) -> bool:
    """True where ``SELECT … FOR UPDATE`` takes row locks (PostgreSQL); SQLite locks the whole database on write."""
    return session.get_bind().dialect.name == "postgresql"
