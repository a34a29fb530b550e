"""Work claims (storage.claims) on SQLite and PostgreSQL, with real processes racing for the same keys."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from storage import claims
from storage.db import create_all, make_engine, session_scope

KEYS = [(i, "v1") for i in range(200)]
_meta = sa.MetaData()
#: no unique key on purpose: a key done twice shows up as two rows
RESULT = sa.Table("claim_test_result", _meta, sa.Column("k", sa.Integer), sa.Column("owner", sa.String(200)))


def _done_keys(session: Session, keys: list) -> list:
    done = set(session.scalars(sa.select(RESULT.c.k).where(RESULT.c.k.in_([k[0] for k in keys]))))
    return [k for k in keys if k[0] not in done]


def _race_worker(url: str, seed: int, batch: int, start: mp.Event, out: mp.Queue) -> None:
    engine = make_engine(url)
    order = KEYS[:]
    random.Random(seed).shuffle(order)
    start.wait(30)
    stats = {"held": 0, "skipped": 0, "done": 0}
    for i in range(0, len(order), batch):
        with claims.Lease(engine, "test", order[i : i + batch], ttl_s=30, verify=_done_keys) as lease:
            stats["held"] += len(lease.held)
            stats["skipped"] += len(lease.skipped)
            stats["done"] += len(lease.done)
            time.sleep(0.002)  # "model work"
            with session_scope(engine) as s:
                if lease.held:
                    s.execute(RESULT.insert(), [{"k": k[0], "owner": lease.owner} for k in lease.held])
                lease.release_in(s)
    engine.dispose()
    out.put(stats)


def _setup(url: str):
    engine = make_engine(url)
    create_all(engine)
    _meta.create_all(engine)
    return engine


def test_racing_processes_claim_every_key_exactly_once(db_url):
    """Four processes, each walking all 200 keys in its own order: every key is done once, none twice."""
    engine = _setup(db_url)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(db_url, n, 7, start, out)) for n in range(4)]
    for p in procs:
        p.start()
    start.set()
    stats = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    with engine.connect() as conn:
        rows = conn.execute(sa.select(RESULT.c.k, sa.func.count()).group_by(RESULT.c.k)).all()
    assert sorted(k for k, _ in rows) == [k[0] for k in KEYS]
    assert all(n == 1 for _, n in rows), [r for r in rows if r[1] > 1]
    assert sum(s["held"] for s in stats) == len(KEYS)
    assert sum(s["skipped"] + s["done"] for s in stats) == 3 * len(KEYS)  # the others skipped or found it done
    assert claims.active_claims(engine) == []  # every claim released with its result
    engine.dispose()


def _hold_and_wait(url: str, ttl: float, owner: str | None, out: mp.Queue) -> None:
    engine = make_engine(url)
    lease = claims.Lease(engine, "test", KEYS[:5], ttl_s=ttl, owner=owner).acquire()
    out.put(lease.owner)
    time.sleep(600)  # killed here, holding the claims


def _start_holder(url: str, ttl: float, owner: str | None = None):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_hold_and_wait, args=(url, ttl, owner, out))
    proc.start()
    return proc, out.get(timeout=60)


def test_lost_node_lease_is_taken_over_after_expiry_and_swept(db_url):
    """The holder names another host (a lost node: its process cannot be checked), so only its lease expiry counts."""
    engine = _setup(db_url)
    proc, dead_owner = _start_holder(db_url, 1.5, owner=f"test@lost-node:{os.getpid() + 1}:abcd")
    time.sleep(2.0)  # longer than the 1.5 s lease: the live owner's heartbeat (every 0.5 s) keeps renewing it
    with claims.Lease(engine, "test", KEYS[:5], ttl_s=5, heartbeat=False) as lease:
        assert lease.held == [] and lease.skipped == KEYS[:5]  # a live owner's claims are skipped
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=10)
    t_kill = time.monotonic()
    with claims.Lease(engine, "test", KEYS[:3], ttl_s=5, heartbeat=False) as lease:
        assert lease.held == []  # dead, but its lease still runs
    while time.monotonic() - t_kill < 10:
        with claims.Lease(engine, "test", KEYS[:3], ttl_s=5, heartbeat=False) as lease:
            if lease.held:
                break
        time.sleep(0.2)
    assert lease.held == KEYS[:3] and set(lease.taken_over.values()) == {dead_owner}
    assert 0.5 < time.monotonic() - t_kill < 3.5  # taken over once the 1.5 s lease ran out (plus polling)
    stale = claims.sweep(engine)  # the two keys nobody took over yet: cleaned up and reported
    assert sorted(c.key for c in stale) == [claims.encode_key(k) for k in KEYS[3:5]]
    assert {c.owner for c in stale} == {dead_owner}
    assert "removed 2 expired claim(s)" in claims.describe_stale(stale)
    assert claims.active_claims(engine) == []
    engine.dispose()


def test_dead_local_owner_is_taken_over_at_once(db_url):
    """A holder on this host whose process is gone (SIGKILL) needs no lease expiry: a re-run takes over at once."""
    engine = _setup(db_url)
    proc, dead_owner = _start_holder(db_url, 60.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=10)
    assert claims.owner_alive(dead_owner) is False and claims.owner_alive(claims.new_owner()) is True
    with claims.Lease(engine, "test", KEYS[:2], ttl_s=5) as lease:
        assert lease.held == KEYS[:2] and set(lease.taken_over.values()) == {dead_owner}
    assert [c.owner for c in claims.sweep(engine)] == [dead_owner] * 3  # the rest, long before the 60 s lease
    engine.dispose()


def test_release_commits_with_the_result_or_not_at_all(db_url):
    engine = _setup(db_url)
    with claims.Lease(engine, "test", KEYS[:2], ttl_s=30) as lease:
        with pytest.raises(RuntimeError), session_scope(engine) as s:
            s.execute(RESULT.insert(), [{"k": 0, "owner": lease.owner}])
            assert lease.release_in(s, [KEYS[0]]) == 1
            raise RuntimeError("crash before commit")
        with engine.connect() as conn:  # rolled back together: no result, the claim is still there
            assert conn.execute(sa.select(sa.func.count()).select_from(RESULT)).scalar_one() == 0
        assert {c.key for c in claims.active_claims(engine)} == {claims.encode_key(k) for k in KEYS[:2]}
        with session_scope(engine) as s:
            s.execute(RESULT.insert(), [{"k": 1, "owner": lease.owner}])
            assert lease.release_in(s, [KEYS[1]]) == 1
        assert {c.key for c in claims.active_claims(engine)} == {claims.encode_key(KEYS[0])}
    assert claims.active_claims(engine) == []  # the lease released the key it did not finish
    engine.dispose()


def test_heartbeat_keeps_a_short_lease_and_too_short_leases_are_refused(db_url):
    engine = _setup(db_url)
    with pytest.raises(claims.ClaimError, match="at least 1.0 s"):
        claims.Lease(engine, "test", KEYS[:1], ttl_s=0.2)
    with claims.Lease(engine, "test", KEYS[:1], ttl_s=1.0) as lease:
        time.sleep(2.5)  # longer than the lease: renewed every 1/3 s
        with claims.Lease(engine, "test", KEYS[:1], ttl_s=5, heartbeat=False) as other:
            assert other.skipped == KEYS[:1]
        assert lease.lost == [] and lease.live == KEYS[:1]
    # waiting for a key: the holder is named when the wait runs out
    holder = claims.Lease(engine, "project", [("http://ls", "T")], ttl_s=30).acquire()
    with pytest.raises(claims.ClaimError, match="waited 1 s .* held by another run"):
        claims.Lease(engine, "project", [("http://ls", "T")], ttl_s=5, wait_s=1).acquire()
    holder.release()
    engine.dispose()
