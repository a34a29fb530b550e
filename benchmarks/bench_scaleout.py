"""Scale-out benchmark: 1, 2 and 4 Prefect workers on one process work pool sharing the model stage.

Real services, started here: ``prefect server start`` on a loopback port, PostgreSQL (``--pg``, a fresh schema per
configuration), the workers (``prefect worker start --pool … --limit 1``: one batch at a time, like one GPU each),
and, for the push part, a local Label Studio. The model stage is the fixed-time
``py:tests.helpers.scaleout:sleepy_pipeline`` (``--sleep`` seconds per item; sleep-bound, so the 2-core machine does
not cap several workers; its masks mean nothing).

Per worker count it prints: wall time of ``dispatch_flow`` (from the first batch run dispatched to the last one
finished; the workers are online before the clock starts), throughput and its ratio against 1 worker measured in the
same run (goals: >= 1.8x with 2, >= 3.2x with 4), duplicated model work (model calls beyond one per item: must be 0),
the claim overhead per batch (the claim transaction, claim + verify, as logged by each batch run), and with
``--push`` the duplicate Label Studio tasks after as many concurrent ``geolabel push`` as workers (must be 0).

    .venv/bin/python -m benchmarks.bench_scaleout [--workers 1,2,4] [--items 160] [--batch 40] [--sleep 0.75]
        [--push] [--json out.json]

Every batch run is its own flow-run process (Prefect's process worker), so the per-run start-up (imports, database
connection) is part of the measured time: batches should be long against it (``--batch × --sleep`` ≫ ~20 s here).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
AERIAL = ROOT / "tests" / "data" / "aerial"
IMAGES = ("SOAP_031.png", "SOAP_061.png")
PROFILE = "py:tests.helpers.scaleout:sleepy_pipeline"
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CLAIM_RE = re.compile(r"predict-batch: (\d+) predicted.*claim ([0-9.]+) ms")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(api: str, home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=api,
        PREFECT_HOME=str(home),
        PYTHONPATH=str(ROOT),
        DO_NOT_TRACK="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _start_prefect(home: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(
        api,
        home,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        PREFECT_SERVER_UI_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    env.pop("PREFECT_API_URL")
    log = open(home / "server.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{api}/health", timeout=2):
                return proc, api
        except Exception:  # noqa: BLE001 - until it answers
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}"
                ) from None
            time.sleep(0.5)


def _fresh_schema(pg: str) -> tuple[str, Any]:
    import sqlalchemy as sa

    from storage.db import make_engine

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(pg, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    url = sa.engine.make_url(pg).update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), drop


def _add_items(overrides: dict[str, Any], prefix: str, n: int) -> None:
    from flows.runtime import open_runtime, settings_from
    from geoseg.imagery import read_image
    from storage import repo
    from storage.records import ImageRecord, ItemRecord

    rt = open_runtime(settings_from(overrides))
    with rt.session() as s:
        image_ids = []
        for name in IMAGES:
            data = (AERIAL / name).read_bytes()
            sha = rt.blobs.put(data)
            rec = ImageRecord.from_loaded(read_image(data, name=name), sha256=sha, uri=str(AERIAL / name))
            image_ids.append(repo.upsert_image(s, rec))
        for k in range(n):
            repo.upsert_item(s, ItemRecord(image_ids[k % len(image_ids)], f"{prefix} target {k}"))


def _wait_workers_online(pool: str, n: int, timeout: float = 300) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            online = [w for w in client.read_workers_for_work_pool(pool) if str(w.status.value) == "ONLINE"]
            if len(online) >= n:
                return
            time.sleep(1)
    raise RuntimeError(f"{n} worker(s) did not come online on pool {pool} within {timeout:.0f} s")


def run_config(k: int, args: argparse.Namespace, api: str, home: Path, ls: Any) -> dict[str, Any]:
    """One worker count: fresh schema, pool and workers; dispatch; count model calls and (optionally) push."""
    import prefect.settings

    from flows.dispatch import deploy, dispatch_flow
    from flows.runtime import forget_runtimes

    work = home / f"k{k}"
    work.mkdir()
    url, drop = _fresh_schema(args.pg)
    overrides = {"data_dir": str((ls.imagery_root.parent if ls else work) / f"data-k{k}"), "database_url": url}
    prefix = f"bench{k}-{uuid.uuid4().hex[:6]}"
    calls = work / "model-calls.log"
    workers: list[subprocess.Popen] = []
    logs = []
    try:
        with prefect.settings.temporary_settings({prefect.settings.PREFECT_API_URL: api}):
            _add_items(overrides, prefix, args.items)
            pool = f"bench-{k}-{uuid.uuid4().hex[:6]}"
            deploy(pool, profile=PROFILE)
            env = _env(api, home, GEOLABEL_TEST_MODEL_SLEEP_S=str(args.sleep), GEOLABEL_TEST_MODEL_LOG=str(calls))
            for j in range(k):
                log = open(work / f"worker{j}.log", "wb")  # noqa: SIM115 - closed below
                logs.append(log)
                cmd = [
                    sys.executable,
                    "-m",
                    "prefect",
                    "worker",
                    "start",
                    "--pool",
                    pool,
                    "--name",
                    f"w{j}",
                    "--limit",
                    "1",
                ]
                workers.append(
                    subprocess.Popen(
                        cmd, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
            _wait_workers_online(pool, k)
            t0 = time.perf_counter()
            rep = dispatch_flow(
                PROFILE, settings_overrides=overrides, batch_size=args.batch, poll_s=0.5, timeout_s=3600
            )
            seconds = time.perf_counter() - t0
        lines = [ln.split("\t", 2) for ln in calls.read_text().splitlines()] if calls.exists() else []
        per_query = collections.Counter(q for _, _, q in lines if q.startswith(prefix + " "))
        claim_ms = []
        for j in range(k):
            claim_ms += [float(m.group(2)) for m in CLAIM_RE.finditer((work / f"worker{j}.log").read_text())]
        out: dict[str, Any] = {
            "workers": k,
            "items": args.items,
            "batches": rep.batches,
            "runs": rep.runs,
            "seconds": round(seconds, 2),
            "items_per_s": round(args.items / seconds, 3),
            "predicted_items": len(per_query),
            "duplicated_model_work": sum(per_query.values()) - len(per_query),
            "still_pending": rep.still_pending,
            "claim_ms_per_batch": round(sum(claim_ms) / len(claim_ms), 1) if claim_ms else None,
            "workers_used": len({ppid for _, ppid, _ in lines}),
        }
        if ls is not None:
            out.update(_push_race(k, overrides, api, home, ls))
        return out
    finally:
        for p in workers:
            _stop(p)
        for log in logs:
            log.close()
        forget_runtimes()
        drop()


def _push_race(k: int, overrides: dict[str, Any], api: str, home: Path, ls: Any) -> dict[str, Any]:
    """``max(k, 2)`` concurrent ``geolabel push`` into one new project: duplicate tasks (must be 0)."""
    title = f"bench scaleout {uuid.uuid4().hex[:6]}"
    env = _env(
        api,
        home,
        GEOLABEL_DATA_DIR=overrides["data_dir"],
        GEOLABEL_DATABASE_URL=overrides["database_url"],
        GEOLABEL_LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_USER_TOKEN=ls.token_value,
    )
    cmd = [sys.executable, "-m", "flows.cli", "push", "--profile", PROFILE, "--project", title, "--json"]
    n = max(k, 2)
    t0 = time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(n)]
    outs = [p.communicate(timeout=900) for p in procs]
    seconds = time.perf_counter() - t0
    errors = [err.decode()[-300:] for p, (_, err) in zip(procs, outs, strict=True) if p.returncode != 0]
    projects = [p for p in ls.client.projects(title=title) if p.get("title") == title]
    per_item: collections.Counter = collections.Counter()
    for proj in projects:
        for t in ls.client.iter_tasks(proj["id"], fields="task_only", page_size=500):
            per_item[(t.get("data") or {}).get("item_id")] += 1
    return {
        "concurrent_pushes": n,
        "push_seconds": round(seconds, 2),
        "projects": len(projects),
        "tasks": sum(per_item.values()),
        "duplicate_tasks": sum(per_item.values()) - len(per_item),
        "push_errors": errors,
    }


def warm_claim_ms(pg: str, batch: int, reps: int = 30) -> dict[str, float]:
    """Claim overhead per batch in a warm process: claim + verify (the predict stage's check) in one transaction, then
    the release in the result's transaction, for ``batch`` keys; median and 90th percentile over ``reps`` batches."""
    import statistics

    from storage import claims
    from storage.db import create_all, make_engine, session_scope

    url, drop = _fresh_schema(pg)
    engine = make_engine(url)
    try:
        create_all(engine)
        ms = []
        for r in range(reps + 1):
            keys = [(r * batch + i, "bench") for i in range(batch)]
            t = time.perf_counter()
            verify = claims.unpredicted("bench")
            lease = claims.Lease(engine, "predict", keys, ttl_s=60, verify=verify, heartbeat=False)
            with lease, session_scope(engine) as s:  # the session commits first, then the lease ends
                lease.release_in(s)
            ms.append((time.perf_counter() - t) * 1000)
        ms = sorted(ms[1:])  # the first one opens the connection
        return {"median": round(statistics.median(ms), 1), "p90": round(ms[int(0.9 * (len(ms) - 1))], 1)}
    finally:
        engine.dispose()
        drop()


class _LabelStudio:
    def __init__(self, root: Path) -> None:
        from labeling.server import LabelStudioServer

        self.root = root
        # a migrated Label Studio kept by the test fixtures (if any) saves its cold start (minutes on a busy machine)
        import shutil

        base = os.environ.get("GEOLABEL_LS_TEMPLATE_DIR")
        templates = [Path(base)] if base else sorted((Path.home() / ".cache" / "geolabel").glob("labelstudio-*"))
        for tpl in templates:
            if (tpl / "data" / "label_studio.sqlite3").exists() and (tpl / "credentials.json").exists():
                shutil.copytree(tpl, root / "labelstudio", dirs_exist_ok=True)
                break
        (root / "imagery").mkdir(parents=True, exist_ok=True)
        self.srv = LabelStudioServer(root / "labelstudio", imagery_root=root / "imagery")
        self.srv.start(timeout=900)
        self.token_value = self.srv.token().get_secret_value()
        self.url = self.srv.status().url
        self.imagery_root = root / "imagery"
        from labeling.client import LabelStudioClient

        self.client = LabelStudioClient(self.url, self.token_value)

    def stop(self) -> None:
        self.srv.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--items", type=int, default=160)
    ap.add_argument("--batch", type=int, default=40)
    ap.add_argument("--sleep", type=float, default=0.75, help="model seconds per item")
    ap.add_argument("--pg", default=os.environ.get("GEOLABEL_TEST_PG_URL", PG_DEFAULT))
    ap.add_argument("--push", action="store_true", help="also race concurrent pushes into a local Label Studio")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--claims-only", action="store_true", help="only the warm claim overhead per batch")
    args = ap.parse_args(argv)
    warm = warm_claim_ms(args.pg, args.batch)
    print(
        f"claim overhead per batch of {args.batch} (warm process, PostgreSQL, claim + verify + release): "
        f"median {warm['median']} ms, p90 {warm['p90']} ms",
        flush=True,
    )
    if args.claims_only:
        return {"warm_claim_ms": warm}
    counts = [int(x) for x in args.workers.split(",")]
    home = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    server, api = _start_prefect(home)
    ls = _LabelStudio(home) if args.push else None
    results = []
    try:
        for k in counts:
            r = run_config(k, args, api, home, ls)
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        if ls is not None:
            ls.stop()
        _stop(server)
    base = next((r for r in results if r["workers"] == 1), None)
    goals = {2: 1.8, 4: 3.2}
    print(
        f"\nscale-out: {args.items} items, batches of {args.batch}, {args.sleep} s model time per item "
        "(sleep-bound fixed-time stage; its masks mean nothing)"
    )
    print(
        f"{'workers':>7} {'seconds':>8} {'items/s':>8} {'ratio':>6} {'goal':>5} {'dup model':>9} "
        f"{'dup tasks':>9} {'claim ms/batch':>14}"
    )
    for r in results:
        ratio = r["items_per_s"] / base["items_per_s"] if base else float("nan")
        r["ratio_vs_1"] = round(ratio, 2)
        goal = goals.get(r["workers"])
        print(
            f"{r['workers']:>7} {r['seconds']:>8.1f} {r['items_per_s']:>8.2f} {ratio:>6.2f} "
            f"{(str(goal) if goal else '-'):>5} {r['duplicated_model_work']:>9} "
            f"{str(r.get('duplicate_tasks', '-')):>9} {str(r['claim_ms_per_batch']):>14}"
        )
    print(
        "claim ms/batch: as logged by each batch run (its first database use: connection + cold statements); "
        f"warm: median {warm['median']} ms"
    )
    out = {"items": args.items, "batch": args.batch, "sleep_s": args.sleep, "warm_claim_ms": warm, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
