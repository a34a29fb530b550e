"""A local Label Studio server run from the project's own virtualenv (``.venv-ls``; its pins clash with Prefect's).

Everything lives under one directory (``Settings.data_dir / "labelstudio"`` by default)::

    labelstudio/
      credentials.json   generated admin e-mail, password, legacy API token, Django secret key (mode 0600)
      server.json        pid, port and URL of the running server
      server.log         the server's output
      data/              Label Studio's own data dir (SQLite database, uploads)

The server listens on 127.0.0.1 only, with analytics and version checks off, legacy token auth on (the token is what
the app uses), and local-files serving rooted at the imagery directory. Secrets are never printed: ``status`` and the
CLI name the environment variable to export (``LABEL_STUDIO_USER_TOKEN`` by default) and the file that holds it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from storage.settings import SecretStr

#: The variables that Label Studio 1.23 reads and that must not leak into its environment from ours: its settings
#: fall back to un-prefixed names (USERNAME, PASSWORD, HOST, PORT), which would override ours.
_STRAY_ENV = ("USERNAME", "PASSWORD", "HOST", "PORT", "DJANGO_DB", "DATABASE_URL")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def document_root_for(settings) -> Path:  # noqa: ANN001 - storage.settings.Settings
    """The LOCAL_FILES_DOCUMENT_ROOT of the project's local Label Studio (started or not): task URLs are made
    relative to it."""
    from labeling.display import imagery_root

    return LabelStudioServer(Path(settings.data_dir) / "labelstudio", imagery_root=imagery_root(settings)).document_root


class LabelStudioServerError(RuntimeError):
    """The local Label Studio server could not be started, reached or stopped."""


@dataclass(frozen=True)
class ServerStatus:
    running: bool
    url: str | None
    pid: int | None
    version: str | None
    token_ok: bool | None
    token_env: str
    credentials_file: str
    detail: str = ""

    def lines(self) -> list[str]:
        """Human-readable status (no secret values)."""
        if not self.running:
            return [f"Label Studio: not running ({self.detail or 'no server started'})"]
        out = [f"Label Studio {self.version or '?'} running at {self.url} (pid {self.pid})"]
        if self.token_ok is True:
            out.append(
                f"API token works (stored in {self.credentials_file}: geolabel commands on this data dir read it "
                f"there; other tools can take it from the environment variable {self.token_env})"
            )
        elif self.token_ok is False:
            out.append(f"API token REJECTED by the server (token file {self.credentials_file})")
        return out


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (host, port) or holds it (a bind there fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def server_root(data_dir: str | Path) -> Path:
    """Where the local server of a data dir keeps its files: ``<data_dir>/labelstudio``."""
    return Path(data_dir).expanduser().resolve() / "labelstudio"


def recorded_url(data_dir: str | Path) -> str | None:
    """The URL in ``<data_dir>/labelstudio/server.json`` (the local server last started for this data dir)."""
    try:
        url = json.loads((server_root(data_dir) / "server.json").read_text()).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return str(url).rstrip("/") if url else None


def token_for(settings) -> SecretStr | None:  # noqa: ANN001 - storage.settings.Settings
    """The API token for ``settings.label_studio_url``: the environment variable the settings name, else (when that
    URL is the data dir's local server) the token in ``<data_dir>/labelstudio/credentials.json``. Never printed."""
    token = settings.label_studio_token()
    if token:
        return token
    if recorded_url(settings.data_dir) != settings.label_studio_url.rstrip("/"):
        return None
    try:
        value = json.loads((server_root(settings.data_dir) / "credentials.json").read_text()).get("token")
    except (OSError, ValueError, AttributeError):
        return None
    return SecretStr(value) if isinstance(value, str) and value else None


def probe_label_studio(settings) -> dict:  # noqa: ANN001 - storage.settings.Settings
    """Whether the Label Studio the commands use (``settings.label_studio_url``) answers, its version, and whether
    the token they would send (:func:`token_for`) works. Keys: url, reachable, version, token_ok, token_env, detail.
    Never includes the token."""
    url = settings.label_studio_url.rstrip("/")
    out: dict = {"url": url, "reachable": False, "version": None, "token_ok": None,
                 "token_env": settings.label_studio_token_env}
    try:
        out["reachable"] = httpx.get(f"{url}/health", timeout=3.0).status_code == 200
    except httpx.HTTPError as exc:
        out["detail"] = f"{type(exc).__name__}: {exc}"
        return out
    token = token_for(settings)
    if token is None:
        out["detail"] = f"no token: set {settings.label_studio_token_env} (or start the server from this data dir)"
        return out
    headers = {"Authorization": f"Token {token.get_secret_value()}"}
    try:
        v = httpx.get(f"{url}/api/version", timeout=5.0, headers=headers)
        if v.status_code == 200:
            info = v.json()
            out["version"] = info.get("release") or (info.get("label-studio-os-package") or {}).get("version")
        out["token_ok"] = httpx.get(f"{url}/api/current-user/whoami", timeout=5.0, headers=headers).status_code == 200
    except (httpx.HTTPError, ValueError) as exc:
        out["detail"] = f"{type(exc).__name__}: {exc}"
    return out


def default_venv() -> Path:
    return Path(os.environ.get("GEOLABEL_LABEL_STUDIO_VENV", REPO_ROOT / ".venv-ls"))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def stop_process_group(pid: int, *, timeout: float = 20.0) -> bool:
    """SIGTERM the process group led by ``pid`` (a server started with ``start_new_session``), SIGKILL it after
    ``timeout`` s; True if it was running."""
    was_running = pid_alive(pid)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not pid_alive(pid):
            break
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)
    return was_running


def _write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only (created 0600, never world-readable, even briefly)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class LabelStudioServer:
    """Start, stop and inspect one local Label Studio server rooted at ``root``."""

    def __init__(
        self,
        root: str | Path,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        imagery_root: str | Path | None = None,
        venv: str | Path | None = None,
        token_env: str = "LABEL_STUDIO_USER_TOKEN",
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        self.host = host
        self.port = port
        self.imagery_root = Path(imagery_root).expanduser().resolve() if imagery_root else None
        self.venv = Path(venv) if venv else default_venv()
        self.token_env = token_env

    @classmethod
    def from_settings(cls, settings, **kw) -> LabelStudioServer:  # noqa: ANN001 - storage.settings.Settings
        roots = settings.imagery_roots
        if not roots and "imagery_root" not in kw:
            import logging

            logging.getLogger(__name__).warning(
                "no GEOLABEL_IMAGERY_ROOTS: Label Studio serves local files from the whole data dir %s "
                "(set an imagery root to narrow it)",
                settings.data_dir,
            )
        kw.setdefault("imagery_root", roots[0] if roots else settings.data_dir)
        kw.setdefault("token_env", settings.label_studio_token_env)
        return cls(settings.data_dir / "labelstudio", **kw)

    # --- files ------------------------------------------------------------------------------------------------------

    @property
    def credentials_file(self) -> Path:
        return self.root / "credentials.json"

    @property
    def state_file(self) -> Path:
        return self.root / "server.json"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def document_root_file(self) -> Path:
        return self.root / "document_root"

    @property
    def document_root(self) -> Path:
        """Label Studio's LOCAL_FILES_DOCUMENT_ROOT, fixed when its data dir is first started (``document_root_file``).

        Label Studio serves ``/data/local-files/?d=<path below the document root>`` only inside a local-files storage
        of a project the user may see (``labeling.storages.ensure_local_storage``: one per imagery root and one for
        the data dir's display renditions, made on push), and refuses a storage path equal to the document root.
        A new loopback server takes the filesystem root, so any data dir or imagery directory on this machine can be
        served through its own storage; a server on another interface takes the imagery root's parent (the rule
        of earlier versions, which a data dir started before the record keeps: its tasks' URLs are relative to it).
        """
        try:
            recorded = self.document_root_file.read_text().strip()
        except OSError:
            recorded = ""
        if recorded:
            return Path(recorded)
        legacy = (self.imagery_root or self.root).parent
        if (self.ls_data_dir / "label_studio.sqlite3").exists() or not _is_loopback(self.host):
            return legacy
        return Path(self.root.anchor)

    @property
    def ls_data_dir(self) -> Path:
        return self.root / "data"

    def _executable(self) -> Path:
        exe = self.venv / "bin" / "label-studio"
        if not exe.exists():
            raise LabelStudioServerError(
                f"Label Studio is not installed at {self.venv} (no {exe}); create it with "
                "`bash scripts/labelstudio_venv.sh` (or set GEOLABEL_LABEL_STUDIO_VENV)"
            )
        return exe

    def credentials(self) -> dict[str, str]:
        """The admin user and API token, generated on first use and kept in a 0600 file."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        if self.credentials_file.exists():
            try:
                creds = json.loads(self.credentials_file.read_text())
                if all(isinstance(creds.get(k), str) and creds[k] for k in ("email", "password", "token")):
                    if not creds.get("secret_key"):  # files from before the Django key was kept here
                        creds["secret_key"] = secrets.token_urlsafe(48)
                        _write_private(self.credentials_file, json.dumps(creds, indent=1))
                    return creds
            except (OSError, json.JSONDecodeError):
                pass
            raise LabelStudioServerError(
                f"credentials file {self.credentials_file} is unreadable or incomplete; delete it together with "
                f"{self.ls_data_dir} to start from scratch"
            )
        creds = {
            "email": "geolabel-admin@localhost.localdomain",
            "password": secrets.token_urlsafe(18),
            "token": secrets.token_hex(20),  # 40 characters: Label Studio's token length
            "secret_key": secrets.token_urlsafe(48),  # Django's SECRET_KEY: sessions survive restarts
        }
        _write_private(self.credentials_file, json.dumps(creds, indent=1))
        return creds

    def token(self) -> SecretStr:
        return SecretStr(self.credentials()["token"])

    def _state(self) -> dict | None:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    # --- lifecycle --------------------------------------------------------------------------------------------------

    def _server_env(self, creds: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _STRAY_ENV}
        env.pop("VIRTUAL_ENV", None)
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.ls_data_dir),
                "LABEL_STUDIO_USERNAME": creds["email"],
                "LABEL_STUDIO_PASSWORD": creds["password"],
                "LABEL_STUDIO_USER_TOKEN": creds["token"],
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "SECRET_KEY": creds["secret_key"],
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "LOCAL_FILES_SERVING_ENABLED": "true",
                "LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),  # recorded by start()
                "SSRF_PROTECTION_ENABLED": "false",  # webhooks and S3 endpoints on loopback
                "ML_BLOCK_LOCAL_IP": "false",  # the project's ML backend (geolabel ml-backend) on loopback
                "COLLECT_ANALYTICS": "false",
                "LATEST_VERSION_CHECK": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
                "DO_NOT_TRACK": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def start(self, *, timeout: float = 240.0) -> ServerStatus:
        """Start the server (or find it already running) and wait until it is healthy and the token works."""
        st = self.status()
        if st.running:
            return st
        exe = self._executable()
        creds = self.credentials()
        if not self.document_root_file.exists():  # fixed from the first start on (task URLs are relative to it)
            self.document_root_file.write_text(f"{self.document_root}\n")
        self.ls_data_dir.mkdir(parents=True, exist_ok=True)
        port = self.port or free_port(self.host)
        if port_in_use(self.host, port):  # Label Studio would silently take the next port: refuse at once instead
            raise LabelStudioServerError(
                f"port {port} on {self.host} is already in use; stop what listens there or pass another --port"
            )
        url = f"http://{self.host}:{port}"
        cmd = [
            str(exe),
            "start",
            "--no-browser",
            "--data-dir",
            str(self.ls_data_dir),
            "--internal-host",
            self.host,
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ]
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                cmd,
                env=self._server_env(creds),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,  # its own process group: stop() ends it and its children only
            )
        finally:
            log.close()
        _write_private(self.state_file, json.dumps({"pid": proc.pid, "port": port, "url": url}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabelStudioServerError(
                    f"Label Studio exited with code {proc.returncode} while starting; see {self.log_file}:\n"
                    + self._log_tail()
                )
            if self._healthy(url):
                st = self.status()
                if st.token_ok:
                    return st
            time.sleep(0.5)
        self.stop()
        raise LabelStudioServerError(
            f"Label Studio did not become healthy at {url} within {timeout:.0f} s; see {self.log_file}:\n"
            + self._log_tail()
        )

    def _log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            r = httpx.get(f"{url}/health", timeout=2.0)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> ServerStatus:
        base = {"token_env": self.token_env, "credentials_file": str(self.credentials_file)}
        state = self._state()
        if not state:
            detail = f"no server started from {self.root}"
            return ServerStatus(False, None, None, None, None, detail=detail, **base)
        pid, url = int(state["pid"]), str(state["url"])
        if not pid_alive(pid):
            return ServerStatus(False, url, pid, None, None, detail=f"process {pid} is not running", **base)
        if not self._healthy(url):
            return ServerStatus(False, url, pid, None, None, detail=f"process {pid} alive, {url} not healthy", **base)
        version = None
        token_ok = None
        try:
            headers = {"Authorization": f"Token {self.credentials()['token']}"}
            r = httpx.get(f"{url}/api/version", timeout=5.0, headers=headers)
            if r.status_code == 200:
                info = r.json()
                version = info.get("release") or (info.get("label-studio-os-package") or {}).get("version")
            w = httpx.get(f"{url}/api/current-user/whoami", timeout=5.0, headers=headers)
            token_ok = w.status_code == 200
        except (httpx.HTTPError, ValueError):
            pass
        return ServerStatus(True, url, pid, version, token_ok, **base)

    def stop(self, *, timeout: float = 20.0) -> bool:
        """Stop the server started from this directory; True if one was running."""
        state = self._state()
        if not state:
            return False
        was_running = stop_process_group(int(state["pid"]), timeout=timeout)
        self.state_file.unlink(missing_ok=True)
        return was_running


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - thin manual entry point
    import argparse

    ap = argparse.ArgumentParser(description="Manage a local Label Studio server")
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--root", required=True)
    args = ap.parse_args(argv)
    srv = LabelStudioServer(args.root)
    if args.action == "start":
        print("\n".join(srv.start().lines()))
    elif args.action == "stop":
        print("stopped" if srv.stop() else "not running")
    else:
        print("\n".join(srv.status().lines()))
    sys.exit(0)
