"""One local Prefect server per data dir, run history and artifacts that persist, and what each flow run reports.

**The local server** (managed like ``labeling.server``'s Label Studio)::

    <data_dir>/prefect/
      server.json    pid, port, API URL of the running server
      server.log     its output
      prefect.db     its SQLite database: flow runs, logs and artifacts survive the commands that made them
      home/          its PREFECT_HOME

:func:`use_local_server` is what a command calls first: an explicit ``PREFECT_API_URL`` (environment) always wins
and nothing is started; otherwise the data dir's server is found (``server.json``, a live process, a healthy API) or
started (``prefect server start`` in its own session, so a command killed with SIGKILL takes no Prefect process with
it and leaves nothing half-started behind: the one server is recorded and reused by the next command), and this
process is pointed at it. Prefect's ephemeral per-process server, the one that used to be orphaned by every killed
command, is never started. The UI is served at the server's URL (``PrefectServer.ui_url``).

**Reports** (:func:`publish_report`, one call at the end of a flow): a Markdown artifact with the run's counts, its
failures with their reasons and links (the Label Studio project), and a table artifact of the failures; keyed per
stage (``geolabel-<stage>``) so the Prefect UI's Artifacts page shows each stage's history. :func:`stage_progress`
gives a long stage a progress artifact. Both are no-ops outside a flow run and never fail the flow.

**Console** (:func:`configure_console`): library loggers (Prefect, httpx, transformers, uvicorn, alembic, …) and
their progress bars go to ``<data_dir>/logs/geolabel.log`` instead of the terminal; ``verbose=True`` keeps them on
the terminal too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from labeling.server import pid_alive, stop_process_group  # the same process handling as the local Label Studio

log = logging.getLogger(__name__)

#: Loggers whose INFO chatter is library noise on the terminal (kept in the log file).
NOISY_LOGGERS = ("prefect", "httpx", "httpcore", "transformers", "huggingface_hub", "uvicorn", "alembic", "urllib3",
                 "botocore", "boto3", "asyncio", "aiosqlite", "timm", "open_clip", "matplotlib", "PIL")


class PrefectServerError(RuntimeError):
    """The local Prefect server could not be started or reached."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PrefectStatus:
    running: bool
    api_url: str | None
    pid: int | None
    version: str | None = None
    detail: str = ""

    @property
    def ui_url(self) -> str | None:
        return self.api_url[: -len("/api")] if self.api_url and self.api_url.endswith("/api") else self.api_url

    def lines(self) -> list[str]:
        if not self.running:
            return [f"Prefect server: not running ({self.detail or 'none started'})"]
        return [f"Prefect server {self.version or '?'} running at {self.ui_url} (pid {self.pid}; API {self.api_url})"]


class PrefectServer:
    """Start, stop and inspect the local Prefect server of one data dir (``root = <data_dir>/prefect``)."""

    def __init__(self, root: str | Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.host = host
        self.port = port

    @classmethod
    def for_data_dir(cls, data_dir: str | Path, **kw: Any) -> PrefectServer:
        return cls(Path(data_dir) / "prefect", **kw)

    @property
    def state_file(self) -> Path:
        return self.root / "server.json"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def database(self) -> Path:
        return self.root / "prefect.db"

    def _state(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _health(api_url: str) -> str | None:
        """The server's version when its API answers, else None."""
        try:
            if httpx.get(f"{api_url}/health", timeout=3.0).status_code != 200:
                return None
            r = httpx.get(f"{api_url}/admin/version", timeout=3.0)
            return r.json() if r.status_code == 200 else "?"
        except (httpx.HTTPError, ValueError):
            return None

    def status(self) -> PrefectStatus:
        state = self._state()
        if not state:
            return PrefectStatus(False, None, None, detail=f"no server started from {self.root}")
        pid, api = int(state["pid"]), str(state["api_url"])
        if not pid_alive(pid):
            return PrefectStatus(False, api, pid, detail=f"process {pid} is not running")
        version = self._health(api)
        if version is None:
            return PrefectStatus(False, api, pid, detail=f"process {pid} alive, {api} not healthy")
        return PrefectStatus(True, api, pid, version)

    def _env(self, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            PREFECT_HOME=str(self.root / "home"),
            # the UI asks /ui-settings where the API is: without these it says Prefect's default port 4200
            PREFECT_SERVER_API_HOST=self.host,
            PREFECT_SERVER_API_PORT=str(port),
            PREFECT_UI_API_URL=f"http://{self.host}:{port}/api",
            PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{self.database}",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_SERVER_LOGGING_LEVEL="WARNING",
            PREFECT_LOGGING_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        return env

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """One starter at a time per data dir: two commands starting together share one server."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "start.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def start(self, *, timeout: float = 180.0) -> PrefectStatus:
        """Find the running server or start one and wait until its API is healthy."""
        with self._lock():
            st = self.status()
            if st.running:
                return st
            if st.pid and pid_alive(st.pid):  # alive but unhealthy: ours, recorded; end it before a fresh start
                self.stop()
            (self.root / "home").mkdir(parents=True, exist_ok=True)
            port = self.port or _free_port(self.host)
            api = f"http://{self.host}:{port}/api"
            cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", self.host, "--port", str(port),
                   "--analytics-off", "--log-level", "WARNING"]
            with open(self.log_file, "ab") as out:
                proc = subprocess.Popen(cmd, env=self._env(port), stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=self.root, start_new_session=True)
            tmp = self.state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"pid": proc.pid, "port": port, "api_url": api}))
            tmp.replace(self.state_file)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise PrefectServerError(f"the Prefect server exited with code {proc.returncode} while "
                                             f"starting; see {self.log_file}")
                st = self.status()
                if st.running:
                    return st
                time.sleep(0.5)
            self.stop()
            raise PrefectServerError(f"the Prefect server did not answer at {api} within {timeout:.0f} s; "
                                     f"see {self.log_file}")

    def stop(self, *, timeout: float = 20.0) -> bool:
        """Stop the server started from this directory (its whole process group); True if one was running."""
        state = self._state()
        if not state:
            return False
        was_running = stop_process_group(int(state["pid"]), timeout=timeout)  # the group start() created
        self.state_file.unlink(missing_ok=True)
        return was_running


# --- pointing this process at the server ----------------------------------------------------------------------------

def explicit_api_url() -> str | None:
    """The Prefect API the user chose, if any: ``PREFECT_API_URL`` in the environment, or already in this process's
    Prefect settings (a profile, ``prefect_test_harness``). It always wins over the local server."""
    ours = os.environ.get("GEOLABEL_PREFECT_API_SET_BY_US")
    env = os.environ.get("PREFECT_API_URL")
    if env and env != ours:
        return env
    if "prefect" in sys.modules:
        with contextlib.suppress(Exception):
            from prefect.settings import PREFECT_API_URL

            current = PREFECT_API_URL.value()
            if current and current != ours:
                return str(current)
    return None


def point_prefect_at(api_url: str) -> None:
    """Make this process's Prefect client use ``api_url``: the environment (subprocesses) and, when Prefect is
    already imported (its settings were read at import), its process-global settings context, which every thread
    sees (a context entered here would not reach the threads the CLI runs flows in)."""
    os.environ["PREFECT_API_URL"] = api_url
    if "prefect" in sys.modules:
        import prefect.context

        prefect.context.refresh_global_settings_context()


def use_local_server(data_dir: str | Path, *, start: bool = True, timeout: float = 180.0) -> str | None:
    """The Prefect API this command uses: an explicit ``PREFECT_API_URL``, else the data dir's local server
    (started when ``start``); returns its API URL (None when no server runs and ``start`` is False)."""
    explicit = explicit_api_url()
    if explicit:
        return explicit
    srv = PrefectServer.for_data_dir(data_dir)
    st = srv.start(timeout=timeout) if start else srv.status()
    if not st.running or not st.api_url:
        return None
    point_prefect_at(st.api_url)
    os.environ["GEOLABEL_PREFECT_API_SET_BY_US"] = st.api_url  # a later call in this process may re-point
    return st.api_url


#: ``GEOLABEL_PREFECT_SERVER``: ``local`` (default: the data dir's server) or ``ephemeral`` (Prefect's in-process
#: temporary server, the earlier behaviour; the test suite uses it, so tests leave no servers behind).
PREFECT_MODE_ENV = "GEOLABEL_PREFECT_SERVER"


def prepare_command(overrides: Mapping[str, Any] | None = None, *, verbose: bool | None = None) -> str | None:
    """What a CLI command calls before running flows: console set up (:func:`configure_console`; ``verbose``
    defaults to env ``GEOLABEL_VERBOSE``) and Prefect pointed at its API (:func:`use_local_server`, unless
    ``GEOLABEL_PREFECT_SERVER=ephemeral``). Returns the Prefect API URL in use (None: ephemeral)."""
    from storage.settings import Settings

    data_dir = Settings.load(**dict(overrides or {})).data_dir
    if verbose is None:
        verbose = os.environ.get("GEOLABEL_VERBOSE", "").lower() in ("1", "true", "yes", "on")
    configure_console(data_dir, verbose=verbose)
    mode = os.environ.get(PREFECT_MODE_ENV, "local").strip().lower()
    if mode not in ("local", "ephemeral"):
        raise ValueError(f"{PREFECT_MODE_ENV} must be 'local' or 'ephemeral', got {mode!r}")
    if mode == "ephemeral":
        return explicit_api_url()
    return use_local_server(data_dir)


def flow_run_url(api_url: str | None = None) -> str | None:
    """The Prefect UI URL of the current flow run (None outside one)."""
    try:
        from prefect.runtime import flow_run

        rid = flow_run.id
    except Exception:  # noqa: BLE001 - no run context
        return None
    api = api_url or os.environ.get("PREFECT_API_URL")
    if not rid or not api:
        return None
    return f"{api.removesuffix('/api')}/runs/flow-run/{rid}"


# --- artifacts ------------------------------------------------------------------------------------------------------


def _in_flow_run() -> bool:
    try:
        from prefect.context import FlowRunContext

        return FlowRunContext.get() is not None
    except Exception:  # noqa: BLE001
        return False


def _flatten(d: Mapping[str, Any], prefix: str = "") -> tuple[list[tuple[str, Any]], list[tuple[str, str, str]]]:
    """(counts, failures) of a report dict: numbers and short strings as counts; lists of (id, reason) pairs or of
    issue dicts (``ref``/``message``) as failures (where, id, reason)."""
    counts: list[tuple[str, Any]] = []
    failures: list[tuple[str, str, str]] = []
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            c, f = _flatten(v, f"{name}.")
            counts += c
            failures += f
        elif isinstance(v, (bool, int, float)):
            counts.append((name, round(v, 3) if isinstance(v, float) else v))
        elif isinstance(v, str) and len(v) <= 200:
            counts.append((name, v))
        elif isinstance(v, (list, tuple)):
            counts.append((f"{name} (count)", len(v)))
            for x in v:
                if isinstance(x, (list, tuple)) and len(x) == 2:
                    failures.append((name, str(x[0]), str(x[1])))
                elif isinstance(x, Mapping) and ("message" in x or "reason" in x):
                    ref = x.get("ref", x.get("id", ""))
                    line = f" line {x['line']}" if x.get("line") else ""
                    failures.append((name, f"{ref}{line}", str(x.get("message", x.get("reason")))))
    return counts, failures


def _md_escape(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def report_markdown(stage: str, report: Mapping[str, Any], links: Mapping[str, str] | None = None,
                    max_failures: int = 50) -> tuple[str, list[dict[str, str]]]:
    """The Markdown of a stage's run report and its failure rows."""
    counts, failures = _flatten(report)
    md = [f"# {stage}: run report", ""]
    if links:
        md += [f"- {k}: [{v}]({v})" for k, v in links.items()] + [""]
    md += ["| count | value |", "|---|---|"] + [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in counts] + [""]
    md += [f"## Failures ({len(failures)})", ""]
    if failures:
        md += ["| where | id | reason |", "|---|---|---|"]
        md += [f"| {_md_escape(w)} | {_md_escape(i)} | {_md_escape(r)} |" for w, i, r in failures[:max_failures]]
        if len(failures) > max_failures:
            md.append(f"\n... and {len(failures) - max_failures} more (see the run's logs)")
    else:
        md.append("none")
    rows = [{"where": w, "id": i, "reason": r} for w, i, r in failures[:max_failures]]
    return "\n".join(md) + "\n", rows


def report_links(report: Mapping[str, Any]) -> dict[str, str]:
    """Links a report implies: the Label Studio project (``label_studio_url`` + ``ls_project_id``, also nested)."""
    links: dict[str, str] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        if d.get("label_studio_url") and d.get("ls_project_id"):
            links[f"{prefix}Label Studio project"] = f"{str(d['label_studio_url']).rstrip('/')}/projects/" \
                                                     f"{int(d['ls_project_id'])}"
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{k}: ")

    walk(report, "")
    return links


def _key(stage: str, suffix: str) -> str:
    clean = "".join(c if c.isalnum() else "-" for c in stage.lower()).strip("-")
    return f"geolabel-{clean}-{suffix}"


def publish_report(stage: str, report: Any, *, links: Mapping[str, str] | None = None) -> bool:
    """Publish ``report`` (an object with ``to_dict()``, or a dict) as this flow run's artifacts: a Markdown report
    (counts per stage, failures with reasons, links) and, when something failed, a table of the failures.
    Returns True when published; outside a flow run, or when the API refuses, it logs and returns False."""
    if not _in_flow_run():
        return False
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact

        data = report.to_dict() if hasattr(report, "to_dict") else dict(report)
        all_links = {**report_links(data), **(links or {})}
        md, failures = report_markdown(stage, data, all_links)
        create_markdown_artifact(markdown=md, key=_key(stage, "report"), description=f"{stage} run report")
        if failures:
            create_table_artifact(table=failures, key=_key(stage, "failures"),
                                  description=f"{stage}: failures with their reasons")
        return True
    except Exception as exc:  # noqa: BLE001 - reporting must never fail the work it reports on
        log.warning("could not publish the %s report artifact: %s", stage, exc)
        return False


class StageProgress:
    """A progress artifact for a long stage: ``advance(n)`` moves it (at most every ``min_interval_s``)."""

    def __init__(self, stage: str, total: int, *, min_interval_s: float = 1.0) -> None:
        self.total = max(0, int(total))
        self.done = 0
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._id = None
        if self.total and _in_flow_run():
            try:
                from prefect.artifacts import create_progress_artifact

                self._id = create_progress_artifact(0.0, key=_key(stage, "progress"),
                                                    description=f"{stage}: {self.total} to do")
            except Exception as exc:  # noqa: BLE001
                log.warning("no progress artifact for %s: %s", stage, exc)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        now = time.monotonic()
        if self._id is None or (self.done < self.total and now - self._last < self.min_interval_s):
            return
        self._last = now
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(self._id, 100.0 * self.done / self.total)
        except Exception as exc:  # noqa: BLE001
            log.warning("progress artifact update failed: %s", exc)
            self._id = None


def stage_progress(stage: str, total: int) -> StageProgress:
    return StageProgress(stage, total)


# --- console --------------------------------------------------------------------------------------------------------


def configure_console(data_dir: str | Path, *, verbose: bool = False, names: Sequence[str] = NOISY_LOGGERS) -> Path:
    """Library logs to ``<data_dir>/logs/geolabel.log`` (everything at INFO); on the terminal only warnings and
    errors of those libraries, and no library progress bars, unless ``verbose``. Returns the log file."""
    log_dir = Path(data_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "geolabel.log"
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setLevel(logging.INFO)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    fh.set_name("geolabel-file")
    for name in names:  # one log file per process: the latest data dir's
        for old in [h for h in logging.getLogger(name).handlers if h.get_name() == "geolabel-file"]:
            logging.getLogger(name).removeHandler(old)
            old.close()
    term_level = logging.INFO if verbose else logging.WARNING
    for name in names:
        lg = logging.getLogger(name)
        lg.addHandler(fh)
        if name in ("httpx", "httpcore") and not verbose:
            lg.setLevel(logging.WARNING)  # one line per request: not even for the log file
        elif lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
        for h in lg.handlers:
            if h is not fh and isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(term_level)
        if not verbose:
            lg.propagate = False  # the root logger's terminal handler would show their INFO lines again
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
        with contextlib.suppress(Exception):
            import transformers

            transformers.utils.logging.disable_progress_bar()
            transformers.utils.logging.set_verbosity_warning()
        _warnings_to_terminal(names)
    return path


def _warnings_to_terminal(names: Sequence[str]) -> None:
    """With propagation off, a library logger without a terminal handler of its own still shows its warnings."""
    for name in names:
        lg = logging.getLogger(name)
        if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                   for h in lg.handlers):
            h = logging.StreamHandler(sys.stderr)
            h.setLevel(logging.WARNING)
            h.set_name("geolabel-terminal")
            lg.addHandler(h)


def prefect_ui_line() -> str:
    """One line naming where the run history is (the local server's UI, or the explicit API)."""
    api = os.environ.get("PREFECT_API_URL") or explicit_api_url()
    if not api:
        return "Prefect:        ephemeral server (run history ends with the process; GEOLABEL_PREFECT_SERVER=local)"
    ui = api.removesuffix("/").removesuffix("/api")
    return f"Prefect UI:     {ui}  (flow runs and their report artifacts; `geolabel prefect stop` ends the server)"
