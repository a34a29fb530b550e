"""``geolabel export coco``, ``geolabel snapshot create|list|verify``, ``geolabel evaluate``, ``geolabel quality``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

export_app = typer.Typer(help="Export verified triplets as datasets.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Immutable, versioned benchmark snapshots.", no_args_is_help=True)

_DOMAIN = typer.Option(None, "--domain", help="Keep this domain (repeatable).")
_LEVEL = typer.Option(None, "--level", help="Keep this level: L1, L2 or L3 (repeatable).")
_SINCE = typer.Option(None, "--since", help="Triplets created at or after this ISO date/time (UTC if no zone).")
_UNTIL = typer.Option(None, "--until", help="Triplets created before this ISO date/time (UTC if no zone).")
_MV = typer.Option(None, "--model-version", help="Only triplets whose pre-label came from this model version.")


def _pairs(values: list[str] | None, what: str) -> dict[str, float] | None:
    if not values:
        return None
    out: dict[str, float] = {}
    for v in values:
        key, sep, num = v.partition("=")
        try:
            if not sep or not key.strip():
                raise ValueError
            out[key.strip()] = float(num)
        except ValueError:
            raise typer.BadParameter(f"{what} must look like NAME=NUMBER, got {v!r}") from None
    return out


_MIN_AGREEMENT = typer.Option(None, "--min-agreement", help="Only items whose annotators agree at least this much "
                              "(0-1; single-annotator items have no agreement; adjudicated items pass).")
_MIN_ANNOTATORS = typer.Option(None, "--min-annotators", help="Only items decided by at least this many annotators.")

def _echo_json(obj: object) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@export_app.command("coco")
def export_coco_cmd(
    out: Path = typer.Argument(..., help="Output directory (instances.json, and images/ on request)."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="Only the members of snapshot NAME[@VERSION]."),
    domain: list[str] | None = _DOMAIN,
    level: list[str] | None = _LEVEL,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    model_version: str | None = _MV,
    images: str = typer.Option("none", "--images", help="none | copy | link: put the images beside the JSON."),
    min_agreement: float | None = _MIN_AGREEMENT,
    min_annotators: int | None = _MIN_ANNOTATORS,
) -> None:
    """Write OUT/instances.json: COCO RLE annotations, RefCOCO-style refs, and a no_target list."""
    from flows.datasets import export_flow, make_filter

    if images not in ("none", "copy", "link"):
        raise typer.BadParameter("must be none, copy or link", param_hint="--images")
    make_filter(snapshot, domain, level, since, until, model_version, min_agreement, min_annotators)  # fail early
    summary = export_flow(str(out), snapshot=snapshot, domains=domain, levels=level, since=since, until=until,
                          model_version=model_version, images=images, min_agreement=min_agreement,
                          min_annotators=min_annotators)
    _echo_json(summary)


@snapshot_app.command("create")
def snapshot_create(
    name: str = typer.Argument(..., help="Snapshot name; each create makes its next version (1, 2, ...)."),
    domain: list[str] | None = _DOMAIN,
    level: list[str] | None = _LEVEL,
    since: str | None = _SINCE,
    until: str | None = _UNTIL,
    model_version: str | None = _MV,
    stratify: bool = typer.Option(False, "--stratify", help="Draw to GeoSeg-Bench's domain/level proportions."),
    total: int | None = typer.Option(None, "--total", help="Snapshot size when stratifying (default 810)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the stratified draw."),
    domain_target: list[str] | None = typer.Option(None, "--domain-target", help="e.g. Urban=330 (repeatable)."),
    level_target: list[str] | None = typer.Option(None, "--level-target", help="e.g. L1=0.6 (repeatable)."),
    allow_shortfall: bool = typer.Option(False, "--allow-shortfall", help="Take what there is in short cells."),
    limit: int | None = typer.Option(None, "--limit", help="Without stratification: the first N triplets."),
    out_root: Path | None = typer.Option(None, "--out-root", help="Where snapshots live (default DATA_DIR/snapshots)."),
    description: str | None = typer.Option(None, "--description"),
    min_agreement: float | None = _MIN_AGREEMENT,
    min_annotators: int | None = _MIN_ANNOTATORS,
) -> None:
    """Freeze the selected accepted triplets as the next version of NAME, in GeoSeg-Bench layout + manifest."""
    from flows.datasets import make_filter, snapshot_flow

    make_filter(None, domain, level, since, until, model_version, min_agreement, min_annotators)  # fail early
    info = snapshot_flow(name, out_root=str(out_root) if out_root else None, domains=domain, levels=level,
                         since=since, until=until, model_version=model_version, stratify=stratify, total=total,
                         seed=seed, domain_targets=_pairs(domain_target, "--domain-target"),
                         level_targets=_pairs(level_target, "--level-target"), allow_shortfall=allow_shortfall,
                         limit=limit, description=description, min_agreement=min_agreement,
                         min_annotators=min_annotators)
    _echo_json(info)


@snapshot_app.command("list")
def snapshot_list() -> None:
    """List snapshots: name, version, members, created."""
    import sqlalchemy as sa

    from flows.runtime import open_runtime
    from storage.models import Snapshot, SnapshotMember

    rt = open_runtime()
    with rt.session() as s:
        q = (sa.select(Snapshot.name, Snapshot.version, Snapshot.created_at, sa.func.count(SnapshotMember.id))
             .join(SnapshotMember, SnapshotMember.snapshot_id == Snapshot.id)
             .group_by(Snapshot.id).order_by(Snapshot.name, Snapshot.id))
        rows = s.execute(q).all()
    if not rows:
        typer.echo("no snapshots yet: geolabel snapshot create NAME")
    for name, version, created, n in rows:
        typer.echo(f"{name}@{version}\t{n} triplets\t{created.isoformat()}")


@snapshot_app.command("verify")
def snapshot_verify(target: str = typer.Argument(..., help="A snapshot directory.")) -> None:
    """Re-hash every file of a snapshot directory against its manifest."""
    from storage.datasets.snapshot import verify_snapshot

    problems = verify_snapshot(Path(target))
    if problems:
        for p in problems:
            typer.echo(p, err=True)
        raise typer.Exit(1)
    typer.echo(f"{target}: intact")


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
    app.add_typer(snapshot_app, name="snapshot")

    @app.command("evaluate")
    def evaluate_cmd(
        benchmark: str = typer.Option(..., "--benchmark", help="A benchmark directory or a snapshot NAME[@VERSION]."),
        profile: str = typer.Option("tiny", "--profile", help="tiny | paper | a .toml/.json profile file."),
        ablations: bool = typer.Option(False, "--ablations", help="Also the Table 3 rows (w/o refine, A, B)."),
        out: Path = typer.Option(Path("evaluation"), "--out", help="Report directory."),
        limit: int | None = typer.Option(None, "--limit", help="Only the first N samples."),
        cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Result cache (default OUT/cache)."),
        judge: str | None = typer.Option(None, "--judge",
                                         help="MLLM judge: tiny | transformers:MODEL | openai:MODEL@URL[#KEY_ENV]."),
        judge_limit: int | None = typer.Option(20, "--judge-limit", help="Judge at most N samples."),
        quality: bool | None = typer.Option(None, "--quality/--no-quality",
                                            help="Pre-label quality table (default: for snapshots)."),
    ) -> None:
        """Score a pipeline profile on a benchmark: CSV, Markdown, plots, gallery and an HTML report."""
        from flows.datasets import evaluate_flow, resolve_benchmark
        from geoseg.profiles import load_profile
        from geoseg.types import TINY_MODEL_WARNING

        load_profile(profile)  # a bad profile or benchmark fails here, before the flow starts
        bench, is_snapshot = resolve_benchmark(benchmark)
        if quality is None:
            quality = is_snapshot
        summary = evaluate_flow(str(bench.root), profile=profile, out_dir=str(out), ablations=ablations,
                                cache_dir=str(cache_dir) if cache_dir else None, limit=limit, judge=judge,
                                judge_limit=judge_limit, quality=quality)
        _echo_json(summary)
        if summary.get("meaningless"):
            typer.echo(f"note: {TINY_MODEL_WARNING}", err=True)

    @app.command("quality")
    def quality_cmd(
        model_version: str | None = _MV,
        consensus: bool = typer.Option(False, "--consensus", help="Annotator agreement per domain x level and per "
                                       "annotator (IoU against consensus) instead of pre-label quality."),
    ) -> None:
        """Pre-label quality per model version: acceptance, IoU vs accepted mask, unchanged share, lead time."""
        from flows.runtime import open_runtime
        from storage.datasets.quality import consensus_quality, prelabel_quality

        rt = open_runtime()
        with rt.session() as s:
            if consensus:
                _echo_json(consensus_quality(s))
                return
            rows = [q.row() for q in prelabel_quality(s, rt.blobs, model_version=model_version)]
        if not rows:
            typer.echo("no annotations yet")
        _echo_json(rows)
