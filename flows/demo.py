"""``geolabel demo``: the whole loop on embedded defaults over the real aerial imagery in ``tests/data/aerial``.

SQLite in the data dir, a local blob directory, Prefect's ephemeral server, a local Label Studio started from
``.venv-ls`` by :mod:`labeling.server` (or an already running one named by the settings). Steps:

ingest -> preannotate (tiny random models: the masks mean nothing) -> push -> a SIMULATED ANNOTATOR (this script, not
a person) accepts, corrects, rejects or marks "no target" through the Label Studio API -> sync -> COCO export and a
benchmark snapshot. It prints the Label Studio URL, the name of the token's environment variable, and the outputs.

Re-running is safe: every stage is idempotent and the simulated annotator only touches tasks nobody annotated yet.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

AERIAL_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "aerial"
DEMO_QUERIES = AERIAL_DIR / "queries.csv"
DEMO_PROJECT = "GeoSeg demo (tiny models)"
SIMULATED_ANNOTATOR = "SIMULATED ANNOTATOR (demo script, not a person)"

#: The simulated annotator's decision for the i-th unannotated task (cycled): what a verifier typically does.
ACTIONS = ("accept", "correct", "accept", "reject", "no target")


@dataclass
class SimulatedAction:
    ls_task_id: int
    action: str  # accept (pre-label as is) | correct (edited mask, then accept) | reject | no target
    ls_annotation_id: int
    mask_pixels: int


@dataclass
class DemoResult:
    data_dir: Path
    label_studio_url: str
    project_url: str
    token_env: str
    credentials_file: str | None
    started_label_studio: bool
    reports: dict[str, Any] = field(default_factory=dict)
    actions: list[SimulatedAction] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)


def _verdict_region(choice: str) -> dict[str, Any]:
    from labeling.project import IMAGE_TO, VERDICT_FROM

    return {"from_name": VERDICT_FROM, "to_name": IMAGE_TO, "type": "choices", "value": {"choices": [choice]}}


def _prelabel_mask(task: dict[str, Any], height: int, width: int) -> np.ndarray:
    from labeling.brush import rle_to_mask

    mask = np.zeros((height, width), dtype=bool)
    for pred in task.get("predictions") or []:
        for region in pred.get("result") or []:
            value = region.get("value") or {}
            if region.get("type") == "brushlabels" and "rle" in value:
                mask |= rle_to_mask(value["rle"], height, width)
    return mask


def corrected_mask(prelabel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The simulated correction: grow a non-empty pre-label by a few pixels; for an empty one draw an ellipse
    around a point near the centre (what an annotator does when the model missed)."""
    from scipy import ndimage

    h, w = prelabel.shape
    if prelabel.any():
        return ndimage.binary_dilation(prelabel, iterations=int(rng.integers(2, 6)))
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    ry, rx = h * rng.uniform(0.08, 0.2), w * rng.uniform(0.08, 0.2)
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def simulate_annotator(client: Any, session: Any, ls_project_id: int, *, seed: int = 0) -> list[SimulatedAction]:
    """A SIMULATED annotator (clearly not a person): annotate every task that has no annotation yet, through the same
    Label Studio API the web UI uses. Decisions cycle through :data:`ACTIONS`; an "accept" of an empty pre-label
    becomes a correction (an accepted mask must not be empty)."""
    import sqlalchemy as sa

    from labeling.push import brush_result
    from storage.models import Image, Item, LabelProject, LabelTask

    q = (
        sa.select(LabelTask.ls_task_id, Image.height, Image.width)
        .join(Item, LabelTask.item_id == Item.id)
        .join(Image, Item.image_id == Image.id)
        .join(LabelProject, LabelTask.label_project_id == LabelProject.id)
        .where(LabelProject.ls_project_id == ls_project_id)
    )
    sizes = {int(t): (int(h), int(w)) for t, h, w in session.execute(q)}
    rng = np.random.default_rng(seed)
    actions: list[SimulatedAction] = []
    tasks = sorted(client.iter_tasks(ls_project_id, fields="all"), key=lambda t: t["id"])
    for i, task in enumerate(tasks):
        if task.get("annotations") or int(task["id"]) not in sizes:
            continue
        h, w = sizes[int(task["id"])]
        action = ACTIONS[i % len(ACTIONS)]
        pre = _prelabel_mask(task, h, w)
        if action == "accept" and not pre.any():
            action = "correct"
        if action in ("accept", "correct"):
            mask = pre if action == "accept" else corrected_mask(pre, rng)
            result = brush_result(mask) + [_verdict_region("accept")]
        elif action == "reject":
            mask = pre
            result = brush_result(pre) + [_verdict_region("reject")]
        else:
            mask = np.zeros((h, w), dtype=bool)
            result = [_verdict_region("no target")]
        made = client.create_annotation(int(task["id"]), result, lead_time=float(rng.uniform(4.0, 40.0)))
        actions.append(SimulatedAction(int(task["id"]), action, int(made["id"]), int(mask.sum())))
    return actions


def _label_studio(settings: Any, start: bool, echo: Callable[[str], None]) -> tuple[Any, bool, str | None]:
    """Settings pointing at a usable Label Studio: the configured one when its token works, else a local one started
    from .venv-ls (its token is put into this process's environment under the settings' variable name)."""
    import httpx

    token = settings.label_studio_token()
    if token:
        try:
            r = httpx.get(
                f"{settings.label_studio_url}/api/current-user/whoami",
                headers={"Authorization": f"Token {token.get_secret_value()}"},
                timeout=5.0,
            )
            if r.status_code == 200:
                return settings, False, None
        except httpx.HTTPError:
            pass
    if not start:
        env = settings.label_studio_token_env
        raise RuntimeError(f"no Label Studio answers at {settings.label_studio_url} with the token in ${env}")
    from labeling.server import LabelStudioServer

    srv = LabelStudioServer.from_settings(settings)
    echo(f"starting a local Label Studio from {srv.venv} (first start runs its migrations: a minute or more) ...")
    st = srv.start()
    os.environ[settings.label_studio_token_env] = srv.token().get_secret_value()
    return settings.with_(label_studio_url=st.url), True, str(srv.credentials_file)


def run_demo(
    data_dir: str | Path | None = None,
    *,
    start_label_studio: bool = True,
    profile: str = "tiny",
    project_title: str = DEMO_PROJECT,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    from flows.cycle import label_cycle_flow
    from flows.datasets import export_flow, snapshot_flow
    from flows.labeling_flows import label_studio_client, sync_flow
    from flows.runtime import open_runtime, settings_from
    from geoseg.types import TINY_MODEL_WARNING

    overrides: dict[str, Any] = {"data_dir": str(data_dir)} if data_dir else {}
    settings = settings_from(overrides)
    settings, started, creds = _label_studio(settings, start_label_studio, echo)
    overrides = {**overrides, "label_studio_url": settings.label_studio_url}
    rt = open_runtime(settings_from(overrides))
    echo(f"data dir: {rt.settings.data_dir}")
    echo(f"Label Studio: {settings.label_studio_url}")

    echo("1-4/7 ingest -> pre-annotate -> push -> sync (one label cycle)")
    cycle = label_cycle_flow(
        str(AERIAL_DIR), str(DEMO_QUERIES), profile=profile, settings_overrides=overrides, project_title=project_title
    )
    if cycle.preannotate.meaningless or profile == "tiny":
        echo(f"NOTE: {TINY_MODEL_WARNING}")
    result = DemoResult(
        data_dir=rt.settings.data_dir,
        label_studio_url=settings.label_studio_url,
        project_url=f"{settings.label_studio_url}/projects/{cycle.push.ls_project_id}",
        token_env=settings.label_studio_token_env,
        credentials_file=creds,
        started_label_studio=started,
    )
    result.reports["cycle"] = cycle.to_dict()

    echo(f"5/7 {SIMULATED_ANNOTATOR}: verifying tasks through the Label Studio API")
    from sqlalchemy.orm import Session

    with label_studio_client(rt.settings) as client, Session(rt.engine) as session:
        result.actions = simulate_annotator(client, session, cycle.push.ls_project_id, seed=seed)
    counts: dict[str, int] = {}
    for a in result.actions:
        counts[a.action] = counts.get(a.action, 0) + 1
    echo(f"   simulated: {counts or 'nothing new to annotate'}")

    echo("6/7 sync annotations back")
    result.reports["sync"] = sync_flow(settings_overrides=overrides, project_title=project_title).to_dict()

    echo("7/7 COCO export and benchmark snapshot")
    coco_dir = rt.settings.data_dir / "exports" / "coco"
    result.reports["export"] = export_flow(str(coco_dir), settings_overrides=overrides)
    try:
        result.reports["snapshot"] = snapshot_flow(
            "demo",
            settings_overrides=overrides,
            out_root=str(rt.settings.data_dir / "snapshots"),
            description="geolabel demo (tiny models, simulated annotator)",
        )
    except Exception as exc:  # noqa: BLE001 - e.g. nothing accepted yet: the rest of the demo stands
        result.reports["snapshot"] = {"error": f"{type(exc).__name__}: {exc}"}
    result.outputs = {
        "database": str(rt.settings.database_url),
        "blobs": str(rt.settings.blob_url),
        "coco": str(result.reports["export"].get("path", coco_dir / "instances.json")),
        "snapshot": str(result.reports["snapshot"].get("path", result.reports["snapshot"].get("error"))),
        "display_images": str(rt.settings.data_dir / "display"),
    }
    return result


def print_summary(res: DemoResult, echo: Callable[[str], None] = print) -> None:
    from geoseg.types import TINY_MODEL_WARNING

    echo("")
    echo("=== geolabel demo: done ===")
    echo(f"Label Studio:   {res.project_url}")
    if res.credentials_file:
        echo(f'  API token:    export {res.token_env}=<the "token" field of {res.credentials_file}>')
        echo(f'  web login:    the "email" and "password" fields of {res.credentials_file}')
    else:
        echo(f"  API token:    in ${res.token_env}")
    echo(f"  you will see: the demo tasks (image, query, tiny-model pre-label), annotated by the {SIMULATED_ANNOTATOR}")
    for k, v in res.outputs.items():
        echo(f"{k + ':':<16}{v}")
    echo(f"NOTE: {TINY_MODEL_WARNING}. For real masks run the 'paper' profile on a GPU (see README).")
    if res.started_label_studio:
        echo("Label Studio keeps running for you: `geolabel labelstudio stop` (or kill its process group) ends it.")
