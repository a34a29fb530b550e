"""Work claims: leases in the database so that any number of overlapping runs and workers do each piece of work once.

A claim is a ``work_claim`` row (:class:`storage.models.WorkClaim`): ``kind`` (``"predict"``, ``"push"``,
``"project"``, ``"intake-task"``, …), a canonical ``key`` (:func:`encode_key` of a tuple such as
``(item_id, model_version)``), the ``owner`` (:func:`new_owner`: host, pid and a random tag) and ``expires_at``.

Protocol (design §9), both dialects, one statement per step:

1. **Claim** (:meth:`Lease.acquire`, its own short transaction, committed at once so that others see it)::

       INSERT INTO work_claim (kind, key, owner, expires_at, …) VALUES …
       ON CONFLICT (kind, key) DO UPDATE SET owner = excluded.owner, previous_owner = work_claim.owner, …
       WHERE work_claim.expires_at < :now OR work_claim.owner = excluded.owner
       RETURNING key, previous_owner

   A key comes back only when this owner holds it now: newly inserted, re-claimed by the same owner, or **taken
   over** from an owner whose lease expired (it died: SIGKILL, a lost node, a lost database connection). Keys held
   by a live owner are skipped. On PostgreSQL the conflicting row is locked and the ``WHERE`` re-checked on its newest
   version (two claimers cannot both win; keys are sorted so multi-row claims cannot deadlock); on SQLite the
   statement takes the database write lock (WAL, ``busy_timeout`` from :mod:`storage.db`), which serialises claimers
   across processes.
2. **Verify**, in the same transaction: ``verify(session, held_keys)`` returns the keys that still need doing (work
   finished by another run between the caller's work list and this claim is released again at once and reported as
   :attr:`Lease.done`). This is what makes a stale work list harmless.
3. **Renew**: a heartbeat thread moves ``expires_at`` forward every ``ttl_s / 3`` while the batch runs, so a lease
   shorter than the batch is never a problem; a key the heartbeat finds taken over (this process stalled past its
   lease) goes to :attr:`Lease.lost` and is logged.
4. **Release with the result**: :meth:`Lease.release_in` deletes the claim rows inside the caller's session, i.e. in
   the transaction that writes the result: either both are committed or neither is. Whatever is still held when the
   ``with`` block ends (a failed item, an exception) is released by the lease itself, so another run can retry it.

A run killed between 1 and 4 leaves only expiring rows: after ``ttl_s`` any run takes the keys over; :func:`sweep`
(called at the start of each run) deletes expired rows and returns them for the run's report. A claim whose owner ran
on **this** host in a process that no longer exists (:func:`owner_alive` is False: killed, crashed) is taken over at
once instead of after its lease, so a re-run right after a kill finishes the work; owners on other hosts are only
ever judged by their lease.

Clocks: expiry uses each process's UTC clock; hosts sharing a database need synchronised clocks (NTP), and ``ttl_s``
should be far larger than their skew. SQLite caveat: a lease's own statements run on their own connection, so do not
acquire or renew while the same thread holds an uncommitted write on the same SQLite database (it would wait for
itself up to the busy timeout); :meth:`Lease.release_in` is the exception and is meant for exactly that.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from storage.models import UTCDateTime, WorkClaim, utcnow
from storage.repo.base import chunked, dialect_insert

log = logging.getLogger(__name__)

#: Default lease: renewed every third of it while the work runs, taken over this long after its owner died.
DEFAULT_TTL_S = 120.0
#: Shortest lease accepted (a heartbeat every ttl/3 must be able to reach the database in time).
MIN_TTL_S = 1.0
KINDS_MAX = 32
KEY_MAX = 512

Key = Hashable
Verify = Callable[[Session, list[Any]], Iterable[Any]]


class ClaimError(RuntimeError):
    """A claim could not be made as asked (bad lease time, or waited too long for a key another run holds)."""


def new_owner(label: str = "run") -> str:
    """A unique owner id: ``label@host:pid:tag`` (the tag tells two leases of one process apart)."""
    return f"{label}@{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"[:200]


def owner_alive(owner: str) -> bool | None:
    """For an owner of :func:`new_owner`'s form on this host: whether its process still exists (a zombie counts as
    gone). ``None`` for an owner on another host, or of another form: only its lease can tell."""
    try:
        _label, _, rest = owner.rpartition("@")
        host, pid_s, _tag = rest.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return None
    if host != socket.gethostname() or pid <= 0:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def encode_key(key: Any) -> str:
    """The canonical text of a key: a string as is, anything else (tuples of str/int) as compact JSON."""
    if isinstance(key, str):
        text = key
    else:
        parts = list(key) if isinstance(key, tuple | list) else [key]
        text = json.dumps(parts, separators=(",", ":"), ensure_ascii=False)
    if len(text) > KEY_MAX:
        raise ClaimError(f"claim key longer than {KEY_MAX} characters: {text[:60]}…")
    return text


def check_ttl(ttl_s: float) -> float:
    ttl = float(ttl_s)
    if not ttl >= MIN_TTL_S:
        raise ClaimError(
            f"lease time {ttl_s!r} s refused: it must be at least {MIN_TTL_S} s (the lease is renewed every third "
            "of it while the work runs, and taken over by another run that long after its owner died)"
        )
    return ttl


def _insert_claims(session: Session, kind: str, encoded: Sequence[str], owner: str, ttl_s: float) -> dict[str, Any]:
    """Step 1 of the protocol; returns ``{encoded key: previous owner or None}`` for the keys now held."""
    now = utcnow()
    ins = dialect_insert(session, WorkClaim)
    t = WorkClaim.__table__
    stmt = ins.on_conflict_do_update(
        index_elements=["kind", "key"],
        set_={
            "owner": ins.excluded.owner,
            "previous_owner": sa.case((t.c.owner == ins.excluded.owner, sa.null()), else_=t.c.owner),
            "claimed_at": ins.excluded.claimed_at,
            "expires_at": ins.excluded.expires_at,
        },
        where=sa.or_(t.c.expires_at < sa.literal(now, UTCDateTime()), t.c.owner == ins.excluded.owner),
    ).returning(t.c.key, t.c.previous_owner)
    expires = now + timedelta(seconds=ttl_s)
    held: dict[str, Any] = {}
    for chunk in chunked(sorted(encoded)):
        rows = [
            {"kind": kind, "key": k, "owner": owner, "previous_owner": None, "claimed_at": now, "expires_at": expires}
            for k in chunk
        ]
        for key, prev in session.execute(stmt, rows):  # one cached statement; "insertmanyvalues" batches the rows
            held[key] = prev
    return held


def _delete_claims(session: Session, kind: str, encoded: Iterable[str], owner: str) -> int:
    t = WorkClaim.__table__
    n = 0
    for chunk in chunked(sorted(set(encoded))):
        res = session.execute(sa.delete(t).where(t.c.kind == kind, t.c.owner == owner, t.c.key.in_(chunk)))
        n += res.rowcount or 0
    return n


def _renew_claims(session: Session, kind: str, encoded: Iterable[str], owner: str, ttl_s: float) -> set[str]:
    t = WorkClaim.__table__
    expires = utcnow() + timedelta(seconds=ttl_s)
    kept: set[str] = set()
    for chunk in chunked(sorted(set(encoded))):
        stmt = (
            sa.update(t)
            .where(t.c.kind == kind, t.c.owner == owner, t.c.key.in_(chunk))
            .values(expires_at=expires)
            .returning(t.c.key)
        )
        kept.update(session.execute(stmt).scalars())
    return kept


class Lease:
    """Claims on ``keys`` of one ``kind`` for one owner, renewed while held (see the module docstring).

    ::

        with Lease(engine, "predict", [(item_id, mv), ...], verify=unpredicted_keys(mv)) as lease:
            work on lease.held ...
            with session_scope(engine) as s:
                write results of lease.held
                lease.release_in(s)            # same transaction as the results

    ``wait_s``: wait (polling) up to this long for keys another live owner holds instead of skipping them (used for
    one-off creations such as a Label Studio project); :class:`ClaimError` names the holder when the time is up.
    """

    def __init__(
        self,
        engine: Engine,
        kind: str,
        keys: Iterable[Any],
        *,
        owner: str | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        verify: Verify | None = None,
        wait_s: float = 0.0,
        heartbeat: bool = True,
    ) -> None:
        if not kind or len(kind) > KINDS_MAX:
            raise ClaimError(f"claim kind must have 1..{KINDS_MAX} characters, got {kind!r}")
        self.engine = engine
        self.kind = kind
        self.owner = owner or new_owner(kind)
        self.ttl_s = check_ttl(ttl_s)
        self.verify = verify
        self.wait_s = float(wait_s)
        self.heartbeat = heartbeat
        self._by_code: dict[str, Any] = {}
        for k in keys:
            self._by_code.setdefault(encode_key(k), k)
        self.held: list[Any] = []  # claimed by this lease and still to do
        self.skipped: list[Any] = []  # held by another live owner
        self.done: list[Any] = []  # finished by another run already (verify said so): released at once
        self.taken_over: dict[Any, str] = {}  # key -> the previous owner whose lease had expired
        self.lost: list[Any] = []  # taken over by another run while this one held it (this process stalled)
        self.claim_seconds = 0.0  # time spent in the claim transaction(s)
        self._live: set[str] = set()  # encoded keys still held (renewed by the heartbeat)
        self._released: set[str] = set()  # released in a caller's session (which may still roll back)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- claiming -------------------------------------------------------------------------------------------------

    def _claim_once(self, codes: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        with Session(self.engine, expire_on_commit=False) as s:
            got = _insert_claims(s, self.kind, codes, self.owner, self.ttl_s)
            done: list[str] = []
            if got and self.verify is not None:
                wanted = {encode_key(k) for k in self.verify(s, [self._by_code[c] for c in sorted(got)])}
                done = [c for c in got if c not in wanted]
                if done:
                    _delete_claims(s, self.kind, done, self.owner)
                got = {c: p for c, p in got.items() if c in wanted}
            s.commit()
        return got, done

    def _expire_dead_local(self, codes: Sequence[str]) -> bool:
        """Expire the claims among ``codes`` whose owner was a process on this host that is gone; True if any."""
        dead = {o for o in set(self.holders(codes).values()) if owner_alive(o) is False}
        if not dead:
            return False
        t = WorkClaim.__table__
        past = utcnow() - timedelta(seconds=1)
        with Session(self.engine) as s:
            for chunk in chunked(sorted(codes)):
                s.execute(
                    sa.update(t)
                    .where(t.c.kind == self.kind, t.c.owner.in_(sorted(dead)), t.c.key.in_(chunk))
                    .values(expires_at=past)
                )
            s.commit()
        return True

    def acquire(self) -> Lease:
        t0 = time.perf_counter()
        todo = list(self._by_code)
        deadline = time.monotonic() + self.wait_s
        held: dict[str, Any] = {}
        done: list[str] = []
        pause = 0.05
        checked_dead = False
        while True:
            got, fin = self._claim_once(todo)
            held.update(got)
            done += fin
            todo = [c for c in todo if c not in got and c not in fin]
            if todo and not checked_dead:
                checked_dead = True  # once per acquire: owners that died on this host need no lease expiry
                if self._expire_dead_local(todo):
                    continue
            if not todo or time.monotonic() >= deadline:
                break
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 1.0)
        self.claim_seconds += time.perf_counter() - t0
        if todo and self.wait_s > 0:
            holders = self.holders(todo)
            self.release()
            raise ClaimError(
                f"{self.kind}: waited {self.wait_s:.0f} s for {len(todo)} key(s) held by another run "
                f"({'; '.join(f'{k} by {o}' for k, o in list(holders.items())[:3])})"
            )
        order = list(self._by_code)
        self.held = [self._by_code[c] for c in order if c in held]
        self.done = [self._by_code[c] for c in order if c in done]
        self.skipped = [self._by_code[c] for c in order if c in todo]
        self.taken_over = {self._by_code[c]: p for c, p in held.items() if p}
        if self.taken_over:
            prev = sorted(set(self.taken_over.values()))
            log.warning(
                "claims: took over %d %s claim(s) whose lease had expired (owner(s) %s died or stalled)",
                len(self.taken_over),
                self.kind,
                ", ".join(prev[:3]),
            )
        with self._lock:
            self._live = set(held)
        if self._live and self.heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"lease-{self.kind}", daemon=True)
            self._thread.start()
        return self

    def holders(self, keys: Iterable[Any]) -> dict[str, str]:
        """``{encoded key: owner}`` of the claim rows of ``keys`` (encoded or not) as they stand now."""
        codes = [k if k in self._by_code else encode_key(k) for k in keys]
        t = WorkClaim.__table__
        with self.engine.connect() as conn:
            q = sa.select(t.c.key, t.c.owner).where(t.c.kind == self.kind, t.c.key.in_(codes))
            return dict(conn.execute(q).tuples().all())

    # --- renewing -------------------------------------------------------------------------------------------------

    def renew(self) -> list[Any]:
        """Move the expiry of every key still held ``ttl_s`` ahead; returns keys found lost (taken over)."""
        with self._lock:
            live = set(self._live)
        if not live:
            return []
        with Session(self.engine) as s:
            kept = _renew_claims(s, self.kind, live, self.owner, self.ttl_s)
            s.commit()
        with self._lock:
            gone = [c for c in live if c not in kept and c in self._live]  # not released meanwhile
            self._live -= set(gone)
        lost = [self._by_code[c] for c in gone]
        if lost:
            self.lost.extend(lost)
            log.warning(
                "claims: %d %s claim(s) of %s were taken over by another run (this one stalled past its %.0f s "
                "lease); their results are written idempotently",
                len(lost),
                self.kind,
                self.owner,
                self.ttl_s,
            )
        return lost

    def _beat(self) -> None:
        interval = self.ttl_s / 3
        while not self._stop.wait(interval):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - database unreachable: the lease just expires; retried next beat
                log.warning("claims: renewing %s lease of %s failed: %s", self.kind, self.owner, exc)

    # --- releasing ------------------------------------------------------------------------------------------------

    def release_in(self, session: Session, keys: Iterable[Any] | None = None) -> int:
        """Delete the claims of ``keys`` (default: all held) in ``session``: call it in the transaction that writes
        their results, so that result and release commit together. Returns the rows deleted (a key lost to another
        run is not deleted: that run's claim stays its own)."""
        codes = set(self._live) if keys is None else {encode_key(k) for k in keys}
        with self._lock:
            codes &= self._live
            self._live -= codes  # no more renewals
            self._released |= codes  # deleted once more by release() unless the caller's transaction commits

        def committed(_session: Session) -> None:
            with self._lock:
                self._released -= codes

        def rolled_back(_session: Session) -> None:  # the rows are still there: release() deletes them
            if sa.event.contains(session, "after_commit", committed):
                sa.event.remove(session, "after_commit", committed)

        sa.event.listen(session, "after_commit", committed, once=True)
        sa.event.listen(session, "after_rollback", rolled_back, once=True)
        return _delete_claims(session, self.kind, codes, self.owner)

    def release(self) -> int:
        """Release, in its own transaction, whatever is still held (an item that failed, an exception) or was released
        in a caller's session that may have rolled back (deleting an already deleted row is a no-op)."""
        self._stop.set()
        with self._lock:
            codes = self._live | self._released
            self._live, self._released = set(), set()
        if not codes:
            return 0
        with Session(self.engine) as s:
            n = _delete_claims(s, self.kind, codes, self.owner)
            s.commit()
        return n

    @property
    def live(self) -> list[Any]:
        with self._lock:
            return [self._by_code[c] for c in self._by_code if c in self._live]

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()  # no join: the heartbeat may be waiting for a SQLite write lock the caller still holds
        try:
            self.release()
        except Exception as err:  # noqa: BLE001 - the rows expire; never mask the block's own exception
            log.warning(
                "claims: releasing %s lease of %s failed (the claims expire in %.0f s): %s",
                self.kind,
                self.owner,
                self.ttl_s,
                err,
            )


@dataclass(frozen=True)
class StaleClaim:
    kind: str
    key: str
    owner: str
    expired_at: datetime


def sweep(engine: Engine, kinds: Iterable[str] | None = None, *, older_than_s: float = 0.0) -> list[StaleClaim]:
    """Delete claims whose lease expired more than ``older_than_s`` ago, or whose owner was a process on this host
    that is gone (:func:`owner_alive`); returns them.

    Nothing is lost: a claim holds no result, and the work it covered is still pending, so the next run does it.
    """
    t = WorkClaim.__table__
    cutoff = utcnow() - timedelta(seconds=float(older_than_s))
    kind_cond = t.c.kind.in_(list(kinds)) if kinds is not None else sa.true()
    with engine.connect() as conn:
        owners = conn.execute(sa.select(t.c.owner).where(kind_cond).distinct()).scalars().all()
    dead = sorted(o for o in owners if owner_alive(o) is False)
    cond = sa.and_(kind_cond, sa.or_(t.c.expires_at < sa.literal(cutoff, UTCDateTime()), t.c.owner.in_(dead)))
    with Session(engine) as s:
        stmt = sa.delete(t).where(cond).returning(t.c.kind, t.c.key, t.c.owner, t.c.expires_at)
        rows = [StaleClaim(k, key, o, exp) for k, key, o, exp in s.execute(stmt)]
        s.commit()
    return rows


def describe_stale(stale: Sequence[StaleClaim]) -> str:
    """One line for a run's log: how many expired claims of which kinds and owners were removed."""
    by: dict[tuple[str, str], int] = {}
    for c in stale:
        by[(c.kind, c.owner)] = by.get((c.kind, c.owner), 0) + 1
    parts = [f"{n} {kind} from {owner}" for (kind, owner), n in sorted(by.items())]
    return (
        f"removed {len(stale)} expired claim(s) left by crashed or killed runs ({'; '.join(parts)}); their work "
        "is still pending and is done by this or a later run"
    )


def live_keys(engine: Engine, kind: str, keys: Iterable[Any]) -> set[str]:
    """The encoded keys among ``keys`` with an unexpired claim (held by a live owner, as far as the leases tell)."""
    t = WorkClaim.__table__
    now = sa.literal(utcnow(), UTCDateTime())
    out: set[str] = set()
    with engine.connect() as conn:
        for chunk in chunked(sorted({encode_key(k) for k in keys})):
            q = sa.select(t.c.key).where(t.c.kind == kind, t.c.key.in_(chunk), t.c.expires_at >= now)
            out.update(conn.execute(q).scalars())
    return out


def active_claims(engine: Engine, kind: str | None = None) -> list[WorkClaim]:
    """Claim rows as they stand (status, tests)."""
    with Session(engine, expire_on_commit=False) as s:
        q = sa.select(WorkClaim).order_by(WorkClaim.kind, WorkClaim.key)
        if kind is not None:
            q = q.where(WorkClaim.kind == kind)
        return list(s.scalars(q))


# --- verify functions of the stages (which claimed keys still need doing) ------------------------------------------


def unpredicted(model_version: str, *, retry_failed: bool = True) -> Verify:
    """``verify`` for ``kind="predict"``, keys ``(item_id, model_version)``: items with no prediction of that
    version yet (or only a failed one, with ``retry_failed``)."""
    from storage.models import Prediction

    def check(session: Session, keys: list[Any]) -> list[Any]:
        ids = sorted({int(k[0]) for k in keys})
        have: set[int] = set()
        for chunk in chunked(ids):
            q = sa.select(Prediction.item_id).where(
                Prediction.item_id.in_(chunk), Prediction.model_version == model_version
            )
            if retry_failed:
                q = q.where(Prediction.error.is_(None))
            have.update(session.scalars(q))
        return [k for k in keys if int(k[0]) not in have]

    return check


def unpushed(prediction_of: dict[int, int]) -> Verify:
    """``verify`` for ``kind="push"``, keys ``(label_project_id, item_id)``: items whose task in that project does
    not carry the prediction to push yet (``prediction_of``: item id -> prediction id)."""
    from storage.models import LabelTask

    def check(session: Session, keys: list[Any]) -> list[Any]:
        out = []
        by_project: dict[int, list[Any]] = {}
        for k in keys:
            by_project.setdefault(int(k[0]), []).append(k)
        for pid, ks in by_project.items():
            ids = sorted({int(k[1]) for k in ks})
            done: set[int] = set()
            for chunk in chunked(ids):
                q = sa.select(LabelTask.item_id, LabelTask.prediction_id).where(
                    LabelTask.label_project_id == pid, LabelTask.item_id.in_(chunk)
                )
                done.update(i for i, p in session.execute(q) if p is not None and p == prediction_of.get(i))
            out += [k for k in ks if int(k[1]) not in done]
        return out

    return check
