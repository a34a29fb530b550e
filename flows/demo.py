"""``geolabel demo``: the whole loop on embedded defaults over the real aerial imagery in ``tests/data/aerial``.

SQLite in the data dir, a local blob directory, the data dir's local Prefect server, a local Label Studio started from
``.venv-ls`` by :mod:`labeling.server` (or an already running one named by the settings). Steps:

ingest -> intake project (one task per image, where a person writes queries) -> preannotate (tiny random models: the
masks mean nothing) -> push -> a SIMULATED ANNOTATOR (:mod:`labeling.simulated_annotator`, a script, not a person)
accepts, corrects, rejects or marks "no target" through the Label Studio API -> sync -> COCO export and a benchmark
snapshot. It prints the Label Studio URLs, the outputs, and what a person does next: write a query in the intake
project, run the one command printed (:func:`next_steps`: ``cd REPO && .venv/bin/geolabel cycle --intake``; the
command finds the data dir, the local Label Studio and its token by itself), find the pre-label in the review project.

Re-running is safe: every stage is idempotent, and the simulated annotator only touches tasks nobody annotated yet
whose query comes from the demo's queries file (a person's own intake queries are left to the person).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labeling.simulated_annotator import SIMULATED_ANNOTATOR, SimulatedAction

REPO_ROOT = Path(__file__).resolve().parents[1]
AERIAL_DIR = REPO_ROOT / "tests" / "data" / "aerial"
DEMO_QUERIES = AERIAL_DIR / "queries.csv"
DEMO_PROJECT = "GeoSeg demo (tiny models)"

__all__ = ["SIMULATED_ANNOTATOR", "DemoResult", "next_steps", "print_summary", "run_demo"]


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


def demo_item_ids(session: Any, queries_file: Path = DEMO_QUERIES) -> set[int]:
    """The items of the demo's queries file: (image file name, query key) pairs matched against the database."""
    from flows.ingest import parse_queries
    from geoseg.vocabulary import query_key
    from storage.repo.images import item_image_queries

    rows, _issues = parse_queries(queries_file.read_bytes(), name=str(queries_file))
    wanted = {(r.image.replace("\\", "/").rsplit("/", 1)[-1], query_key(r.query)) for r in rows}
    return {
        iid
        for iid, query, uri in item_image_queries(session)
        if (uri.replace("\\", "/").rsplit("/", 1)[-1], query_key(query)) in wanted
    }


def _label_studio(settings: Any, start: bool, echo: Callable[[str], None]) -> tuple[Any, bool, str | None]:
    """Settings pointing at a usable Label Studio: the configured (or this data dir's local) one when its token works,
    else a local one started from .venv-ls. Returns (settings, started, credentials file or None)."""
    from labeling.server import LabelStudioServer, probe_label_studio, server_root

    local = None if settings.label_studio_token() else server_root(settings.data_dir) / "credentials.json"
    if probe_label_studio(settings).get("token_ok"):  # answers, and the token (env, else its file) works
        return settings, False, str(local) if local else None  # local: the token came from its file
    if not start:
        env = settings.label_studio_token_env
        raise RuntimeError(f"no Label Studio answers at {settings.label_studio_url} with the token in ${env}")
    srv = LabelStudioServer.from_settings(settings)
    echo(f"starting a local Label Studio from {srv.venv} (first start runs its migrations: a minute or more) ...")
    st = srv.start()
    os.environ[settings.label_studio_token_env] = srv.token().get_secret_value()  # this process's flows use it
    return settings.with_(label_studio_url=st.url), True, str(srv.credentials_file)


def _simulate(rt: Any, ls_project_id: int, seed: int, echo: Callable[[str], None]) -> list[SimulatedAction]:
    """Step 5: the simulated annotator on the demo's own items (never the queries a person wrote in intake)."""
    from flows.labeling_flows import label_studio_client
    from labeling.simulated_annotator import simulate_annotator

    echo(f"5/7 {SIMULATED_ANNOTATOR}: verifying tasks through the Label Studio API")
    with label_studio_client(rt.settings) as client, rt.session() as session:
        actions = simulate_annotator(client, session, ls_project_id, seed=seed, only_items=demo_item_ids(session))
    counts: dict[str, int] = {}
    for a in actions:
        counts[a.action] = counts.get(a.action, 0) + 1
    echo(f"   simulated: {counts or 'nothing new to annotate'}")
    return actions


def _export(rt: Any, overrides: dict[str, Any], result: DemoResult, echo: Callable[[str], None]) -> None:
    """Step 7: a COCO export and a benchmark snapshot (a snapshot with nothing accepted is reported, not raised)."""
    from flows.datasets import export_flow, snapshot_flow

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
    """The seven steps (see the module docstring); returns what was done and what a person runs next."""
    from flows.cycle import label_cycle_flow
    from flows.labeling_flows import sync_flow
    from flows.runtime import open_runtime, settings_from
    from geoseg.types import TINY_MODEL_WARNING
    from labeling.intake import DEFAULT_INTAKE_TITLE

    intake_title = intake_title or DEFAULT_INTAKE_TITLE
    overrides: dict[str, Any] = {"data_dir": str(data_dir)} if data_dir else {}
    settings, started, creds = _label_studio(settings_from(overrides), start_label_studio, echo)
    overrides = {**overrides, "label_studio_url": settings.label_studio_url}
    rt = open_runtime(settings_from(overrides))
    echo(f"data dir: {rt.settings.data_dir}")
    echo(f"Label Studio: {settings.label_studio_url}")

    echo("1-4/7 ingest -> intake tasks + written queries -> pre-annotate -> push -> sync (one label cycle)")
    cycle = label_cycle_flow(str(AERIAL_DIR), str(DEMO_QUERIES), profile=profile, settings_overrides=overrides,
                             project_title=project_title, intake=True, intake_title=intake_title)
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
        echo(f"   intake project {result.intake_url}: {cycle.intake.tasks_created} new task(s); "
             f"{cycle.intake.queries} quer(ies) written there so far")
    result.actions = _simulate(rt, cycle.push.ls_project_id, seed, echo)
    echo("6/7 sync annotations back")
    result.reports["sync"] = sync_flow(settings_overrides=overrides, project_title=project_title).to_dict()
    _export(rt, overrides, result, echo)
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
    """The exact shell lines a person runs after the demo, from any shell, with nothing exported.

    Keys: ``cycle`` (the next label cycle, pulling the intake queries: ``cd REPO && .venv/bin/geolabel cycle
    --intake``), ``open`` (the projects' URLs), ``ml_backend`` (pre-labels on demand, connected to the review
    project). The commands find the data dir (``REPO/.geolabel``, else ``--data-dir`` is spelled out), the local
    Label Studio and its token by themselves; the review project is the one holding the demo's tasks.
    """
    q = shlex.quote
    exe = _geolabel_exe()
    cd = f"cd {q(str(REPO_ROOT))} && "
    default_dir = (REPO_ROOT / ".geolabel").resolve()
    common = "" if Path(res.data_dir).resolve() == default_dir else f" --data-dir {q(str(res.data_dir))}"
    intake_opt = "" if res.intake_title in ("", _default_intake_title()) else f" --intake-title {q(res.intake_title)}"
    profile_opt = "" if profile == "tiny" else f" --profile {q(profile)}"
    env = ""
    if not res.credentials_file:  # a Label Studio of the user's own: its URL and token come from their environment
        env = f"GEOLABEL_LABEL_STUDIO_URL={q(res.label_studio_url)} "
    return {
        "cycle": f"{cd}{env}{exe} cycle --intake{intake_opt}{profile_opt}{common}",
        "open": f"{cd}{env}{exe} open{common}",
        "ml_backend": f"{cd}{env}{exe} ml-backend --profile {q(profile)} --port 9090 --connect{common}",
    }


def _default_intake_title() -> str:
    from labeling.intake import DEFAULT_INTAKE_TITLE

    return DEFAULT_INTAKE_TITLE


def print_summary(res: DemoResult, echo: Callable[[str], None] = print) -> None:
    """The demo's closing lines: where everything is, and the one command a person runs next."""
    from geoseg.types import TINY_MODEL_WARNING

    echo("")
    echo("=== geolabel demo: done ===")
    echo(f"Label Studio:   {res.project_url}")
    if res.credentials_file:
        echo(f'  web login:    the "email" and "password" fields of {res.credentials_file}')
    else:
        echo(f"  API token:    in ${res.token_env}")
    echo(f"  you will see: the demo tasks (image, query, tiny-model pre-label), annotated by the {SIMULATED_ANNOTATOR}")
    for k, v in res.outputs.items():
        echo(f"{k + ':':<16}{v}")
    echo(f"NOTE: {TINY_MODEL_WARNING}. For real masks run the 'paper' profile on a GPU (see README).")
    if res.started_label_studio:
        echo("Label Studio keeps running for you: `geolabel labelstudio stop` ends it.")
    if not res.commands:
        return
    echo("")
    echo("=== now write your own query (you, not the simulated annotator) ===")
    echo(f'1. Open the intake project "{res.intake_title}": {res.intake_url}')
    echo("   Pick an image, type what should be segmented (one query per line; level and domain optional), Submit.")
    echo("2. Run the next label cycle (any shell, nothing to export): it pulls your query, pre-annotates, pushes it:")
    echo(f"     {res.commands['cycle']}")
    echo(f'3. Open the review project "{res.project_title}": {res.project_url}')
    echo("   A new task shows your query with the GeoSeg pre-label (tiny models: a meaningless mask) to verify.")
    echo(f"   (`{res.commands['open']}` prints these URLs again; `geolabel serve` runs the cycle on a schedule.)")
    echo("Pre-labels on demand, and a mask corrected with a click: start the ML backend for the review project:")
    echo(f"     {res.commands['ml_backend']}")
    echo("   then in the review project select tasks -> Actions -> Retrieve Predictions for fresh GeoSeg pre-labels,")
    echo("   or open a task, switch Auto-Annotation on and click the target with the smart Key Point tool (README).")
