"""The evaluation report as a person sees it: report.html opened in headless chromium (Playwright driving Debian's
chromium). Every table has the rows x columns of the report's own tables (one <tr> per row, no Markdown separators
left in a cell), every plot and gallery image loads (naturalWidth > 0), annotator text stays text (no markup from a
cell), and a full-page screenshot is written (``GEOLABEL_SCREENSHOT_DIR=docs/screenshots`` keeps it as
docs/screenshots/evaluation_report.png). The pipeline is the colour-threshold test double on the generated benchmark:
its scores mean nothing about GeoSeg.
"""

from __future__ import annotations

import pytest

from geoseg.evaluation.bench import read_benchmark
from geoseg.evaluation.harness import evaluate
from geoseg.evaluation.report import report_tables, write_report
from tests.fixtures.browser import chromium_page, screenshot_dir
from tests.fixtures.evaluation import ColourPipeline, load_make_bench

HOSTILE = "v1 | <img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    bench = read_benchmark(load_make_bench().make_bench(root / "bench", per_domain=3, size=48))
    runs = {name: evaluate(ColourPipeline(threshold=t, version=f"double-{name}"), bench, root / "cache", label=name)
            for name, t in (("full", 60.0), ("no_refine", 80.0), ("no_route_a", 40.0), ("no_route_b", 100.0))}
    quality = [{"model_version": HOSTILE, "n": 3, "acceptance_rate": 0.66},
               {"model_version": "v2", "n": 5, "acceptance_rate": 0.8}]
    judge = [{"group": "all", "n": 2, "faithfulness": 3.5}]
    files = write_report(root / "out", runs, quality=quality, judge=judge, gallery_n=2,
                         title="Report page test: colour-threshold test double, not GeoSeg (scores mean nothing)")
    return files, report_tables(runs, runs["full"], quality, judge)


def test_report_renders_tables_and_images_in_chromium(report, tmp_path):
    files, tables = report
    with chromium_page(width=1200, height=900) as page:
        page.goto(files.html.resolve().as_uri())
        page.wait_for_load_state("load")
        shown = page.evaluate("""() => [...document.querySelectorAll('table')].map(t => ({
            heading: t.previousElementSibling ? t.previousElementSibling.textContent.trim() : '',
            header: [...t.querySelectorAll('thead th')].map(c => c.textContent),
            rows: [...t.querySelectorAll('tbody tr')].map(r => [...r.querySelectorAll('td')].map(c => c.textContent)),
        }))""")
        assert [t["heading"] for t in shown] == [t.heading for t in tables]
        for want, got in zip(tables, shown, strict=True):
            assert got["header"] == list(want.header), want.heading
            assert len(got["rows"]) == len(want.rows), want.heading
            assert all(len(r) == len(want.header) for r in got["rows"]), want.heading
            assert got["rows"] == [[str(c) for c in r] for r in want.rows], want.heading
            assert not any("---" in c for r in got["rows"] for c in r), want.heading
        # the hostile quality cell is one cell of text, not an element
        assert HOSTILE in [c for t in shown for r in t["rows"] for c in r]
        assert page.evaluate("() => document.querySelectorAll('td img').length") == 0
        images = page.evaluate("""() => [...document.images].map(i => ({src: i.getAttribute('src'),
                                      w: i.naturalWidth, done: i.complete}))""")
        srcs = {i["src"] for i in images}
        want_srcs = {p.relative_to(files.out_dir).as_posix() for p in (*files.plots, *files.gallery)}
        assert srcs == want_srcs
        broken = [i["src"] for i in images if not (i["done"] and i["w"] > 0)]
        assert not broken, f"images that did not load: {broken}"
        shot = screenshot_dir(tmp_path) / "evaluation_report.png"
        page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
