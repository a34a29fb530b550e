"""``geolabel export coco``, ``geolabel snapshot create|list|verify``, ``geolabel evaluate``, ``geolabel quality``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DataDir, Json, overrides_for, print_json, runtime_for, settings_for, tiny_note

export_app = typer.Typer(help="Export verified triplets as datasets.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Immutable, versioned benchmark snapshots.", no_args_is_help=True)
app = typer.Typer()
app.add_typer(export_app, name="export")
app.add_typer(snapshot_app, name="snapshot")

Domains = Annotated[
    list[str] | None, typer.Option("--domain", help="Keep this domain (repeatable).", show_default=False)
]
Levels = Annotated[
    list[str] | None, typer.Option("--level", help="Keep this level: L1, L2 or L3 (repeatable).", show_default=False)
]
Since = Annotated[
    str | None,
    typer.Option("--since", help="Triplets created at or after this ISO date/time (UTC if no zone).",
                 show_default=False),
]
Until = Annotated[
    str | None,
    typer.Option("--until", help="Triplets created before this ISO date/time (UTC if no zone).", show_default=False),
]
ModelVersion = Annotated[
    str | None,
    typer.Option("--model-version", help="Only triplets whose pre-label came from this model version.",
                 show_default=False),
]
SnapshotRef = Annotated[
    str | None,
    typer.Option("--snapshot", help="Only the members of snapshot NAME[@VERSION].", show_default=False),
]
MinAgreement = Annotated[
    float | None,
    typer.Option("--min-agreement", help="Only items whose annotators agree at least this much (0-1; single-annotator "
                 "items have no agreement; adjudicated items pass).", show_default=False),
]
MinAnnotators = Annotated[
    int | None,
    typer.Option("--min-annotators", help="Only items decided by at least this many annotators.", show_default=False),
]


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


@export_app.command("coco")
def export_coco_cmd(
    out: Annotated[Path, typer.Argument(help="Output folder (instances.json, and images/ on request); an earlier "
                                             "export there is replaced, any other non-empty folder refused.")],
    snapshot: SnapshotRef = None,
    domain: Domains = None,
    level: Levels = None,
    since: Since = None,
    until: Until = None,
    model_version: ModelVersion = None,
    images: Annotated[str, typer.Option("--images", help="none | copy | link: put the images beside the JSON.")] = (
        "none"
    ),
    min_agreement: MinAgreement = None,
    min_annotators: MinAnnotators = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Write OUT/instances.json: COCO RLE annotations, RefCOCO-style refs, and a no_target list."""
    from flows.datasets import check_export_dir, export_flow, make_filter

    if images not in ("none", "copy", "link"):
        raise typer.BadParameter("must be none, copy or link", param_hint="--images")
    make_filter(snapshot, domain, level, since, until, model_version, min_agreement, min_annotators)  # fail early
    check_export_dir(out)
    summary = export_flow(str(out), settings_overrides=overrides_for(data_dir), snapshot=snapshot, domains=domain,
                          levels=level, since=since, until=until, model_version=model_version, images=images,
                          min_agreement=min_agreement, min_annotators=min_annotators)
    if as_json:
        print_json(summary)
        return
    typer.echo(f"{summary['path']}: {summary['annotations']} annotation(s) on {summary['images']} image(s), "
               f"{summary['no_target']} no-target, {summary['skipped']} skipped")


@snapshot_app.command("create")
def snapshot_create(
    name: Annotated[str, typer.Argument(help="Snapshot name; each create makes its next version (1, 2, ...).")],
    domain: Domains = None,
    level: Levels = None,
    since: Since = None,
    until: Until = None,
    model_version: ModelVersion = None,
    stratify: Annotated[
        bool, typer.Option("--stratify", help="Draw to GeoSeg-Bench's domain/level proportions.")
    ] = False,
    total: Annotated[
        int | None, typer.Option("--total", help="Snapshot size when stratifying (default 810).", show_default=False)
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the stratified draw.")] = 0,
    domain_target: Annotated[
        list[str] | None, typer.Option("--domain-target", help="e.g. Urban=330 (repeatable).", show_default=False)
    ] = None,
    level_target: Annotated[
        list[str] | None, typer.Option("--level-target", help="e.g. L1=0.6 (repeatable).", show_default=False)
    ] = None,
    allow_shortfall: Annotated[
        bool, typer.Option("--allow-shortfall", help="Take what there is in short cells.")
    ] = False,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Without stratification: the first N triplets (default: all).",
                     show_default=False),
    ] = None,
    out_root: Annotated[
        Path | None,
        typer.Option("--out-root", help="Where snapshots live (default DATA_DIR/snapshots).", show_default=False),
    ] = None,
    description: Annotated[
        str | None, typer.Option("--description", help="Free text kept in the manifest.", show_default=False)
    ] = None,
    min_agreement: MinAgreement = None,
    min_annotators: MinAnnotators = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Freeze the selected accepted triplets as the next version of NAME, in GeoSeg-Bench layout + manifest."""
    from flows.datasets import make_filter, snapshot_flow

    make_filter(None, domain, level, since, until, model_version, min_agreement, min_annotators)  # fail early
    info = snapshot_flow(name, settings_overrides=overrides_for(data_dir), out_root=str(out_root) if out_root else None,
                         domains=domain, levels=level, since=since, until=until, model_version=model_version,
                         stratify=stratify, total=total, seed=seed,
                         domain_targets=_pairs(domain_target, "--domain-target"),
                         level_targets=_pairs(level_target, "--level-target"), allow_shortfall=allow_shortfall,
                         limit=limit, description=description, min_agreement=min_agreement,
                         min_annotators=min_annotators)
    if as_json:
        print_json(info)
        return
    typer.echo(f"snapshot {info['ref']}: {info['triplets']} triplet(s) -> {info['path']}")


@snapshot_app.command("list")
def snapshot_list(data_dir: DataDir = None, as_json: Json = False) -> None:
    """List snapshots: name, version, members, created."""
    from storage.repo.snapshots import list_snapshots

    rt = runtime_for(data_dir)
    with rt.session() as s:
        rows = list_snapshots(s)
    if as_json:
        print_json([{"ref": f"{n}@{v}", "name": n, "version": v, "triplets": k, "created_at": c}
                    for n, v, c, k in rows])
        return
    if not rows:
        typer.echo("no snapshots yet: geolabel snapshot create NAME")
    for name, version, created, n in rows:
        typer.echo(f"{name}@{version}\t{n} triplets\t{created.isoformat()}")


def snapshot_dir(target: str, data_dir: Path | None, out_root: Path | None = None) -> Path:
    """A snapshot directory, or the directory of snapshot NAME[@VERSION] (re-written from the database if absent)."""
    from flows.datasets import snapshots_root
    from storage.datasets.snapshot import resolve_snapshot_dir

    p = Path(target).expanduser()
    if p.is_dir() or "/" in target or "\\" in target:
        return p
    rt = runtime_for(data_dir)
    with rt.session() as s:
        return resolve_snapshot_dir(s, rt.blobs, target, snapshots_root(settings_for(data_dir), out_root))


@snapshot_app.command("verify")
def snapshot_verify(
    target: Annotated[str, typer.Argument(help="A snapshot NAME[@VERSION] or a snapshot directory.")],
    out_root: Annotated[
        Path | None,
        typer.Option("--out-root", help="Where snapshots live (default DATA_DIR/snapshots).", show_default=False),
    ] = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Re-hash every file of a snapshot against its manifest."""
    from storage.datasets.snapshot import verify_snapshot

    path = snapshot_dir(target, data_dir, out_root)
    problems = verify_snapshot(path)
    if as_json:
        print_json({"path": str(path), "intact": not problems, "problems": problems})
    else:
        for p in problems:
            typer.echo(p, err=True)
        if not problems:
            typer.echo(f"{path}: intact")
    if problems:
        raise typer.Exit(1)


@app.command("evaluate")
def evaluate_cmd(
    benchmark: Annotated[
        str, typer.Option("--benchmark", help="A benchmark directory or a snapshot NAME[@VERSION].")
    ],
    profile: Annotated[str, typer.Option("--profile", "-p", help="tiny | paper | a .toml/.json profile file.")] = (
        "tiny"
    ),
    ablations: Annotated[bool, typer.Option("--ablations", help="Also the Table 3 rows (w/o refine, A, B).")] = False,
    out: Annotated[Path, typer.Option("--out", help="Report directory.")] = Path("evaluation"),
    limit: Annotated[
        int | None, typer.Option("--limit", help="Only the first N samples (default: all).", show_default=False)
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option("--cache-dir", help="Result cache (default OUT/cache).", show_default=False)
    ] = None,
    judge: Annotated[
        str | None,
        typer.Option("--judge", help="MLLM judge: tiny | transformers:MODEL | openai:MODEL@URL[#KEY_ENV] "
                                     "(default: none).", show_default=False),
    ] = None,
    judge_limit: Annotated[int | None, typer.Option("--judge-limit", help="Judge at most N samples.")] = 20,
    quality: Annotated[
        bool | None,
        typer.Option("--quality/--no-quality", help="Pre-label quality table (default: for snapshots).",
                     show_default=False),
    ] = None,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Score a pipeline profile on a benchmark: CSV, Markdown, plots, gallery and an HTML report."""
    from flows.datasets import evaluate_flow, resolve_benchmark
    from geoseg.profiles import load_profile

    ov = overrides_for(data_dir)
    load_profile(profile)  # a bad profile or benchmark fails here, before the flow starts
    bench, is_snapshot = resolve_benchmark(benchmark, ov)
    if quality is None:
        quality = is_snapshot
    summary = evaluate_flow(str(bench.root), profile=profile, out_dir=str(out), ablations=ablations,
                            cache_dir=str(cache_dir) if cache_dir else None, limit=limit, judge=judge,
                            judge_limit=judge_limit, quality=quality, settings_overrides=ov)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"{summary['benchmark']} ({summary['samples']} samples, {summary['model_version']}): "
                   f"mIoU {summary['miou']:.3f}, cIoU {summary['ciou']:.3f}, {summary['errors']} error(s)")
        typer.echo(f"report: {summary['report']}")
    tiny_note(bool(summary.get("meaningless")))


@app.command("quality")
def quality_cmd(
    model_version: ModelVersion = None,
    consensus: Annotated[
        bool,
        typer.Option("--consensus", help="Annotator agreement per domain x level and per annotator (IoU against "
                     "consensus) instead of pre-label quality (JSON)."),
    ] = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Pre-label quality per model version: acceptance, IoU vs accepted mask, unchanged share, lead time."""
    from storage.datasets.quality import consensus_quality, prelabel_quality

    rt = runtime_for(data_dir)
    with rt.session() as s:
        if consensus:
            print_json(consensus_quality(s))
            return
        rows = [q.row() for q in prelabel_quality(s, rt.blobs, model_version=model_version)]
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo("no annotations yet")
    for r in rows:
        typer.echo(f"{r['model_version']}: {r['n_annotations']} annotation(s), accepted {r['acceptance_rate']}, "
                   f"median IoU {r['median_iou']}, unchanged {r['share_unchanged']}")
