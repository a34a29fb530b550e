"""Worker for the kill-and-rerun suite (tests/integration/test_reliability_kill.py): ``python kill_worker.py JSON``.

It runs one phase of the real loop -- ``cycle`` (label_cycle_flow: ingest -> preannotate -> push -> sync) or
``sync_export`` (sync_flow, then export_flow) -- against the services named in the JSON (database URL, blob URL,
Label Studio, Prefect API from the environment), and may be armed to SIGKILL ITSELF at the ``at``-th pass through one
named point of the real code. Killing from inside makes the point exact and reproducible from a seed; SIGKILL leaves
no chance to clean up, exactly like an OOM kill or a pulled plug. The points:

=============== =========================================================== ======================================
point           where                                                       state left behind
=============== =========================================================== ======================================
ingest-read     before the at-th image is read (geoseg.imagery.read_image)  earlier image blobs written, no rows
ingest-items    after the items upsert, before its commit                   images committed, items not
preannotate     after the at-th predictions upsert, before its commit       mask blobs written, rows not
import          after the at-th Label Studio import returned                tasks in Label Studio, not in the DB
sync            before the at-th task's annotations are applied             part of the sync uncommitted
export          before the at-th mask is encoded into the COCO file         a partial export file
=============== =========================================================== ======================================

The model stage is the instant orchestration-only double from tests/fixtures/instant.py (no model weights, fixed
masks), so a trial costs seconds; everything else is the real code and the real services.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

POINTS = {
    "ingest-read": ("geoseg.imagery", "read_image", "before"),
    "ingest-items": ("storage.repo", "upsert_items", "after"),
    "preannotate": ("storage.repo", "upsert_predictions", "after"),
    "import": ("labeling.client:LabelStudioClient", "import_tasks", "after"),
    "sync": ("labeling.sync", "_apply_task", "before"),
    "export": ("storage.datasets.coco", "coco_rle_entry", "before"),
}


def arm(point: str, at: int) -> None:
    import importlib

    where, name, when = POINTS[point]
    mod_name, _, cls_name = where.partition(":")
    owner = importlib.import_module(mod_name)
    if cls_name:
        owner = getattr(owner, cls_name)
    original = getattr(owner, name)
    count = {"n": 0}

    def maybe_kill() -> None:
        count["n"] += 1
        if count["n"] == at:
            sys.stdout.write(f"KILLING-AT {point} {at}\n")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def wrapped(*args, **kwargs):
        if when == "before":
            maybe_kill()
        out = original(*args, **kwargs)
        if when == "after":
            maybe_kill()
        return out

    setattr(owner, name, wrapped)


def main(cfg: dict) -> None:
    from tests.fixtures.instant import register_instant

    if cfg.get("kill"):
        arm(cfg["kill"]["point"], int(cfg["kill"]["at"]))
    profile = register_instant("instant-kill")
    over = cfg["overrides"]
    if cfg["phase"] == "cycle":
        from flows.cycle import label_cycle_flow

        rep = label_cycle_flow(
            cfg["source"], cfg["queries"], profile=profile, settings_overrides=over,
            project_title=cfg["title"], batch_size=2, push_batch_size=3,
        )
        print("PHASE-DONE", json.dumps(rep.to_dict(), default=str))
    elif cfg["phase"] == "sync_export":
        from flows.datasets import export_flow
        from flows.labeling_flows import sync_flow

        s = sync_flow(settings_overrides=over, project_title=cfg["title"])
        e = export_flow(cfg["export_dir"], settings_overrides=over)
        print("PHASE-DONE", json.dumps({"sync": s.to_dict(), "export": e}, default=str))
    else:
        raise SystemExit(f"unknown phase {cfg['phase']!r}")


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
