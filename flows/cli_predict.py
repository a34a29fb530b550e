"""``geolabel predict IMAGE "QUERY"``: run the GeoSeg pipeline on one image and write mask, overlay and JSON."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer


def slug(text: str, limit: int = 40) -> str:
    """A filename-safe short form of a query, distinct for distinct queries: a plain lowercase ASCII query becomes
    its words joined by ``-``; any other (case, punctuation, Unicode, cut at ``limit``) gets 8 hex digits of the
    query's SHA-256 appended, so two queries on one image never write the same files."""
    import hashlib

    s = re.sub(r"[^A-Za-z0-9]+", "-", text.strip().lower()).strip("-")
    short = s[:limit].rstrip("-")
    if short and short.replace("-", " ") == text:
        return short
    return f"{short or 'query'}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


def render_overlay(rgb: Any, result: Any) -> Any:
    """The image with the mask (red, translucent), refined box (cyan), raw box(es) (yellow) and keypoints (green)."""
    import numpy as np
    from PIL import Image, ImageDraw

    base = np.asarray(rgb, dtype=np.float32).copy()
    m = result.mask
    base[m] = base[m] * 0.5 + np.array([255.0, 0.0, 0.0]) * 0.5
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    if result.refined_box is not None:  # refined box first, so the raw box stays visible where they coincide
        r = result.refined_box
        draw.rectangle([r.x1, r.y1, max(r.x1, r.x2 - 1), max(r.y1, r.y2 - 1)], outline=(0, 255, 255), width=1)
    for b in result.grounding.boxes:
        draw.rectangle([b.x1, b.y1, max(b.x1, b.x2 - 1), max(b.y1, b.y2 - 1)], outline=(255, 255, 0), width=2)
    rad = max(2, round(min(im.size) / 100))
    for x, y in result.keypoints:
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], outline=(0, 0, 0), fill=(0, 255, 0))
    return im


def write_outputs(out_dir: Path, stem: str, rgb: Any, result: Any, extra: dict[str, Any]) -> dict[str, Path]:
    """Write ``<stem>.mask.png`` (0/255), ``<stem>.overlay.png`` and ``<stem>.json``; returns the paths."""
    import numpy as np
    from PIL import Image

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "mask": out_dir / f"{stem}.mask.png",
        "overlay": out_dir / f"{stem}.overlay.png",
        "json": out_dir / f"{stem}.json",
    }
    Image.fromarray(result.mask.astype(np.uint8) * 255, mode="L").save(paths["mask"])
    render_overlay(rgb, result).save(paths["overlay"])
    payload = {**extra, **result.summary(), "files": {k: p.name for k, p in paths.items()}}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str))
    return paths


def register(app: typer.Typer) -> None:
    @app.command("predict")
    def predict(
        image: Path = typer.Argument(..., help="Image file: GeoTIFF, PNG or JPEG."),
        query: str = typer.Argument(..., help="The referring / reasoning query."),
        profile: str = typer.Option("tiny", "--profile", help="tiny | paper | a .toml/.json profile file."),
        no_refine: bool = typer.Option(False, "--no-refine", help="Ablation: use the clamped raw box as the RoI."),
        no_route_a: bool = typer.Option(False, "--no-route-a", help="Ablation: skip CLIP Surgery keypoints."),
        no_route_b: bool = typer.Option(False, "--no-route-b", help="Ablation: skip the SAM3 text prompt."),
        out: Path = typer.Option(Path("predictions"), "--out", help="Output directory."),
        as_json: bool = typer.Option(False, "--json", help="Print the result JSON instead of the summary lines."),
    ) -> None:
        """Segment QUERY in IMAGE; writes the mask PNG, an overlay PNG and the result JSON."""
        from transformers.utils import logging as hf_logging

        from geoseg.imagery import read_image
        from geoseg.pipeline import GeoSegPipeline
        from geoseg.profiles import load_profile
        from geoseg.types import TINY_MODEL_WARNING

        hf_logging.disable_progress_bar()  # keep the command's output to its own lines
        if not query.strip():
            raise typer.BadParameter("QUERY must not be empty", param_hint="QUERY")
        loaded = read_image(image)
        config = load_profile(profile)
        switches = {}
        if no_refine:
            switches["refine"] = False
        if no_route_a:
            switches["route_a"] = False
        if no_route_b:
            switches["route_b"] = False
        if switches:
            config = replace(config, **switches)  # re-validated: both routes off is an error
        pipeline = GeoSegPipeline(config)
        if pipeline.meaningless:
            typer.secho(f"warning: {TINY_MODEL_WARNING}", err=True, fg=typer.colors.YELLOW)
        result = pipeline(loaded.rgb, query)
        extra = {
            "image": str(image),
            "query": query,
            "profile": config.profile,
            "config": config.to_dict(),
            "image_info": loaded.facts(),
            "meaningless": pipeline.meaningless,
        }
        stem = f"{Path(image).stem}__{slug(query)}"
        paths = write_outputs(out, stem, loaded.rgb, result, extra)
        if loaded.format == "GTiff":  # georeferenced outputs (storage.geo): mask COG + GeoJSON in EPSG:4326
            from storage.geo import write_prediction_outputs

            geo_paths, note = write_prediction_outputs(
                image, result.mask, out, stem, {"query": query, "model_version": result.model_version})
            paths.update(geo_paths)
            if note:
                typer.echo(f"note: {note}", err=True)
        if as_json:
            typer.echo(paths["json"].read_text())
            return
        area = result.area
        typer.echo(
            f"route={result.route} mask_area={area} ({area / result.mask.size:.2%}) "
            f"model_version={result.model_version}"
        )
        if result.reason:
            typer.echo(f"reason: {result.reason}")
        for kind, p in paths.items():
            typer.echo(f"{kind}: {p}")
        if pipeline.meaningless:
            typer.echo(f"note: {TINY_MODEL_WARNING}")


app = typer.Typer()  # the `predict` command as a sub-app, like the other command modules
register(app)
