"""``geolabel init | status | open | demo``: set up a data dir, see where it stands, find its Label Studio projects."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import (
    DataDir,
    Json,
    Profile,
    Project,
    overrides_for,
    print_json,
    runtime_for,
    settings_for,
)

app = typer.Typer()


def check_data_dir(path: Path) -> None:
    """A data dir must be a writable directory (created if missing); a plain one-line error otherwise."""
    import tempfile

    if path.exists() and not path.is_dir():
        raise ValueError(f"data dir {path} is a file, not a directory: pass another --data-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"data dir {path} is not writable ({exc.strerror or exc}): pass another --data-dir") from None


def cmd_init(data_dir: Path | None, models: bool) -> dict[str, Any]:
    """Check the data dir, create the schema (and the tiny models); returns settings, models and row counts."""
    from flows.runtime import settings_from
    from flows.status import collect_status

    check_data_dir(settings_from({"data_dir": str(data_dir)} if data_dir else None).data_dir)  # before anything writes
    settings = settings_for(data_dir)
    rt = runtime_for(data_dir)
    out: dict[str, Any] = {"settings": settings.describe()}
    if models:
        from geoseg.tiny import ensure_tiny_models, model_cache_dir

        out["tiny_models"] = {k: str(v) for k, v in ensure_tiny_models(model_cache_dir()).items()}
    out["status"] = {k: v["total"] for k, v in collect_status(rt).items() if isinstance(v, dict) and "total" in v}
    return out


@app.command("init")
def init(
    models: Annotated[bool, typer.Option("--models/--no-models", help="Build the tiny demo models now.")] = True,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Create the data directory and database schema (and the tiny demo models)."""
    out = cmd_init(data_dir, models)
    if as_json:
        print_json(out)
        return
    s = out["settings"]
    typer.echo(f"data dir:   {s['data_dir']}")
    typer.echo(f"database:   {s['database_url']}")
    typer.echo(f"blob store: {s['blob_url']}")
    for k, v in out.get("tiny_models", {}).items():
        typer.echo(f"tiny {k}: {v}")


@app.command("status")
def status(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Counts per stage (images, items, predictions, tasks, annotations, triplets) and per model version."""
    from flows.status import collect_status

    st = collect_status(runtime_for(data_dir))
    if as_json:
        print_json(st)
        return
    _print_status(st)


def project_links(data_dir: Path | None) -> dict[str, Any]:
    """The Label Studio the commands use, its login file (local server) and every project this data dir knows."""
    from labeling.server import server_root
    from storage.repo.labeling import label_projects

    settings = settings_for(data_dir)
    rt = runtime_for(data_dir)
    with rt.session() as s:
        rows = label_projects(s)
    creds = server_root(settings.data_dir) / "credentials.json"
    return {
        "label_studio_url": settings.label_studio_url,
        "login_file": str(creds) if creds.is_file() else None,
        "projects": [
            {"title": t, "url": f"{u}/projects/{p}", "review_tasks": n}
            for u, p, t, n in rows
            if u.rstrip("/") == settings.label_studio_url.rstrip("/")
        ],
    }


@app.command("open")
def open_projects(
    browser: Annotated[bool, typer.Option("--browser", help="Also open each project in the web browser.")] = False,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Print the URLs of this data dir's Label Studio projects (review and intake); never prints the token."""
    links = project_links(data_dir)
    if as_json:
        print_json(links)
    else:
        typer.echo(f"Label Studio: {links['label_studio_url']}")
        if links["login_file"]:
            typer.echo(f'  web login: the "email" and "password" fields of {links["login_file"]}')
        for p in links["projects"]:
            kind = f"{p['review_tasks']} review task(s)" if p["review_tasks"] else "no review tasks (intake?)"
            typer.echo(f"{p['url']}\t{p['title']}\t{kind}")
        if not links["projects"]:
            typer.echo("no projects yet: `geolabel push` or `geolabel cycle` creates them")
    if browser:
        import webbrowser

        for p in links["projects"]:
            webbrowser.open(p["url"])


@app.command("demo")
def demo(
    start_label_studio: Annotated[
        bool,
        typer.Option("--start-label-studio/--no-start-label-studio", help="Start a local Label Studio if none is up."),
    ] = True,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the simulated annotator.")] = 0,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """The whole loop on embedded defaults over real aerial imagery (tiny models, simulated annotator)."""
    from dataclasses import asdict

    from flows.demo import print_summary, run_demo
    from flows.prefect_server import prefect_ui_line

    overrides_for(data_dir)  # the data dir's Prefect server (run history, artifacts), quiet tracebacks
    echo = (lambda s: typer.echo(s, err=True)) if as_json else typer.echo
    res = run_demo(data_dir, start_label_studio=start_label_studio, seed=seed, echo=echo)
    if as_json:
        print_json(asdict(res))
        return
    print_summary(res, echo=typer.echo)
    typer.echo(prefect_ui_line())


def _fmt(v: Any, pct: bool = False, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.0%}" if pct else f"{v:.2f}{unit}"


def _print_status(st: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"database: {st['database']}   blobs: {st['blob_store']}", highlight=False)
    t = Table("stage", "total", "detail")
    t.add_row("images", str(st["images"]["total"]), "")
    t.add_row("items", str(st["items"]["total"]), ", ".join(f"{k} {v}" for k, v in st["items"]["by_status"].items()))
    p = st["predictions"]
    t.add_row("predictions", str(p["total"]), f"failed {p['failed']}")
    for mv, d in p["by_model_version"].items():
        t.add_row("", "", f"{mv}: ok {d['ok']}, failed {d['failed']}")
    t.add_row("tasks", str(st["tasks"]["total"]), ", ".join(f"{k}: {v}" for k, v in st["tasks"]["by_project"].items()))
    for mv, n in st["tasks"]["by_model_version"].items():
        t.add_row("", "", f"pre-labelled by {mv}: {n}")
    a = st["annotations"]
    verdicts = ", ".join(f"{k} {v}" for k, v in a["by_verdict"].items())
    t.add_row("annotations", str(a["total"]), verdicts + (f", retracted {a['retracted']}" if a["retracted"] else ""))
    tr = st["triplets"]
    t.add_row("triplets", str(tr["total"]), f"active {tr['active']}, withdrawn {tr['withdrawn']}")
    con.print(t)
    if st.get("prelabel_quality"):
        _print_quality(con, st["prelabel_quality"])
    _print_consensus(con, st.get("consensus") or {})


def _print_quality(con: Any, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    q = Table(title="pre-label quality per model version")
    for col in ("model version", "annotations", "accepted", "IoU pre-label vs accepted (median)",
                "accepted unchanged", "median lead time"):
        q.add_column(col)
    for r in rows:
        q.add_row(r["model_version"], str(r["n_annotations"]), _fmt(r["acceptance_rate"], pct=True),
                  _fmt(r["median_iou"]), _fmt(r["share_unchanged"], pct=True),
                  _fmt(r["median_lead_time_s"], unit=" s"))
    con.print(q)


def _print_consensus(con: Any, cons: dict[str, Any]) -> None:
    """Annotator agreement tables of ``geolabel status`` (storage.datasets.quality.consensus_quality)."""
    from rich.table import Table

    if any(r["n_multi"] for r in cons.get("by_stratum", [])):
        t = Table(title="annotator agreement per domain x level (items with several annotators)")
        for col in ("domain", "level", "items", "multi", "agreement", "mask IoU", "Boundary F", "verdicts",
                    "in adjudication", "adjudicated"):
            t.add_column(col)
        for r in cons["by_stratum"]:
            t.add_row(r["domain"], r["level"], str(r["n_items"]), str(r["n_multi"]), _fmt(r["agreement"]),
                      _fmt(r["mask_iou"]), _fmt(r["boundary_f"]), _fmt(r["verdict_agreement"]),
                      str(r["adjudication"]), str(r["adjudicated"]))
        con.print(t)
    rows = [r for r in cons.get("by_annotator", []) if r["n_compared"]]
    if rows:
        t = Table(title="per annotator: IoU against consensus")
        for col in ("annotator", "annotations", "compared", "mean IoU vs consensus"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["annotator"], str(r["n_annotations"]), str(r["n_compared"]), _fmt(r["mean_iou_vs_consensus"]))
        con.print(t)


@app.command("doctor")
def doctor(
    profile: Annotated[
        str, typer.Option("--profile", "-p", help="Whose model weights to look for: tiny, paper or a profile file.")
    ] = "tiny",
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Check venvs, Label Studio (reachable, version, token), database revision, blob store, GPU and model weights;
    say what to do for each failure. Exit code 1 when a check fails."""
    from flows.doctor import FAIL, run_checks

    checks = run_checks(settings_for(data_dir), profile)
    if as_json:
        print_json([c.to_dict() for c in checks])
    else:
        for c in checks:
            typer.echo(f"[{c.status:>4}] {c.name}: {c.detail}" + (f"\n       -> {c.fix}" if c.fix else ""))
    if any(c.status == FAIL for c in checks):
        raise typer.Exit(1)


@app.command("project")
def project_cmd(
    project: Project = None,
    overlap: Annotated[
        int | None,
        typer.Option("--overlap", min=1, help="Annotators per task (Label Studio's maximum_annotations); with 2 or "
                     "more, items are decided by consensus and disputed ones go to adjudication.", show_default=False),
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option("--min-agreement", min=0.0, max=1.0, help="Agreement below which an item goes to the "
                     "adjudication project (default 0.5).", show_default=False),
    ] = None,
    label_stream: Annotated[
        str | None,
        typer.Option("--label-stream", help="uncertainty: least certain pre-labels first, under-filled GeoSeg-Bench "
                     "strata before full ones; sequential: Label Studio's default order.", show_default=False),
    ] = None,
    profile: Profile = "tiny",
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Configure the review project: annotators per task, the consensus threshold, the label stream's order."""
    from flows.labeling_flows import configure_project
    from geoseg.registry import model_version_of

    mv = model_version_of(profile) if label_stream == "uncertainty" else None
    out = configure_project(runtime_for(data_dir), project, overlap=overlap, min_agreement=min_agreement,
                            label_stream=label_stream, model_version=mv)
    if as_json:
        print_json(out)
        return
    typer.echo(f"project {out['project']}")
    if "consensus" in out:
        c = out["consensus"]
        typer.echo(f"  {c['overlap']} annotator(s) per task; adjudication below agreement {c['min_agreement']}")
    if out.get("label_stream") == "uncertainty":
        typer.echo(f"  label stream: uncertainty ({mv}); {out['scores_written']} queue score(s) written")
    elif out.get("label_stream"):
        typer.echo("  label stream: sequential")
