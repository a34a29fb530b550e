"""Datasets out, as Prefect flows that only orchestrate (the work is in storage.datasets and geoseg.evaluation):

- ``export_flow``: COCO ``instances.json`` of verified triplets (filters, images copied or linked);
- ``snapshot_flow``: a new immutable version of a benchmark snapshot (optionally stratified), with its directory;
- ``evaluate_flow``: a pipeline profile (and its Table 3 ablations) on a benchmark directory or a snapshot, then the
  report (CSV, Markdown, plots, gallery, HTML), optionally with MLLM-judge scores and pre-label quality.

Parameters are JSON-able (deployments serialise them); settings come from ``settings_overrides`` + the environment.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.logs import get_logger
from flows.prefect_server import publish_report
from flows.runtime import open_runtime, settings_from


def _when(value: str | datetime | None, name: str) -> datetime | None:
    """An ISO date/time; a date or naive time is read as UTC."""
    from datetime import UTC

    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value))
        except ValueError:
            raise ValueError(f"{name} must be an ISO date or date-time (e.g. 2026-01-31), got {value!r}") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def make_filter(snapshot: str | None = None, domains: list[str] | None = None, levels: list[str] | None = None,
                since: str | None = None, until: str | None = None, model_version: str | None = None,
                min_agreement: float | None = None, min_annotators: int | None = None):
    from storage.datasets.select import DatasetFilter

    return DatasetFilter(snapshot=snapshot or None, domains=tuple(domains or ()), levels=tuple(levels or ()),
                         since=_when(since, "since"), until=_when(until, "until"), model_version=model_version or None,
                         min_agreement=min_agreement, min_annotators=min_annotators)


def snapshots_root(settings: Any, out_root: str | None = None) -> Path:
    return Path(out_root) if out_root else Path(settings.data_dir) / "snapshots"


# --- export -----------------------------------------------------------------------------------------------------------


def check_export_dir(out_dir: str | Path) -> None:
    """An export goes into a missing or empty folder, or replaces an earlier export (a folder with instances.json);
    any other non-empty folder is refused, so nothing of the user's is deleted."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"export folder {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not (out / "instances.json").is_file():
        raise ValueError(f"export folder {out} is not empty and holds no earlier export: choose an empty folder")


def replace_dir(staged: Path, out: Path) -> None:
    """Put ``staged`` where ``out`` is (the earlier export, stale files included, is removed after the swap)."""
    import shutil
    import tempfile

    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-")) / "export"
    if out.exists():
        out.rename(old)
    staged.rename(out)
    shutil.rmtree(old.parent, ignore_errors=True)


@task(name="export-coco", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def export_coco_task(settings_overrides: dict[str, Any] | None, out_dir: str, filters: Any, images: str) -> dict:
    """Export into a staging folder beside ``out_dir``, then swap it in: no stale file of an earlier export stays."""
    import shutil
    import tempfile

    from storage.datasets.coco import export_coco

    check_export_dir(out_dir)
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))  # unique: two exports at once
    staged = work / "export"
    rt = open_runtime(settings_from(settings_overrides))
    try:
        with rt.session() as s:
            summary = export_coco(s, rt.blobs, staged, filters, images=images).summary()
        replace_dir(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {k: (str(v).replace(str(staged), str(out)) if isinstance(v, str | Path) else v) for k, v in summary.items()}


@flow(name="export-coco", log_prints=True)
def export_flow(
    out_dir: str,
    settings_overrides: dict[str, Any] | None = None,
    snapshot: str | None = None,
    domains: list[str] | None = None,
    levels: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    model_version: str | None = None,
    images: str = "none",
    min_agreement: float | None = None,
    min_annotators: int | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/instances.json`` (COCO + refs + no_target) for the selected triplets."""
    from flows.serve import note_overlap

    note_overlap()  # a deployment run says so when another export is still working, or it waited for one
    f = make_filter(snapshot, domains, levels, since, until, model_version, min_agreement, min_annotators)
    summary = export_coco_task(settings_overrides, out_dir, f, images)
    get_logger().info(
        "COCO export: %(annotations)d annotations, %(images)d images, %(no_target)d no-target -> %(path)s", summary
    )
    publish_report("export-coco", summary)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return summary


# --- snapshots --------------------------------------------------------------------------------------------------------


@task(name="create-snapshot", cache_policy=NO_CACHE)
def create_snapshot_task(settings_overrides: dict[str, Any] | None, name: str, root: str, filters: Any,
                         stratify: Any, limit: int | None, description: str | None) -> dict:
    from storage.datasets.snapshot import create_snapshot

    rt = open_runtime(settings_from(settings_overrides))
    with rt.session() as s:
        info = create_snapshot(s, rt.blobs, name, root, filters=filters, stratify=stratify, limit=limit,
                               description=description)
    return {"name": info.name, "version": info.version, "ref": info.ref, "path": str(info.path),
            "triplets": info.n_triplets, "counts": info.counts, "shortfall": info.shortfall,
            "members_sha256": info.manifest_sha256}


@flow(name="snapshot-create", log_prints=True)
def snapshot_flow(
    name: str,
    settings_overrides: dict[str, Any] | None = None,
    out_root: str | None = None,
    domains: list[str] | None = None,
    levels: list[str] | None = None,
    since: str | None = None,
    until: str | None = None,
    model_version: str | None = None,
    stratify: bool = False,
    total: int | None = None,
    seed: int = 0,
    domain_targets: dict[str, float] | None = None,
    level_targets: dict[str, float] | None = None,
    allow_shortfall: bool = False,
    limit: int | None = None,
    description: str | None = None,
    min_agreement: float | None = None,
    min_annotators: int | None = None,
) -> dict[str, Any]:
    """Create the next version of snapshot ``name`` (GeoSeg-Bench targets by default when ``stratify``)."""
    from storage.datasets.snapshot import GEOSEG_BENCH_DOMAINS, GEOSEG_BENCH_LEVELS, Stratification

    settings = settings_from(settings_overrides)
    f = make_filter(None, domains, levels, since, until, model_version, min_agreement, min_annotators)
    strat = None
    if stratify or domain_targets or level_targets or total is not None:
        strat = Stratification(domains=domain_targets or GEOSEG_BENCH_DOMAINS,
                               levels=level_targets or GEOSEG_BENCH_LEVELS, total=total, seed=seed,
                               allow_shortfall=allow_shortfall)
    info = create_snapshot_task(settings_overrides, name, str(snapshots_root(settings, out_root)), f, strat, limit,
                                description)
    get_logger().info("snapshot %(ref)s: %(triplets)d triplets -> %(path)s", info)
    publish_report("snapshot", info)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return info


# --- evaluation -------------------------------------------------------------------------------------------------------


def resolve_benchmark(benchmark: str, settings_overrides: dict[str, Any] | None = None,
                      snapshots_dir: str | None = None) -> tuple[Any, bool]:
    """A benchmark directory (GeoSeg-Bench or EarthReason layout) or a snapshot ``NAME[@VERSION]`` from the
    database (its directory re-written when absent). Returns (Benchmark, is_snapshot)."""
    from geoseg.evaluation.bench import read_benchmark
    from storage.datasets.snapshot import MANIFEST, read_snapshot, resolve_snapshot_dir

    p = Path(benchmark).expanduser()
    if p.is_dir():
        return (read_snapshot(p) if (p / MANIFEST).is_file() else read_benchmark(p)), False
    if "/" in benchmark or "\\" in benchmark:
        raise ValueError(f"benchmark {benchmark!r} is not a directory (and not a snapshot NAME[@VERSION])")
    settings = settings_from(settings_overrides)
    rt = open_runtime(settings)
    with rt.session() as s:
        path = resolve_snapshot_dir(s, rt.blobs, benchmark, snapshots_root(settings, snapshots_dir))
    return read_snapshot(path), True


@task(name="evaluate-config", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def evaluate_task(pipeline: Any, bench: Any, cache_dir: str, label: str) -> Any:
    from geoseg.evaluation.harness import evaluate

    log = get_logger()
    step = max(1, len(bench) // 10)

    def progress(i: int, n: int, o: Any) -> None:
        if i % step == 0 or i == n:
            log.info("%s: %d/%d samples (last IoU %.3f%s)", label, i, n, o.metrics["iou"],
                     ", cached" if o.cached else "")

    return evaluate(pipeline, bench, Path(cache_dir), label=label, progress=progress)


@task(name="judge", cache_policy=NO_CACHE)
def judge_task(run: Any, judge: str, limit: int | None) -> list[dict]:
    from geoseg.evaluation.judge import aggregate_judgements, judge_run
    from geoseg.grounding import build_grounder

    spec = parse_judge_spec(judge)
    records = judge_run(run, build_grounder(spec), limit=limit, model=spec.model or spec.kind)
    return aggregate_judgements(records)


@task(name="prelabel-quality", cache_policy=NO_CACHE)
def quality_task(settings_overrides: dict[str, Any] | None) -> list[dict]:
    from storage.datasets.quality import prelabel_quality

    rt = open_runtime(settings_from(settings_overrides))
    with rt.session() as s:
        return [q.row() for q in prelabel_quality(s, rt.blobs)]


def parse_judge_spec(judge: str):
    """``tiny`` | ``transformers:MODEL`` | ``openai:MODEL@BASE_URL[#API_KEY_ENV]`` -> a grounder BackendSpec."""
    from geoseg.types import BackendSpec

    kind, _, rest = judge.partition(":")
    if kind == "tiny" and not rest:
        return BackendSpec("tiny")
    if kind == "transformers" and rest:
        return BackendSpec("transformers", rest)
    if kind == "openai" and "@" in rest:
        model, _, url = rest.partition("@")
        url, _, key_env = url.partition("#")
        opts: dict[str, Any] = {"base_url": url}
        if key_env:
            opts["api_key_env"] = key_env
        return BackendSpec("openai", model, opts)
    raise ValueError(f"judge must be tiny, transformers:MODEL or openai:MODEL@BASE_URL[#API_KEY_ENV], got {judge!r}")


@flow(name="evaluate", log_prints=True)
def evaluate_flow(
    benchmark: str,
    profile: str = "tiny",
    out_dir: str = "evaluation",
    ablations: bool = False,
    cache_dir: str | None = None,
    limit: int | None = None,
    judge: str | None = None,
    judge_limit: int | None = 20,
    quality: bool | None = None,
    settings_overrides: dict[str, Any] | None = None,
    snapshots_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``profile`` (and, with ``ablations``, its Table 3 rows) on ``benchmark``; write the report.

    ``quality`` adds the pre-label quality table from the database (default: when the benchmark is a snapshot).
    """
    from geoseg.evaluation.report import write_report
    from geoseg.pipeline import GeoSegPipeline
    from geoseg.profiles import load_profile
    from geoseg.types import ABLATIONS, TINY_MODEL_WARNING

    log = get_logger()
    bench, is_snapshot = resolve_benchmark(benchmark, settings_overrides, snapshots_dir)
    if limit is not None:
        bench = bench.subset(limit=limit)
    config = load_profile(profile)
    base = GeoSegPipeline(config)
    cache = cache_dir or str(Path(out_dir) / "cache")
    names = list(ABLATIONS) if ablations else ["full"]
    runs = {}
    for name in names:
        pipe = base if name == "full" else base.with_config(config.ablation(name))
        runs[name] = evaluate_task(pipe, bench, cache, name)
        if name == "full":
            base = pipe  # models were built by the first run; the ablations share them
    judge_rows = judge_task(runs["full"], judge, judge_limit) if judge else None
    quality_rows = quality_task(settings_overrides) if (quality if quality is not None else is_snapshot) else None
    files = write_report(out_dir, runs, quality=quality_rows or None, judge=judge_rows or None,
                         title=f"GeoSeg evaluation: {bench.name} ({profile})")
    overall = runs["full"].aggregate()[("all",)]
    if runs["full"].meaningless:
        log.warning(TINY_MODEL_WARNING)
    summary = {
        "benchmark": bench.name, "samples": len(bench), "profile": profile,
        "model_version": runs["full"].model_version, "miou": overall["mean_iou"], "ciou": overall["ciou"],
        "errors": runs["full"].n_errors, "report": str(files.html), "markdown": str(files.markdown),
        "runs": {n: {"miou": r.aggregate()[("all",)]["mean_iou"], "ciou": r.aggregate()[("all",)]["ciou"],
                     "model_version": r.model_version, "cached": r.n_cached} for n, r in runs.items()},
        "meaningless": runs["full"].meaningless,
    }
    log.info("evaluate %s on %s: mIoU %.3f, cIoU %.3f -> %s", profile, bench.name, summary["miou"], summary["ciou"],
             files.html)
    publish_report("evaluate", summary)  # the run's artifacts in the Prefect UI (flows.prefect_server)
    return summary
