"""Benchmark: bulk push throughput (tasks/s) of GeoSeg pre-labels with 1024x1024 masks into a REAL Label Studio.

    .venv/bin/python benchmarks/bench_push.py [--tasks 200] [--batch 200] [--mask blob|noise] [--size 1024]
    .venv/bin/python benchmarks/bench_push.py --ab 3 --tasks 600 --size 512   # same-run A/B, see below

Starts a local Label Studio from .venv-ls in a temp dir (seeded from the test template in
~/.cache/geolabel/labelstudio-<version>-t<layout> when it exists, else a cold start with migrations), builds a temp
SQLite database with N images/items/predictions whose masks are synthetic (blob: one ellipse; noise: 50 % random
pixels), and times ``labeling.push.push_predictions`` end to end (mask blob read + decode, brush RLE encode, JSON,
HTTP import, Label Studio's own processing, database write).

``--ab R``: R rounds, each pushing the same N predictions into three fresh projects, in rotating order: with payloads
built in a worker thread during the imports (``overlap=True``, the default), built in line (``overlap=False``), and a
raw bulk import of the same payloads (prebuilt, the ceiling); prints each round's seconds and the ratios.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image as PILImage


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--mask", choices=["blob", "noise"], default="blob")
    ap.add_argument("--ab", type=int, default=0, help="rounds of overlap / inline / raw-import A/B (0: one push)")
    args = ap.parse_args()

    from sqlalchemy.orm import Session

    from labeling.client import LabelStudioClient
    from labeling.project import ensure_project
    from labeling.push import ImageUrlResolver, push_predictions
    from labeling.server import LabelStudioServer, default_venv
    from storage import repo
    from storage.blobs import LocalBlobStore
    from storage.db import create_all, make_engine
    from storage.maskcodec import encode_mask
    from storage.records import ImageRecord, ItemRecord, PredictionRecord

    work = Path(tempfile.mkdtemp(prefix="bench-push-"))
    venv = default_venv()
    stamp = venv / ".geolabel-stamp"
    tpl = Path.home() / ".cache" / "geolabel" / f"labelstudio-{stamp.read_text().strip() if stamp.exists() else '?'}"
    if tpl.exists():
        shutil.copytree(tpl, work / "ls")
    imagery = work / "imagery"
    imagery.mkdir()
    srv = LabelStudioServer(work / "ls", imagery_root=imagery)
    try:
        t = time.perf_counter()
        st = srv.start()
        print(f"Label Studio {st.version} up in {time.perf_counter() - t:.1f} s at {st.url}")
        n = args.size
        engine = make_engine(f"sqlite:///{work / 'db.sqlite'}")
        create_all(engine)
        blobs = LocalBlobStore(work / "blobs")
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[:n, :n]
        PILImage.fromarray(np.zeros((n, n, 3), np.uint8)).save(imagery / "base.png")
        with Session(engine) as s, LabelStudioClient(st.url, srv.token()) as client:
            for i in range(args.tasks):
                path = imagery / f"img_{i}.png"
                shutil.copyfile(imagery / "base.png", path)
                sha256 = f"{i:064x}"
                image_id = repo.upsert_images(s, [ImageRecord(sha256=sha256, uri=str(path), width=n, height=n)])[sha256]
                query = f"object {i}"
                item_id = repo.upsert_items(s, [ItemRecord(image_id=image_id, query=query)])[(image_id, query)]
                if args.mask == "noise":
                    mask = rng.random((n, n)) < 0.5
                else:
                    cy, cx, ry, rx = rng.uniform(0.3, 0.7) * n, rng.uniform(0.3, 0.7) * n, n / 8, n / 6
                    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
                sha = blobs.put(encode_mask(mask))
                repo.upsert_predictions(
                    s, [PredictionRecord(item_id=item_id, model_version="bench", mask_sha256=sha, score=0.5)]
                )
            s.commit()
            if args.ab:
                _ab(args, client, s, blobs, imagery, ImageUrlResolver.for_server(srv))
                return
            handle = ensure_project(client, s, "push benchmark", imagery_root=imagery)
            s.commit()
            rep = push_predictions(
                client, s, blobs, handle, "bench", image_url=ImageUrlResolver.for_server(srv), batch_size=args.batch
            )
        print(
            f"pushed {rep.pushed} tasks with {n}x{n} {args.mask} masks in {rep.seconds:.2f} s "
            f"({rep.tasks_per_second:.1f} tasks/s, {rep.requests} requests, batch {args.batch})"
        )
    finally:
        srv.stop()
        shutil.rmtree(work, ignore_errors=True)


def _ab(args, client, session, blobs, imagery, resolver) -> None:  # noqa: ANN001 - see main
    from labeling.project import ensure_project
    from labeling.push import push_predictions

    rows: dict[str, list[float]] = {"overlap": [], "inline": [], "raw": []}
    for r in range(args.ab):
        order = ["overlap", "inline", "raw"][r % 3 :] + ["overlap", "inline", "raw"][: r % 3]
        for mode in order:
            handle = ensure_project(client, session, f"push ab {r} {mode}", imagery_root=imagery)
            session.commit()
            if mode == "raw":
                tasks = [t for t in client.iter_tasks(_first_pushed(rows, client, session, r), fields="all")]
                payloads = [
                    {
                        "data": t["data"],
                        "predictions": [
                            {k: p[k] for k in ("result", "model_version", "score")} for p in t["predictions"]
                        ],
                    }
                    for t in tasks
                ]
                t0 = time.perf_counter()
                for i in range(0, len(payloads), args.batch):
                    client.import_tasks(handle.ls_project_id, payloads[i : i + args.batch])
                rows[mode].append(time.perf_counter() - t0)
            else:
                rep = push_predictions(
                    client,
                    session,
                    blobs,
                    handle,
                    "bench",
                    image_url=resolver,
                    batch_size=args.batch,
                    overlap=mode == "overlap",
                )
                assert rep.pushed == args.tasks and not rep.failed, rep
                rows[mode].append(rep.seconds)
        print(f"round {r}: " + ", ".join(f"{m} {rows[m][-1]:.2f} s" for m in ("overlap", "inline", "raw")))
    med = {m: float(np.median(v)) for m, v in rows.items()}
    print(
        f"median of {args.ab}: overlap {med['overlap']:.2f} s, inline {med['inline']:.2f} s, raw {med['raw']:.2f} s; "
        f"push_predictions / raw rate: overlap {med['raw'] / med['overlap']:.2f}x, "
        f"inline {med['raw'] / med['inline']:.2f}x"
    )


def _first_pushed(rows, client, session, r) -> int:  # noqa: ANN001
    """The Label Studio id of a project of round r (or any earlier) holding the pushed tasks (the raw payloads)."""
    from storage.models import LabelProject

    for title in (f"push ab {r} overlap", f"push ab {r} inline"):
        row = session.query(LabelProject).filter_by(title=title).one_or_none()
        if row is not None and next(client.iter_tasks(row.ls_project_id, page_size=1), None) is not None:
            return row.ls_project_id
    row = session.query(LabelProject).filter(LabelProject.title.like("push ab % overlap")).first()
    return row.ls_project_id


if __name__ == "__main__":
    main()
