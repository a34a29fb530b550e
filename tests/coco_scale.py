"""Scale check of the streamed COCO export: bulk-seed N small triplets, then export in a fresh process and report
its peak RSS. Used by tests/test_datasets_coco_scale.py; also runnable by hand:

    python -m tests.coco_scale seed DB_URL BLOB_DIR N
    python -m tests.coco_scale export DB_URL BLOB_DIR OUT_DIR [DOMAIN LEVEL]   # a JSON line with peak_rss_mb
"""

from __future__ import annotations

import json
import resource
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

SIDE = 16
N_MASKS = 256
N_IMAGES = 1000


def seed_bulk(url: str, blob_dir: str, n: int) -> None:
    import sqlalchemy as sa

    from storage.blobs import LocalBlobStore
    from storage.db import create_all, make_engine
    from storage.maskcodec import encode_mask
    from storage.models import Annotation, Image, Item, LabelProject, LabelTask, Triplet

    rng = np.random.default_rng(0)
    blobs = LocalBlobStore(blob_dir)
    shas = []
    for _ in range(N_MASKS):
        m = np.zeros((SIDE, SIDE), bool)
        x, y = rng.integers(0, SIDE - 4, 2)
        w, h = rng.integers(2, 5, 2)
        m[y:y + h, x:x + w] = True
        shas.append(blobs.put(encode_mask(m)))
    engine = make_engine(url)
    create_all(engine)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    domains, levels = ("Urban", "Rural", "Traffic", "Nature"), ("L1", "L2", "L3")
    with engine.begin() as c:
        c.execute(sa.insert(LabelProject), [{"id": 1, "label_studio_url": "http://x", "ls_project_id": 1}])
        c.execute(sa.insert(Image), [{"id": i + 1, "sha256": f"{i:064x}", "uri": f"/nowhere/{i}.png", "width": SIDE,
                                      "height": SIDE, "format": "PNG"} for i in range(N_IMAGES)])
        for lo in range(0, n, 20000):
            ids = range(lo + 1, min(n, lo + 20000) + 1)
            c.execute(sa.insert(Item), [{"id": i, "image_id": (i % N_IMAGES) + 1, "query": f"segment object {i}",
                                         "level": levels[i % 3], "domain": domains[i % 4], "status": "accepted"}
                                        for i in ids])
            c.execute(sa.insert(LabelTask), [{"id": i, "label_project_id": 1, "item_id": i, "ls_task_id": i}
                                             for i in ids])
            c.execute(sa.insert(Annotation), [{"id": i, "ls_annotation_id": i, "label_task_id": i, "item_id": i,
                                               "verdict": "accept", "mask_sha256": shas[i % N_MASKS],
                                               "created_at": now, "updated_at": now} for i in ids])
            c.execute(sa.insert(Triplet), [{"id": i, "annotation_id": i, "item_id": i, "image_id": (i % N_IMAGES) + 1,
                                            "query": f"segment object {i}", "mask_sha256": shas[i % N_MASKS],
                                            "domain": domains[i % 4], "level": levels[i % 3]} for i in ids])
    engine.dispose()


def export(url: str, blob_dir: str, out_dir: str, domain: str = "", level: str = "") -> dict:
    import pycocotools.mask  # noqa: F401 - imported before the baseline, like everything the export needs

    from storage.blobs import LocalBlobStore
    from storage.datasets.coco import export_coco
    from storage.datasets.select import DatasetFilter
    from storage.db import make_engine, session_scope

    f = DatasetFilter(domains=(domain,) if domain else (), levels=(level,) if level else ())
    engine = make_engine(url)
    reset = _reset_peak()
    base = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    with session_scope(engine) as s:
        res = export_coco(s, LocalBlobStore(blob_dir), out_dir, f)
    engine.dispose()
    peak = _rss_mb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"annotations": res.n_annotations, "images": res.n_images, "seconds": round(time.perf_counter() - t0, 2),
            "rss_before_mb": round(base, 1), "peak_rss_mb": round(peak, 1), "peak_reset": reset,
            "file_mb": round(Path(res.path).stat().st_size / 2**20, 1)}


def _rss_mb(field: str) -> float:
    """VmRSS / VmHWM of this process from /proc (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> bool:
    """Reset the peak-RSS mark (Linux: write 5 to /proc/self/clear_refs), so the peak measures the export only."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "seed":
        seed_bulk(args[0], args[1], int(args[2]))
    elif cmd == "export":
        print(json.dumps(export(*args)))
    else:
        raise SystemExit(f"unknown command {cmd!r}: seed or export")
