"""Evaluation report: CSV + Markdown tables, PNG plots, an overlay gallery and an HTML page that links them.

Files written under ``out_dir``:

- ``samples.csv``       one row per sample and run (metrics, confusion counts, route, time, error)
- ``summary.csv``       mean of each metric and cumulative IoU per run and group (all, domain, level, domain x level)
- ``ablation.csv``      Table-3-shaped rows (full, w/o refinement, w/o Route A, w/o Route B) when ablations ran
- ``report.md``         the tables (overall, domain x level, ablation, timings, pre-label quality, judge)
- ``plots/domain_level_miou.png``, ``plots/iou_hist.png`` (and ``plots/ablation.png``)
- ``gallery/worst_*.png``, ``gallery/best_*.png``  composites: ground truth green, prediction red, overlap yellow
- ``report.html``       everything above, linked: rendered from the same tables by a Jinja2 template (autoescaped),
                        so each table is a real ``<table>`` with one ``<tr>`` per row

When the run used the tiny random models, every file that shows scores says so (TINY_MODEL_WARNING).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.evaluation.harness import EvalRun, outcomes_table
from geoseg.evaluation.overlay import composite
from geoseg.metrics import METRIC_NAMES
from geoseg.types import TINY_MODEL_WARNING
from geoseg.vocabulary import LEVELS

ABLATION_LABELS: dict[str, str] = {
    "full": "GeoSeg (full)",
    "no_refine": "w/o refinement",
    "no_route_a": "w/o Route A (points)",
    "no_route_b": "w/o Route B (text)",
}
LEVEL_ORDER = (*LEVELS, "L?")


@dataclass(frozen=True)
class ReportFiles:
    out_dir: Path
    markdown: Path
    html: Path
    csvs: tuple[Path, ...]
    plots: tuple[Path, ...]
    gallery: tuple[Path, ...] = field(default_factory=tuple)


def _pct(v: float) -> str:
    return f"{100.0 * v:.1f}"


#: First characters that make a spreadsheet read a cell as a formula (CSV injection, OWASP).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: Any) -> Any:
    """A text cell that cannot run as a spreadsheet formula: a leading ``'`` before =, +, -, @, tab or CR.

    Only strings change (numbers stay numbers); the text itself is kept whole after the quote.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows({k: inert_cell(v) for k, v in r.items()} for r in rows)
    return path


def summary_rows(run: EvalRun) -> list[dict[str, Any]]:
    """One row per group of ``run.aggregate()``."""
    rows = []
    for key, stats in run.aggregate().items():
        if key == ("all",):
            group, domain, level = "all", "", ""
        elif key[0] == "x":
            group, domain, level = "domain x level", key[1], key[2]
        else:
            group, domain, level = key[0], key[1] if key[0] == "domain" else "", key[1] if key[0] == "level" else ""
        row = {"run": run.label, "model_version": run.model_version, "group": group, "domain": domain,
               "level": level, "n": int(stats["n"]), "ciou": round(stats["ciou"], 6)}
        row.update({f"mean_{m}": round(stats[f"mean_{m}"], 6) for m in METRIC_NAMES if f"mean_{m}" in stats})
        rows.append(row)
    return rows


def domain_level_table(run: EvalRun) -> tuple[list[str], list[list[str]]]:
    """Rows: domains (+ all); columns: levels (+ all); cells ``mIoU / cIoU (n)`` in percent."""
    agg = run.aggregate()
    domains = sorted({o.domain for o in run.outcomes})
    levels = [lv for lv in LEVEL_ORDER if any(o.level == lv for o in run.outcomes)]

    def cell(stats: Mapping[str, float] | None) -> str:
        if not stats:
            return "-"
        return f"{_pct(stats['mean_iou'])} / {_pct(stats['ciou'])} ({int(stats['n'])})"

    header = ["domain \\ level", *levels, "all"]
    rows = [[d, *[cell(agg.get(("x", d, lv))) for lv in levels], cell(agg.get(("domain", d)))] for d in domains]
    rows.append(["all", *[cell(agg.get(("level", lv))) for lv in levels], cell(agg.get(("all",)))])
    return header, rows


def ablation_rows(runs: Mapping[str, EvalRun]) -> list[dict[str, Any]]:
    """Table 3 shape: setting, refine / Route A / Route B switches, mIoU, cIoU, delta vs full, time per sample."""
    from geoseg.types import ABLATIONS

    full = runs.get("full")
    full_miou = full.aggregate()[("all",)]["mean_iou"] if full and full.outcomes else None
    rows = []
    for name in ("full", "no_refine", "no_route_a", "no_route_b"):
        if name not in runs or not runs[name].outcomes:
            continue
        stats = runs[name].aggregate()[("all",)]
        sw = ABLATIONS[name]
        rows.append({
            "setting": ABLATION_LABELS[name], "refine": "yes" if sw["refine"] else "no",
            "route_a": "yes" if sw["route_a"] else "no", "route_b": "yes" if sw["route_b"] else "no",
            "miou": round(100 * stats["mean_iou"], 2), "ciou": round(100 * stats["ciou"], 2),
            "delta_miou": "" if full_miou is None else round(100 * (stats["mean_iou"] - full_miou), 2),
            "mean_boundary_f": round(100 * stats.get("mean_boundary_f", float("nan")), 2),
            "s_per_sample": round(runs[name].seconds_per_sample(), 4), "errors": runs[name].n_errors,
            "model_version": runs[name].model_version,
        })
    return rows


def _plots(run: EvalRun, runs: Mapping[str, EvalRun], plot_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    agg = run.aggregate()
    domains = sorted({o.domain for o in run.outcomes})
    levels = [lv for lv in LEVEL_ORDER if any(o.level == lv for o in run.outcomes)]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / max(1, len(levels))
    x = np.arange(len(domains))
    for j, lv in enumerate(levels):
        vals = [100 * agg.get(("x", d, lv), {}).get("mean_iou", np.nan) for d in domains]
        ax.bar(x + (j - (len(levels) - 1) / 2) * width, vals, width, label=lv)
    ax.set_xticks(x, domains)
    ax.set_ylabel("mIoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"mIoU per domain and level ({run.label})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = plot_dir / "domain_level_miou.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    out.append(p)

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist([o.metrics["iou"] for o in run.outcomes], bins=np.linspace(0, 1, 21), color="#4477aa", edgecolor="white")
    ax.set_xlabel("IoU")
    ax.set_ylabel("samples")
    ax.set_title(f"IoU histogram ({run.label}, n={len(run.outcomes)})")
    fig.tight_layout()
    p = plot_dir / "iou_hist.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    out.append(p)

    if len(runs) > 1:
        names = [n for n in ABLATION_LABELS if n in runs]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        vals = [100 * runs[n].aggregate()[("all",)]["mean_iou"] for n in names]
        ax.bar(range(len(names)), vals, color="#66aa55")
        ax.set_xticks(range(len(names)), [ABLATION_LABELS[n] for n in names], rotation=15, fontsize=8)
        ax.set_ylabel("mIoU (%)")
        ax.set_title("Ablation (Table 3 shape)")
        fig.tight_layout()
        p = plot_dir / "ablation.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        out.append(p)
    return out


def _gallery(run: EvalRun, gallery_dir: Path, n: int) -> list[tuple[str, Path, Any]]:
    from PIL import Image

    gallery_dir.mkdir(parents=True, exist_ok=True)
    ranked = sorted(run.outcomes, key=lambda o: (o.metrics["iou"], o.sample_id))
    if len(ranked) > 2 * n:
        picks = [("worst", o) for o in ranked[:n]] + [("best", o) for o in reversed(ranked[-n:])]
    else:  # few samples: show them all, worst first
        picks = [("worst" if i < len(ranked) / 2 else "best", o) for i, o in enumerate(ranked)]
    out = []
    for i, (kind, o) in enumerate(picks):
        s = run.sample(o.sample_id)
        comp = composite(s.load_image(), s.load_mask(), run.load_prediction(o))
        scale = max(1, 256 // max(comp.shape[:2]))  # small benchmark images are blown up (nearest) to be seen
        if scale > 1:
            comp = comp.repeat(scale, axis=0).repeat(scale, axis=1)
        p = gallery_dir / f"{kind}_{i:02d}_{o.sample_id}.png".replace("/", "_")
        Image.fromarray(comp).save(p)
        out.append((kind, p, o))
    return out


@dataclass(frozen=True)
class Table:
    """One report table: its section heading, column names and rows (cells as shown; ``None`` shows as ``-``)."""

    heading: str
    header: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


def _table(heading: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    return Table(heading, tuple(map(str, header)), tuple(tuple("-" if c is None else c for c in r) for r in rows))


def report_tables(
    runs: Mapping[str, EvalRun],
    main: EvalRun,
    quality: Sequence[Mapping[str, Any]] | None,
    judge: Sequence[Mapping[str, Any]] | None,
) -> list[Table]:
    """The report's tables in page order: overall, domain x level, ablation, timings, pre-label quality, judge."""
    overall = main.aggregate()[("all",)]
    tables = [
        _table("Overall", ["n", "mIoU", "cIoU", *[m for m in METRIC_NAMES if m != "iou"]],
               [[int(overall["n"]), _pct(overall["mean_iou"]), _pct(overall["ciou"]),
                 *[_pct(overall[f"mean_{m}"]) for m in METRIC_NAMES if m != "iou"]]]),
        _table("mIoU / cIoU (n) per domain x level, percent", *domain_level_table(main)),
    ]
    abl = ablation_rows(runs) if len(runs) > 1 else []
    if abl:
        tables.append(_table(
            "Ablation (shape of the paper's Table 3)",
            ["setting", "refine", "Route A", "Route B", "mIoU", "cIoU", "delta mIoU", "BF", "s/sample", "errors"],
            [[r["setting"], r["refine"], r["route_a"], r["route_b"], r["miou"], r["ciou"], r["delta_miou"],
              r["mean_boundary_f"], r["s_per_sample"], r["errors"]] for r in abl]))
    tables.append(_table("Timings", ["stage", "mean ms"],
                         [["wall per sample", f"{1000 * main.seconds_per_sample():.1f}"],
                          *[[k, f"{1000 * v:.1f}"] for k, v in main.mean_timings().items()]]))
    if quality:
        keys = list(quality[0])
        tables.append(_table("Pre-label quality per model version", keys,
                             [[r.get(k, "") for k in keys] for r in quality]))
    if judge:
        keys = list(judge[0])
        tables.append(_table("MLLM judge (Likert 1-5)", keys, [[r.get(k, "") for k in keys] for r in judge]))
    return tables


def write_report(
    out_dir: str | Path,
    runs: Mapping[str, EvalRun],
    *,
    quality: Sequence[Mapping[str, Any]] | None = None,
    judge: Sequence[Mapping[str, Any]] | None = None,
    gallery_n: int = 4,
    title: str = "GeoSeg evaluation",
) -> ReportFiles:
    """Write the full report for ``runs`` (``"full"`` first; other keys are ablation names)."""
    if not runs:
        raise ValueError("write_report needs at least one evaluation run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main = runs.get("full") or next(iter(runs.values()))
    if not main.outcomes:
        raise ValueError("the evaluation run has no samples")
    meaningless = any(r.meaningless for r in runs.values())

    csvs = [write_csv(out / "samples.csv", [dict(run=r.label, **row) for r in runs.values()
                                             for row in outcomes_table(r.outcomes)])]
    csvs.append(write_csv(out / "summary.csv", [row for r in runs.values() for row in summary_rows(r)]))
    abl = ablation_rows(runs) if len(runs) > 1 else []
    if abl:
        csvs.append(write_csv(out / "ablation.csv", abl))
    if quality:
        csvs.append(write_csv(out / "prelabel_quality.csv", list(quality)))
    if judge:
        csvs.append(write_csv(out / "judge.csv", list(judge)))
    plots = _plots(main, runs, out / "plots")
    gallery = _gallery(main, out / "gallery", gallery_n)
    page = {
        "title": title,
        "warning": TINY_MODEL_WARNING if meaningless else None,
        "facts": [("benchmark", f"{main.benchmark.name} ({main.benchmark.layout} layout, "
                                f"{len(main.benchmark)} samples)"),
                  ("model version", main.model_version),
                  ("errors", f"{main.n_errors}; served from cache: {main.n_cached}")],
        "tables": report_tables(runs, main, quality, judge),
        "plots": [(p.stem, p.relative_to(out).as_posix()) for p in plots],
        "gallery": [{"kind": kind, "src": p.relative_to(out).as_posix(), "sample_id": o.sample_id,
                     "iou": f"{o.metrics['iou']:.3f}", "query": o.query} for kind, p, o in gallery],
        "data": [p.name for p in csvs] + ["report.md"],
    }
    md_path = out / "report.md"
    md_path.write_text(render_markdown(page), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(render_html(page), encoding="utf-8")
    return ReportFiles(out, md_path, html_path, tuple(csvs), tuple(plots), tuple(p for _, p, _ in gallery))


def _md_cell(value: Any) -> str:
    """A Markdown table cell: pipes escaped and line breaks folded, so one value stays one cell."""
    return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def render_markdown(page: Mapping[str, Any]) -> str:
    """``report.md``: GitHub-flavoured Markdown (pipe tables), readable as text and by any Markdown viewer."""
    md: list[str] = [f"# {page['title']}", ""]
    if page["warning"]:
        md += [f"> **Warning:** {page['warning']}.", ""]
    md += [f"- {k}: `{v}`" for k, v in page["facts"]] + [""]
    for t in page["tables"]:
        md += [f"## {t.heading}", "", "| " + " | ".join(map(_md_cell, t.header)) + " |",
               "|" + "|".join("---" for _ in t.header) + "|"]
        md += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in t.rows] + [""]
    md += ["## Plots", ""] + [f"![{stem}]({src})" for stem, src in page["plots"]] + [""]
    md += ["## Gallery (ground truth green, prediction red, overlap yellow)", ""]
    md += [f"- {g['kind']}: `{g['sample_id']}` IoU {g['iou']} - {_md_cell(g['query'])} -> [{g['src']}]({g['src']})"
           for g in page["gallery"]]
    return "\n".join(md) + "\n"


_HTML_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
body{font-family:sans-serif;max-width:1100px;margin:auto;padding:0 12px}
table{border-collapse:collapse;margin:6px 0 14px}
td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eef}
td:first-child,th:first-child{text-align:left}
figure{display:inline-block;margin:6px;vertical-align:top}
figcaption{font-size:small;max-width:260px}
.warn{background:#fff3cd;padding:8px;border-left:4px solid #e0a800}
</style></head><body>
<h1>{{ title }}</h1>
{% if warning %}<p class="warn"><strong>Warning:</strong> {{ warning }}</p>{% endif %}
<ul>{% for k, v in facts %}<li>{{ k }}: <code>{{ v }}</code></li>{% endfor %}</ul>
{% for t in tables %}
<h2>{{ t.heading }}</h2>
<table>
<thead><tr>{% for c in t.header %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>
{% for r in t.rows %}<tr>{% for c in r %}<td>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% endfor %}
<h2>Plots</h2>
{% for stem, src in plots %}<figure><img src="{{ src }}" alt="{{ stem }}"><figcaption>{{ stem }}</figcaption></figure>
{% endfor %}
<h2>Gallery: ground truth green, prediction red, overlap yellow</h2>
{% if warning %}<p class="warn">{{ warning }}</p>{% endif %}
{% for g in gallery %}<figure><a href="{{ g.src }}"><img width="192" src="{{ g.src }}" alt="{{ g.sample_id }}"></a>
<figcaption>{{ g.kind }} {{ g.sample_id }} IoU {{ g.iou }}<br>{{ g.query }}</figcaption></figure>
{% endfor %}
<h2>Data</h2>
<ul>{% for name in data %}<li><a href="{{ name }}">{{ name }}</a></li>{% endfor %}</ul>
</body></html>
"""


def render_html(page: Mapping[str, Any]) -> str:
    """``report.html`` from a Jinja2 template with autoescaping on: every query, sample id and cell is text, never
    markup (annotator-written queries end up here)."""
    from jinja2 import Environment, StrictUndefined

    env = Environment(autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True)
    return env.from_string(_HTML_TEMPLATE).render(**page)
