"""``geolabel calibrate``: fit alpha, beta, gamma, tau, k to a snapshot of accepted annotations (geoseg.calibrate) and
write a profile file that extends the current profile (a new model version), with a JSON report beside it."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("calibrate")
    def calibrate_cmd(
        snapshot: str = typer.Option(..., "--snapshot", help="Accepted items to fit on: snapshot NAME[@VERSION]."),
        profile: str = typer.Option("tiny", "--profile", help="The current profile (paper, tiny or a file)."),
        out: Path = typer.Option(..., "--out", help="The profile file to write (.toml); report: OUT.report.json."),
        model_version: str | None = typer.Option(None, "--model-version",
                                                 help="Predictions of this version (default: the pushed pre-labels)."),
        min_samples: int = typer.Option(20, "--min-samples", help="Refuse below this many usable items."),
        holdout: float = typer.Option(0.3, "--holdout", help="Share of items held out for the before/after report."),
        budget_s: float = typer.Option(300.0, "--budget-s", help="Time budget of the tau/k search (seconds)."),
        seed: int = typer.Option(0, "--seed"),
        rerun: bool = typer.Option(True, "--rerun/--no-rerun", help="Re-run stages 2-3 (tau/k search, after-IoU)."),
    ) -> None:
        """Fit the pipeline's parameters to accepted annotations; write a calibrated profile and its report."""
        from dataclasses import replace

        from flows.runtime import open_runtime
        from geoseg.calibrate import calibrate, profile_text, sample_from_stored
        from geoseg.evaluation.bench import read_benchmark
        from geoseg.registry import load_pipeline
        from storage.datasets.calibration import stored_masks, stored_predictions
        from storage.datasets.snapshot import resolve_snapshot_dir

        if out.suffix.lower() != ".toml":
            raise typer.BadParameter("the profile file must end in .toml", param_hint="--out")
        rt = open_runtime()
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
        typer.echo(json.dumps({"profile": str(out), "report": str(rep_path), **report.to_json()}, indent=1,
                              default=str))  # fmt: skip
