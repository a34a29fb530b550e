"""Scale-out on Prefect work pools: a dispatcher cuts the pending model work into batches, each batch is its own flow
run of the ``predict-batch`` deployment on a work pool, and any number of workers (``prefect worker start --pool …``,
one per GPU node) pull them from that one queue.

* :func:`predict_batch_flow` (deployment :data:`BATCH_DEPLOYMENT`): ``flows.preannotate.predict_batch`` on one batch:
  claims the batch's items (``storage.claims``), predicts the ones it holds, writes the predictions with the claims
  released in one transaction. Each batch also takes a slot of the global concurrency limit ``geolabel-model`` when it
  exists (``prefect gcl create geolabel-model --limit <GPUs>``), so the per-GPU bound holds across all workers.
* :func:`dispatch_flow` (deployment :data:`DISPATCH_DEPLOYMENT`, or ``geolabel dispatch``): reads the pending work,
  runs one ``predict-batch`` flow run per batch (``run_deployment(..., timeout=0)``), then watches them. A batch run
  whose worker died (SIGKILL, a lost node) stays "Running" in Prefect forever; the dispatcher sees that its items are
  still pending with no live claim after the lease ran out, marks that run Crashed and dispatches its items again
  (another worker takes them over). Two dispatchers at once are harmless: the claims decide who predicts an item.
* :func:`deploy` (``geolabel deploy --pool gpu``): registers both deployments with the Prefect API on that work pool.
  The entrypoints are module paths, so a worker needs the ``geolabel`` package installed (or on ``PYTHONPATH``) and the
  shared settings (``GEOLABEL_DATABASE_URL`` = PostgreSQL, ``GEOLABEL_BLOB_URL`` = ``s3://…``) in its environment.

Adding a GPU worker (on the new node, with the package installed and the shared settings exported)::

    prefect worker start --pool gpu --limit 1
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow

from flows.preannotate import (
    ImageWork,
    WorkItem,
    global_limit_exists,
    model_version_of,
    pending_work,
    plan_batches,
    predict_batch,
)
from flows.runtime import open_runtime, settings_from
from flows.serve import run_logger as _logger

BATCH_FLOW = "predict-batch"
BATCH_DEPLOYMENT = "geolabel-predict-batch"
DISPATCH_FLOW = "dispatch"
DISPATCH_DEPLOYMENT = "geolabel-dispatch"
DEFAULT_POOL = "gpu"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def batch_to_params(batch: list[ImageWork]) -> list[dict[str, Any]]:
    """A batch as JSON-able flow-run parameters."""
    return [
        {"image_id": w.image_id, "sha256": w.sha256, "uri": w.uri, "items": [[i.item_id, i.query] for i in w.items]}
        for w in batch
    ]


def batch_from_params(raw: list[dict[str, Any]]) -> list[ImageWork]:
    try:
        return [
            ImageWork(
                int(w["image_id"]),
                str(w["sha256"]),
                str(w["uri"]),
                tuple(WorkItem(int(i), str(q)) for i, q in w["items"]),
            )
            for w in raw
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed batch parameter: {type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class BatchRunReport:
    predicted: int = 0
    failed: int = 0
    skipped: int = 0
    taken_over: int = 0
    seconds_model: float = 0.0
    seconds_claim: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@flow(name=BATCH_FLOW, log_prints=True)
def predict_batch_flow(
    batch: list[dict[str, Any]],
    profile: str = "tiny",
    settings_overrides: dict[str, Any] | None = None,
    lease_s: float | None = None,
    retry_failed: bool = True,
) -> BatchRunReport:
    """One batch of the model stage as its own flow run (what a worker of the pool executes)."""
    log = _logger()
    work = batch_from_params(batch)
    rt = open_runtime(settings_from(settings_overrides))
    out = predict_batch(rt, profile, work, 1, global_limit_exists(), lease_s=lease_s, retry_failed=retry_failed)
    log.info(
        "predict-batch: %d predicted, %d failed, %d skipped (held or done by another run), %d taken over; "
        "claim %.1f ms, model %.2f s",
        out.predicted,
        out.failed,
        out.skipped,
        out.taken_over,
        out.seconds_claim * 1000,
        out.seconds_model,
    )
    return BatchRunReport(out.predicted, out.failed, out.skipped, out.taken_over, out.seconds_model, out.seconds_claim)


@dataclass(frozen=True)
class DispatchReport:
    model_version: str
    pending: int = 0
    batches: int = 0
    rounds: int = 0
    runs: dict[str, int] = field(default_factory=dict)  # final state -> count
    lost_runs: tuple[str, ...] = ()  # batch runs whose worker died (their items were dispatched again)
    still_pending: int = 0
    stale_claims: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _mark_crashed(client: Any, run_id: Any, message: str) -> None:
    from prefect.states import Crashed

    try:
        client.set_flow_run_state(run_id, Crashed(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - only the Prefect UI's view of it; the work is re-dispatched anyway
        _logger().warning("dispatch: could not mark flow run %s crashed: %s", run_id, exc)


def _watch(
    runs: dict[Any, list[ImageWork]], rt: Any, mv: str, lease_s: float, poll_s: float, deadline: float
) -> tuple[dict[str, int], list[str]]:
    """Poll the batch runs until each is final or lost; returns (state counts, names of lost runs)."""
    from prefect.client.orchestration import get_client

    from storage import claims

    log = _logger()
    states: dict[Any, str] = {}
    lost: list[str] = []
    open_runs = dict(runs)
    with get_client(sync_client=True) as client:
        while open_runs and time.monotonic() < deadline:
            time.sleep(poll_s)
            for run_id, batch in list(open_runs.items()):
                fr = client.read_flow_run(run_id)
                st = fr.state.type.value if fr.state else "PENDING"
                if st in TERMINAL:
                    states[run_id] = st
                    del open_runs[run_id]
                    continue
                if st != "RUNNING" or fr.start_time is None:
                    continue
                running_s = time.time() - fr.start_time.timestamp()
                if running_s < 2 * lease_s + 10:
                    continue
                keys = [(i.item_id, mv) for w in batch for i in w.items]
                with rt.session() as s:
                    left = claims.unpredicted(mv)(s, keys)
                if left and not claims.live_keys(rt.engine, "predict", left):
                    msg = (
                        f"its worker stopped renewing the claims of {len(left)} item(s) for more than the "
                        f"{lease_s:.0f} s lease (killed or lost): they are dispatched again"
                    )
                    log.warning("dispatch: batch run %s: %s", fr.name, msg)
                    _mark_crashed(client, run_id, msg)
                    states[run_id] = "CRASHED"
                    lost.append(fr.name)
                    del open_runs[run_id]
    counts: dict[str, int] = {}
    for st in states.values():
        counts[st] = counts.get(st, 0) + 1
    if open_runs:
        counts["UNFINISHED"] = len(open_runs)
    return counts, lost


def _submit(deployment: str, batches: list[list[ImageWork]], params: dict[str, Any]) -> dict[Any, list[ImageWork]]:
    """One flow run of ``deployment`` per batch (not waited for); returns ``{flow run id: batch}``."""
    from prefect.deployments import run_deployment

    return {
        run_deployment(
            deployment, parameters={**params, "batch": batch_to_params(b)}, timeout=0, as_subflow=False
        ).id: b
        for b in batches
    }


@flow(name=DISPATCH_FLOW, log_prints=True)
def dispatch_flow(
    profile: str = "tiny",
    settings_overrides: dict[str, Any] | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    retry_failed: bool = True,
    lease_s: float | None = None,
    deployment: str = f"{BATCH_FLOW}/{BATCH_DEPLOYMENT}",
    wait: bool = True,
    timeout_s: float = 3600.0,
    poll_s: float = 2.0,
    max_rounds: int = 3,
) -> DispatchReport:
    """Cut the pending model work into batches, run each as a ``predict-batch`` flow run on the work pool, and (with
    ``wait``) watch them, dispatching again the items of runs whose worker died (up to ``max_rounds`` rounds)."""
    from storage import claims

    log = _logger()
    t0 = time.perf_counter()
    lease = claims.check_ttl(claims.DEFAULT_TTL_S if lease_s is None else lease_s)
    rt = open_runtime(settings_from(settings_overrides))
    stale = claims.sweep(rt.engine, ["predict"])
    if stale:
        log.warning("dispatch: %s", claims.describe_stale(stale))
    mv = model_version_of(profile)
    deadline = time.monotonic() + timeout_s
    counts: dict[str, int] = {}
    lost_all: list[str] = []
    pending0 = n_batches = rounds = 0
    left = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 - the last value is reported
        work = pending_work(rt, mv, limit, retry_failed)
        left = sum(len(w.items) for w in work)
        if rounds == 1:
            pending0 = left
        if not work:
            break
        batches = plan_batches(work, batch_size)
        n_batches += len(batches)
        msg = "dispatch: round %d: %d item(s) need model %s: %d batch run(s) on %s"
        log.info(msg, rounds, left, mv, len(batches), deployment)
        params = {"profile": profile, "settings_overrides": settings_overrides, "lease_s": lease}
        runs = _submit(deployment, batches, {**params, "retry_failed": retry_failed})
        if not wait:
            counts["SCHEDULED"] = counts.get("SCHEDULED", 0) + len(runs)
            break
        got, lost = _watch(runs, rt, mv, lease, poll_s, deadline)
        for k, v in got.items():
            counts[k] = counts.get(k, 0) + v
        lost_all += lost
        if not lost or "UNFINISHED" in got:  # done, or out of time: no new round
            left = sum(len(w.items) for w in pending_work(rt, mv, limit, retry_failed))
            break
    report = DispatchReport(
        model_version=mv,
        pending=pending0,
        batches=n_batches,
        rounds=rounds,
        runs=counts,
        lost_runs=tuple(lost_all),
        still_pending=left if wait else pending0,
        stale_claims=len(stale),
        seconds=time.perf_counter() - t0,
    )
    log.info("dispatch: %d batch run(s): %s; %d item(s) still pending", n_batches, counts, report.still_pending)
    return report


# --- deployments ----------------------------------------------------------------------------------------------------


def build_pool_deployments(
    profile: str = "tiny",
    settings_overrides: dict[str, Any] | None = None,
    batch_size: int = 16,
    lease_s: float | None = None,
) -> list[Any]:
    from prefect.deployments.runner import EntrypointType

    batch = predict_batch_flow.to_deployment(
        name=BATCH_DEPLOYMENT,
        parameters={"profile": profile, "settings_overrides": settings_overrides, "lease_s": lease_s},
        description="one batch of the model stage (claims its items; run by the pool's GPU workers)",
        tags=["geolabel"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    dispatch = dispatch_flow.to_deployment(
        name=DISPATCH_DEPLOYMENT,
        parameters={
            "profile": profile,
            "settings_overrides": settings_overrides,
            "batch_size": batch_size,
            "lease_s": lease_s,
        },
        description="cut the pending model work into predict-batch flow runs on the work pool",
        tags=["geolabel"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [batch, dispatch]


def ensure_pool(pool: str) -> bool:
    """Create the process work pool ``pool`` when it does not exist; returns whether it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return True


def deploy(pool: str = DEFAULT_POOL, **kw: Any) -> list[str]:
    """Register the batch and dispatch deployments on work pool ``pool`` (created as a process pool if missing)."""
    ensure_pool(pool)
    names = []
    for d in build_pool_deployments(**kw):
        d.apply(work_pool_name=pool)
        names.append(f"{d.flow_name}/{d.name}")
    return names
