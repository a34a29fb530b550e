"""``preannotate_flow``: GeoSeg on every item that has no prediction for the current model version.

* Work list: ``storage.repo.items_awaiting_prediction(model_version)`` (failed predictions too, with
  ``retry_failed``), grouped by image so each image is fetched and decoded once, packed into batches of about
  ``batch_size`` items; one Prefect task per batch.
* The model stage is limited: at most ``concurrency`` batches run the models at once in this process (a semaphore),
  and when a Prefect global concurrency limit named :data:`MODEL_CONCURRENCY_LIMIT` exists on the server, each batch
  also takes a slot there (that is how several workers on GPU nodes share one limit).
* Per-item failures (the model raised on that item, the image cannot be decoded) are stored as failed predictions
  with the error text and the batch goes on; infrastructure faults (database, blob store) fail the task, which Prefect
  retries (``retries``); a batch is written in one transaction, so a retry or a re-run never half-writes.
* Masks go to the blob store (``storage.maskcodec``), the prediction rows to the database
  (``repo.upsert_predictions``). Killed at any point and re-run, it predicts only what is missing.
* Exactly once across overlapping runs and workers (design §9): each batch claims its ``(item_id, model_version)``
  keys (``storage.claims.Lease``, kind ``"predict"``) before any model work, skips items another live run holds or
  has finished meanwhile, renews the lease while the models run, and releases the claims in the transaction that
  writes the predictions. A batch whose worker died is taken over ``lease_s`` seconds later; each run starts by
  removing (and logging) expired claims of crashed runs.

Models: ``profile`` is anything ``geoseg.registry.load_pipeline`` takes: "tiny", "paper", a profile file, a name
registered with ``geoseg.registry.register_pipeline`` in this process, or ``py:package.module:function`` naming a
zero-argument factory (resolved in whichever process runs the flow: deployments, workers). Benchmarks and tests use
the last two for orchestration-only pipelines. The stored score is ``GeoSegResult.score``. Tiny-model masks are
meaningless (``geoseg.types.TINY_MODEL_WARNING``); the report says so.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.logs import get_logger as _logger
from flows.prefect_server import publish_report, stage_progress
from flows.runtime import Runtime, open_runtime, settings_from
from geoseg.registry import load_pipeline, model_version_of
from storage.ingest import load_rgb
from storage.records import ImageWork, WorkItem  # noqa: F401 - re-exported (callers import them from here)

MODEL_CONCURRENCY_LIMIT = "geolabel-model"

_model_slots: dict[int, threading.BoundedSemaphore] = {}


@dataclass(frozen=True)
class BatchOutcome:
    predicted: int = 0
    failed: int = 0
    seconds_model: float = 0.0
    seconds_total: float = 0.0
    errors: tuple[tuple[int, str], ...] = ()
    skipped: int = 0  # claimed by another live run, or predicted by one since the work list was read
    taken_over: int = 0  # claims of a dead run taken over after their lease expired
    seconds_claim: float = 0.0  # the claim transaction (claim + verify)


@dataclass(frozen=True)
class PreannotateReport:
    model_version: str
    pending: int = 0
    predicted: int = 0
    failed: int = 0
    batches: int = 0
    seconds: float = 0.0
    seconds_model: float = 0.0  # summed over batches: time inside the pipeline (grounder, matcher, segmenter)
    meaningless: bool | None = None  # None: no model was loaded (nothing pending), so not known
    errors: tuple[tuple[int, str], ...] = field(default_factory=tuple)
    skipped: int = 0  # items another run held or finished (storage.claims)
    taken_over: int = 0  # items whose dead run's expired claim this run took over
    stale_claims: int = 0  # expired claims of crashed runs removed at the start

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_batches(images: list[ImageWork], batch_size: int) -> list[list[ImageWork]]:
    """Pack whole images into batches of about ``batch_size`` items (an image with more items is split)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: list[list[ImageWork]] = []
    cur: list[ImageWork] = []
    n = 0
    for img in images:
        items = list(img.items)
        while items:
            room = batch_size - n
            take, items = items[:room], items[room:]
            cur.append(ImageWork(img.image_id, img.sha256, img.uri, tuple(take)))
            n += len(take)
            if n >= batch_size:
                batches.append(cur)
                cur, n = [], 0
    if cur:
        batches.append(cur)
    return batches


def pending_work(rt: Runtime, model_version: str, limit: int | None, retry_failed: bool) -> list[ImageWork]:
    from storage import repo

    with rt.session() as s:
        return repo.pending_image_work(s, model_version, limit=limit, retry_failed=retry_failed)


def _load_rgb(rt: Runtime, work: ImageWork) -> Any:
    return load_rgb(rt, work.sha256, work.uri)


def global_limit_exists() -> bool:
    """Whether the Prefect API has the global concurrency limit :data:`MODEL_CONCURRENCY_LIMIT` (checked per run)."""
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            client.read_global_concurrency_limit_by_name(MODEL_CONCURRENCY_LIMIT)
        return True
    except Exception:  # noqa: BLE001 - not found, or no API: the local semaphore still limits this process
        return False


@contextlib.contextmanager
def model_slot(concurrency: int, use_global: bool = False):
    """Hold one of ``concurrency`` local model slots, and a server-side slot when the global limit exists."""
    sem = _model_slots.setdefault(concurrency, threading.BoundedSemaphore(concurrency))
    with sem:
        if use_global:
            from prefect.concurrency.sync import concurrency as global_concurrency

            cm = global_concurrency(MODEL_CONCURRENCY_LIMIT, occupy=1, strict=False)
        else:
            cm = contextlib.nullcontext()
        with cm:
            yield


def predict_batch(
    rt: Runtime,
    profile: str,
    batch: list[ImageWork],
    concurrency: int = 1,
    use_global: bool = False,
    *,
    lease_s: float | None = None,
    retry_failed: bool = True,
) -> BatchOutcome:
    """Claim the batch's items, run the pipeline on the ones this run holds, and store masks + predictions with the
    claims released in one transaction (see the module docstring)."""
    from storage import claims

    t_start = time.perf_counter()
    pipeline = load_pipeline(profile)
    mv = pipeline.model_version
    keys = [(it.item_id, mv) for work in batch for it in work.items]
    with claims.Lease(
        rt.engine,
        "predict",
        keys,
        ttl_s=claims.DEFAULT_TTL_S if lease_s is None else lease_s,
        verify=claims.unpredicted(mv, retry_failed=retry_failed),
    ) as lease:
        held = {k[0] for k in lease.held}
        mine = [ImageWork(w.image_id, w.sha256, w.uri, tuple(i for i in w.items if i.item_id in held)) for w in batch]
        out = _predict_held(rt, pipeline, [w for w in mine if w.items], concurrency, use_global, lease)
    return BatchOutcome(
        predicted=out.predicted,
        failed=out.failed,
        seconds_model=out.seconds_model,
        seconds_total=time.perf_counter() - t_start,
        errors=out.errors,
        skipped=len(lease.skipped) + len(lease.done),
        taken_over=len(lease.taken_over),
        seconds_claim=lease.claim_seconds,
    )


def _predict_held(
    rt: Runtime, pipeline: Any, batch: list[ImageWork], concurrency: int, use_global: bool, lease: Any
) -> BatchOutcome:
    """The model work on the claimed items; predictions written with ``lease`` released in the same transaction."""
    from storage import repo
    from storage.maskcodec import encode_mask
    from storage.records import PredictionRecord

    if not batch:  # every item is held or done by another run: no model slot taken
        return BatchOutcome()
    t_start = time.perf_counter()
    mv = pipeline.model_version
    records: list[PredictionRecord] = []
    errors: list[tuple[int, str]] = []
    inputs: list[tuple[int, Any, str]] = []
    for work in batch:
        try:
            rgb = _load_rgb(rt, work)
        except Exception as exc:  # per-image fault: each of its items gets the error, the batch goes on
            for it in work.items:
                records.append(PredictionRecord.failure(it.item_id, mv, f"image {work.uri}: {exc}"))
                errors.append((it.item_id, f"{type(exc).__name__}: {exc}"))
            continue
        inputs.extend((it.item_id, rgb, it.query) for it in work.items)
    with model_slot(concurrency, use_global):
        t_model = time.perf_counter()  # inside the slot: waiting for a slot is not model time
        results = list(pipeline.run_batch(inputs, batch_size=max(1, len(inputs)))) if inputs else []
        seconds_model = time.perf_counter() - t_model if inputs else 0.0
    masks: list[bytes] = []
    ok: list[tuple[int, Any]] = []
    for item_id, res in results:
        if isinstance(res, Exception):
            records.append(PredictionRecord.failure(int(item_id), mv, res))
            errors.append((int(item_id), f"{type(res).__name__}: {res}"))
        else:  # the fused mask and both route masks (geolabel calibrate re-fuses them offline)
            masks.extend(encode_mask(m) if m is not None else b"" for m in (res.mask, res.mask_point, res.mask_text))
            ok.append((int(item_id), res))
    shas = rt.blobs.put_many([m for m in masks if m]) if masks else []
    it_sha = iter(shas)
    per = [next(it_sha) if m else None for m in masks]
    for k, (item_id, res) in enumerate(ok):
        sha, pt, txt = per[3 * k : 3 * k + 3]
        records.append(PredictionRecord.from_result(item_id, res, mask_sha256=sha, score=res.score,
                                                    point_mask_sha256=pt, text_mask_sha256=txt))
    with rt.session() as s:
        repo.upsert_predictions(s, records)
        lease.release_in(s)  # the claims go with the results: both committed or neither
    return BatchOutcome(
        predicted=len(ok),
        failed=len(errors),
        seconds_model=seconds_model,
        seconds_total=time.perf_counter() - t_start,
        errors=tuple(errors),
    )


@task(name="predict-batch", retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def predict_batch_task(
    settings_overrides: dict[str, Any] | None,
    profile: str,
    batch: list[ImageWork],
    concurrency: int,
    use_global: bool = False,
    lease_s: float | None = None,
    retry_failed: bool = True,
) -> BatchOutcome:
    rt = open_runtime(settings_from(settings_overrides))
    return predict_batch(rt, profile, batch, concurrency, use_global, lease_s=lease_s, retry_failed=retry_failed)


@flow(name="preannotate", log_prints=True)
def preannotate_flow(
    profile: str = "tiny",
    settings_overrides: dict[str, Any] | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    concurrency: int = 1,
    retry_failed: bool = True,
    lease_s: float | None = None,
) -> PreannotateReport:
    """Predict every item without a prediction for ``profile``'s model version (see the module docstring).

    ``lease_s``: the claim lease per batch (default ``storage.claims.DEFAULT_TTL_S``; renewed while a batch runs, so
    it only bounds how long a dead worker's batch waits before another run takes it over)."""
    from geoseg.types import TINY_MODEL_WARNING
    from storage import claims

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if lease_s is not None:
        claims.check_ttl(lease_s)
    log = _logger()
    t0 = time.perf_counter()
    rt = open_runtime(settings_from(settings_overrides))
    stale = claims.sweep(rt.engine, ["predict"])
    if stale:
        log.warning("preannotate: %s", claims.describe_stale(stale))
    mv = model_version_of(profile)
    work = pending_work(rt, mv, limit, retry_failed)
    pending = sum(len(w.items) for w in work)
    batches = plan_batches(work, batch_size)
    log.info("preannotate: %d item(s) on %d image(s) need model %s: %d batch(es)", pending, len(work), mv, len(batches))
    meaningless = None
    if pending:
        meaningless = load_pipeline(profile).meaningless
        if meaningless:
            log.warning("preannotate: %s", TINY_MODEL_WARNING)
    use_global = bool(batches) and global_limit_exists()
    if use_global:
        log.info(
            "preannotate: each batch also takes a slot of the global concurrency limit %r", MODEL_CONCURRENCY_LIMIT
        )
    futures = [
        predict_batch_task.submit(settings_overrides, profile, b, concurrency, use_global, lease_s, retry_failed)
        for b in batches
    ]
    predicted = failed = skipped = taken_over = 0
    seconds_model = 0.0
    errors: list[tuple[int, str]] = []
    progress = stage_progress("preannotate", len(futures))  # a progress artifact, one step per batch
    for f in futures:
        out = f.result()
        progress.advance()
        seconds_model += out.seconds_model
        predicted += out.predicted
        failed += out.failed
        skipped += out.skipped
        taken_over += out.taken_over
        errors.extend(out.errors)
    for item_id, msg in errors[:20]:
        log.warning("preannotate: item %d failed: %s", item_id, msg)
    if skipped:
        log.info("preannotate: %d item(s) skipped: another run holds or has just predicted them", skipped)
    if taken_over:
        log.warning("preannotate: took over %d item(s) from a run whose lease expired (killed or lost)", taken_over)
    report = PreannotateReport(
        model_version=mv,
        pending=pending,
        predicted=predicted,
        failed=failed,
        batches=len(batches),
        seconds=time.perf_counter() - t0,
        seconds_model=seconds_model,
        meaningless=meaningless,
        errors=tuple(errors),
        skipped=skipped,
        taken_over=taken_over,
        stale_claims=len(stale),
    )
    log.info("preannotate: %d predicted, %d failed in %.1f s", predicted, failed, report.seconds)
    publish_report("preannotate", report)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return report
