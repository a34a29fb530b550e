"""``geolabel demo``: the whole loop on embedded defaults over the real aerial imagery in ``tests/data/aerial``.

SQLite in the data dir, a local blob directory, Prefect's ephemeral server, a local Label Studio started from
``.venv-ls`` by :mod:`labeling.server` (or an already running one named by the settings). Steps:

ingest -> intake project (one task per image, where a person writes queries) -> preannotate (tiny random models: the
masks mean nothing) -> push -> a SIMULATED ANNOTATOR (this script, not a person) accepts, corrects, rejects or marks
"no target" through the Label Studio API -> sync -> COCO export and a benchmark snapshot. It prints the Label Studio
URLs, the name of the token's environment variable, the outputs, and what a person does next: write a query in the
intake project, run the exact ``geolabel cycle --intake`` command printed (:func:`next_steps`), find the pre-label in
the review project; or start the ML backend for pre-labels on demand.

Re-running is safe: every stage is idempotent, and the simulated annotator only touches tasks nobody annotated yet
whose query comes from the demo's queries file (a person's own intake queries are left to the person).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
AERIAL_DIR = REPO_ROOT / "tests" / "data" / "aerial"
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
    project_title: str = DEMO_PROJECT
    intake_title: str = ""
    intake_url: str = ""
    reports: dict[str, Any] = field(default_factory=dict)
    actions: list[SimulatedAction] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)  # what a person runs next (see next_steps)


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


def demo_item_ids(session: Any, queries_file: Path = DEMO_QUERIES) -> set[int]:
    """The items of the demo's queries file: (image file name, query key) pairs matched against the database."""
    import sqlalchemy as sa

    from flows.ingest import parse_queries
    from geoseg.vocabulary import query_key
    from storage.models import Image, Item

    rows, _issues = parse_queries(queries_file.read_bytes(), name=str(queries_file))
    wanted = {(r.image.replace("\\", "/").rsplit("/", 1)[-1], query_key(r.query)) for r in rows}
    q = sa.select(Item.id, Item.query, Image.uri).join(Image, Item.image_id == Image.id)
    return {
        int(iid)
        for iid, query, uri in session.execute(q)
        if (str(uri).replace("\\", "/").rsplit("/", 1)[-1], query_key(query)) in wanted
    }


def simulate_annotator(
    client: Any, session: Any, ls_project_id: int, *, seed: int = 0, only_items: Collection[int] | None = None
) -> list[SimulatedAction]:
    """A SIMULATED annotator (clearly not a person): annotate every task that has no annotation yet (restricted to
    the items ``only_items`` when given), through the same Label Studio API the web UI uses. Decisions cycle through
    :data:`ACTIONS`; an "accept" of an empty pre-label becomes a correction (an accepted mask must not be empty)."""
    import sqlalchemy as sa

    from labeling.push import brush_result
    from storage.models import Image, Item, LabelProject, LabelTask

    q = (
        sa.select(LabelTask.ls_task_id, Image.height, Image.width, LabelTask.item_id)
        .join(Item, LabelTask.item_id == Item.id)
        .join(Image, Item.image_id == Image.id)
        .join(LabelProject, LabelTask.label_project_id == LabelProject.id)
        .where(LabelProject.ls_project_id == ls_project_id)
    )
    allowed = None if only_items is None else {int(i) for i in only_items}
    sizes = {int(t): (int(h), int(w)) for t, h, w, iid in session.execute(q) if allowed is None or int(iid) in allowed}
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
    intake_title: str | None = None,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> DemoResult:
    from flows.cycle import label_cycle_flow
    from flows.datasets import export_flow, snapshot_flow
    from flows.labeling_flows import label_studio_client, sync_flow
    from flows.runtime import open_runtime, settings_from
    from geoseg.types import TINY_MODEL_WARNING
    from labeling.intake import DEFAULT_INTAKE_TITLE

    intake_title = intake_title or DEFAULT_INTAKE_TITLE
    overrides: dict[str, Any] = {"data_dir": str(data_dir)} if data_dir else {}
    settings = settings_from(overrides)
    settings, started, creds = _label_studio(settings, start_label_studio, echo)
    overrides = {**overrides, "label_studio_url": settings.label_studio_url}
    rt = open_runtime(settings_from(overrides))
    echo(f"data dir: {rt.settings.data_dir}")
    echo(f"Label Studio: {settings.label_studio_url}")

    echo("1-4/7 ingest -> intake tasks + written queries -> pre-annotate -> push -> sync (one label cycle)")
    cycle = label_cycle_flow(
        str(AERIAL_DIR),
        str(DEMO_QUERIES),
        profile=profile,
        settings_overrides=overrides,
        project_title=project_title,
        intake=True,
        intake_title=intake_title,
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
        project_title=project_title,
        intake_title=intake_title,
        intake_url=f"{cycle.intake.label_studio_url}/projects/{cycle.intake.ls_project_id}" if cycle.intake else "",
    )
    result.reports["cycle"] = cycle.to_dict()
    if cycle.intake:
        echo(
            f"   intake project {result.intake_url}: {cycle.intake.tasks_created} new task(s); "
            f"{cycle.intake.queries} quer(ies) written there so far"
        )

    echo(f"5/7 {SIMULATED_ANNOTATOR}: verifying tasks through the Label Studio API")
    from sqlalchemy.orm import Session

    with label_studio_client(rt.settings) as client, Session(rt.engine) as session:
        mine = demo_item_ids(session)  # never the queries a person wrote in the intake project
        result.actions = simulate_annotator(client, session, cycle.push.ls_project_id, seed=seed, only_items=mine)
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
    result.commands = next_steps(result, profile=profile)
    return result


def _in_repo(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it (the printed commands start with ``cd REPO``)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def _geolabel_exe() -> str:
    """The installed ``geolabel`` script next to this interpreter (``.venv/bin/geolabel`` in a checkout)."""
    exe = Path(sys.executable).parent / "geolabel"
    return _in_repo(exe if exe.exists() else REPO_ROOT / ".venv" / "bin" / "geolabel")


def next_steps(res: DemoResult, *, profile: str = "tiny") -> dict[str, str]:
    """The exact shell lines a person runs after the demo (no secret in them: the token is read from its file).

    Keys: ``env`` (lines to paste once per shell, from the repository root), ``cycle`` (the next label cycle, which
    pulls the intake queries), ``ml_backend`` (pre-labels on demand, connected to the review project).
    """
    q = shlex.quote
    env = [
        f"cd {q(str(REPO_ROOT))}",
        "source scripts/env.sh",
        f"export GEOLABEL_LABEL_STUDIO_URL={q(res.label_studio_url)}",
    ]
    if res.credentials_file:
        env.append(
            f'export {res.token_env}="$({_in_repo(Path(sys.executable))} -c '
            f'\'import json,sys; print(json.load(open(sys.argv[1]))["token"])\' {q(res.credentials_file)})"'
        )
    else:
        env.append(f"# and {res.token_env}: the token this demo used (it came from your environment)")
    exe = _geolabel_exe()
    common = f"--data-dir {q(str(res.data_dir))}"  # spelled out: the commands work from any shell
    intake_opt = "" if res.intake_title in ("", _default_intake_title()) else f" --intake-title {q(res.intake_title)}"
    profile_opt = "" if profile == "tiny" else f" --profile {q(profile)}"
    cycle = f"{exe} cycle --intake --project {q(res.project_title)}{intake_opt}{profile_opt} {common}"
    ml = (
        f"{exe} ml-backend --profile {q(profile)} --port 9090 --connect --project-title {q(res.project_title)} {common}"
    )
    return {"env": "\n".join(env), "cycle": cycle, "ml_backend": ml}


def _default_intake_title() -> str:
    from labeling.intake import DEFAULT_INTAKE_TITLE

    return DEFAULT_INTAKE_TITLE


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
    if not res.commands:
        return
    echo("")
    echo("=== now write your own query (you, not the simulated annotator) ===")
    echo(f'1. Open the intake project "{res.intake_title}": {res.intake_url}')
    echo("   Pick an image, type what should be segmented (one query per line; level and domain optional), Submit.")
    echo("2. Run the next label cycle: it pulls your query, pre-annotates it and pushes a review task.")
    echo("   In a shell (paste once; the token is read from its file, never printed):")
    for line in res.commands["env"].splitlines():
        echo(f"     {line}")
    echo(f"     {res.commands['cycle']}")
    echo(f'3. Open the review project "{res.project_title}": {res.project_url}')
    echo("   A new task shows your query with the GeoSeg pre-label (tiny models: a meaningless mask) to verify.")
    echo("   (`geolabel serve --project ...` runs this cycle on a schedule, intake included; GEOLABEL_INTAKE=false or")
    echo("   --no-intake leaves the intake project out.)")
    echo("Pre-labels on demand: in the same shell start the ML backend, connected to the review project:")
    echo(f"     {res.commands['ml_backend']}")
    echo("   then in the review project select tasks -> Actions -> Retrieve Predictions for fresh GeoSeg pre-labels")
    echo("   (with model_version; a new query via POST /api/ml/{id}/interactive-annotating, see README).")
