"""``geolabel calibrate``: fit alpha, beta, gamma, tau, k to a snapshot of accepted annotations (geoseg.calibrate) and
write a profile file that extends the current profile (a new model version), with a JSON report beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import DataDir, Json, print_json, runtime_for

app = typer.Typer()



@app.command("calibrate")
def calibrate_cmd(
    snapshot: Annotated[str, typer.Option("--snapshot", help="Accepted items to fit on: snapshot NAME[@VERSION].")],
    out: Annotated[Path, typer.Option("--out", help="The profile file to write (.toml); report: OUT.report.json.")],
    profile: Annotated[str, typer.Option("--profile", help="The current profile (paper, tiny or a file).")] = "tiny",
    model_version: Annotated[
        str | None,
        typer.Option("--model-version", help="Predictions of this version (default: the pushed pre-labels).",
                     show_default=False),
    ] = None,
    min_samples: Annotated[int, typer.Option("--min-samples", help="Refuse below this many usable items.")] = 20,
    holdout: Annotated[
        float, typer.Option("--holdout", help="Share of items held out for the before/after report.")
    ] = 0.3,
    budget_s: Annotated[float, typer.Option("--budget-s", help="Time budget of the tau/k search (seconds).")] = 300.0,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the split and the bootstrap.")] = 0,
    rerun: Annotated[
        bool, typer.Option("--rerun/--no-rerun", help="Re-run stages 2-3 (tau/k search, after-IoU).")
    ] = True,
    data_dir: DataDir = None,
    as_json: Json = False,
) -> None:
    """Fit the pipeline's parameters to accepted annotations; write a calibrated profile and its report."""
    from dataclasses import replace

    from geoseg.calibrate import calibrate, profile_text, sample_from_stored
    from geoseg.evaluation.bench import read_benchmark
    from geoseg.registry import load_pipeline
    from storage.datasets.calibration import stored_masks, stored_predictions
    from storage.datasets.snapshot import resolve_snapshot_dir

    if out.suffix.lower() != ".toml":
        raise typer.BadParameter("the profile file must end in .toml", param_hint="--out")
    rt = runtime_for(data_dir)
    base = load_pipeline(profile)
    with rt.session() as s:
        bench = read_benchmark(resolve_snapshot_dir(s, rt.blobs, snapshot, rt.settings.data_dir / "snapshots"))
        stored = stored_predictions(s, [int(x.id) for x in bench.samples], model_version)
    samples = [sample_from_stored(x, stored[int(x.id)], stored_masks(rt.blobs, stored[int(x.id)],
                                                                   (x.height, x.width)))
               for x in bench.samples if int(x.id) in stored]  # fmt: skip
    cache = rt.settings.data_dir / "calibration-cache"
    report = calibrate(samples, base.config, base.with_config if rerun else None, cache, min_samples=min_samples,
                       holdout=holdout, seed=seed, budget_s=budget_s,
                       meaningless=bool(base.meaningless))  # fmt: skip
    name = out.stem
    report.config = replace(report.config, profile=name)
    extends = profile if profile in ("paper", "tiny") else str(Path(profile).resolve())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(profile_text(report, extends, name), encoding="utf-8")
    rep_path = out.with_suffix(".report.json")
    rep_path.write_text(json.dumps(report.to_json(), indent=1, default=str), encoding="utf-8")
    summary = {"profile": str(out), "report": str(rep_path), **report.to_json()}
    if as_json:
        print_json(summary)
        return
    typer.echo(f"calibrated profile: {out} (report {rep_path})")
    for key, val in (summary.get("fitted") or {}).items():
        typer.echo(f"  {key}: {val}")
    for note in summary.get("notes") or ():
        typer.echo(f"note: {note}", err=True)
