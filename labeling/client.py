"""A small Label Studio REST client (httpx) with bounded retries and clear errors.

* Connection failures, timeouts and 5xx answers are retried with exponential backoff (``retries`` attempts); then
  :class:`LabelStudioUnavailableError` names the URL.
* 401/403 raise :class:`LabelStudioAuthError`, naming the environment variable the token comes from.
* Other 4xx raise :class:`LabelStudioRequestError` with Label Studio's validation detail.
* The token only ever travels in the ``Authorization`` header; it is never part of a message, a repr or a log line.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from storage.settings import SecretStr

log = logging.getLogger(__name__)

RETRY_STATUS = frozenset({500, 502, 503, 504})


class LabelStudioError(RuntimeError):
    """Any failure talking to Label Studio."""


class LabelStudioUnavailableError(LabelStudioError):
    """Label Studio is down or keeps answering 5xx."""


class LabelStudioAuthError(LabelStudioError):
    """The API token is missing or rejected."""


class LabelStudioRequestError(LabelStudioError):
    """Label Studio refused a request (4xx other than auth)."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return (text[:200] + "…") if len(text) > 200 else text or resp.reason_phrase
    if isinstance(body, dict):
        parts = [str(body.get("detail", ""))]
        if body.get("validation_errors"):
            parts.append(json.dumps(body["validation_errors"])[:500])
        return " ".join(p for p in parts if p) or json.dumps(body)[:300]
    return json.dumps(body)[:300]


class LabelStudioClient:
    """The REST calls the project needs, against one Label Studio server."""

    def __init__(
        self,
        url: str,
        token: str | SecretStr | None,
        *,
        token_env: str = "LABEL_STUDIO_USER_TOKEN",
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Label Studio URL must be http(s)://…, got {url!r}")
        self.url = url.rstrip("/")
        self.token_env = token_env
        secret = token.get_secret_value() if isinstance(token, SecretStr) else token
        if not secret:
            raise LabelStudioAuthError(
                f"no Label Studio API token for {url}: start the local one with `geolabel labelstudio start` (the "
                f"commands then find it and its token by themselves) or set the environment variable {token_env}"
            )
        self.retries = max(1, int(retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {secret}", "Accept": "application/json"},
            timeout=timeout,
            transport=transport,
        )
        self.requests_made = 0

    @classmethod
    def from_settings(cls, settings, **kw: Any) -> LabelStudioClient:  # noqa: ANN001 - storage.settings.Settings
        """A client for ``settings.label_studio_url`` with its token (``labeling.server.token_for``: the environment
        variable, else the local server's credentials file for that URL)."""
        from labeling.server import token_for

        return cls(
            settings.label_studio_url,
            token_for(settings),
            token_env=settings.label_studio_token_env,
            **kw,
        )

    def __repr__(self) -> str:
        return f"LabelStudioClient(url={self.url!r}, token_env={self.token_env!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ----------------------------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        """One API call with retries; returns the decoded JSON (None for an empty body).

        A non-idempotent call (POST by default) is retried only when Label Studio surely did not act on it (the
        connection was refused, or 502/503); after a timeout or a 500 its outcome is unknown and
        :class:`LabelStudioUnavailableError` is raised at once, so that the caller can reconcile (see push).
        """
        if idempotent is None:
            idempotent = method.upper() != "POST"
        last = ""
        for attempt in range(self.retries):
            if attempt:
                time.sleep(min(self.max_backoff, self.backoff * 2 ** (attempt - 1)))
            try:
                self.requests_made += 1
                resp = self._http.request(method, path, params=params, json=json_body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning("Label Studio %s %s failed (%s), attempt %d/%d", method, path, last, attempt + 1,
                            self.retries)
                if idempotent or isinstance(exc, httpx.ConnectError):
                    continue
                break
            if resp.status_code in RETRY_STATUS:
                last = f"HTTP {resp.status_code} {_detail(resp)}"
                if not idempotent and resp.status_code not in (502, 503):
                    break
                log.warning("Label Studio %s %s answered %s, attempt %d/%d", method, path, resp.status_code,
                            attempt + 1, self.retries)
                continue
            if resp.status_code in (401, 403):
                raise LabelStudioAuthError(
                    f"Label Studio at {self.url} rejected the API token (HTTP {resp.status_code}) for {method} {path}: "
                    f"check the environment variable {self.token_env}"
                )
            if resp.status_code >= 400:
                raise LabelStudioRequestError(
                    f"Label Studio {method} {self.url}{path} failed: HTTP {resp.status_code} {_detail(resp)}",
                    resp.status_code,
                )
            if not resp.content:
                return None
            try:
                return resp.json()
            except ValueError:
                raise LabelStudioError(
                    f"Label Studio {method} {self.url}{path} returned non-JSON ({resp.headers.get('content-type')})"
                ) from None
        raise LabelStudioUnavailableError(
            f"Label Studio at {self.url} is unavailable: {method} {path} failed after {attempt + 1} attempt(s) ({last})"
        )

    def served(self, path: str) -> bool:
        """Whether Label Studio serves ``path`` (a task image URL such as ``/data/local-files/?d=...``) to this
        token: True for HTTP 2xx, False for 404 (a streamed GET: the body is not read); a rejected token raises."""
        try:
            with self._http.stream("GET", path) as resp:
                status = resp.status_code
        except httpx.TransportError as exc:
            raise LabelStudioUnavailableError(f"Label Studio at {self.url} is unavailable: GET {path} ({exc})") from exc
        if status in (401, 403):
            raise LabelStudioAuthError(f"Label Studio at {self.url} rejected the API token (HTTP {status}) for {path}")
        if status == 404:
            return False
        if status >= 400:
            raise LabelStudioRequestError(f"Label Studio GET {self.url}{path} failed: HTTP {status}", status)
        return True

    # --- server -------------------------------------------------------------------------------------------------------

    def version(self) -> str:
        info = self.request("GET", "/api/version")
        return str(info.get("release") or (info.get("label-studio-os-package") or {}).get("version") or "?")

    def whoami(self) -> dict[str, Any]:
        return self.request("GET", "/api/current-user/whoami")

    # --- projects -----------------------------------------------------------------------------------------------------

    def projects(self, title: str | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            params: dict[str, Any] = {"page": page, "page_size": 100}
            if title:
                params["title"] = title
            body = self.request("GET", "/api/projects", params=params)
            results = body.get("results", body) if isinstance(body, dict) else body
            out.extend(results)
            if not isinstance(body, dict) or not body.get("next"):
                return out
            page += 1

    def get_project(self, project_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/projects/{int(project_id)}")

    def create_project(self, title: str, label_config: str, description: str = "") -> dict[str, Any]:
        return self.request(
            "POST",
            "/api/projects",
            json_body={"title": title, "label_config": label_config, "description": description},
        )

    def update_project(self, project_id: int, **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/projects/{int(project_id)}", json_body=fields)

    # --- tasks --------------------------------------------------------------------------------------------------------

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Bulk import (one request); returns the new task ids in the order of ``tasks``."""
        body = self.request(
            "POST", f"/api/projects/{int(project_id)}/import", params={"return_task_ids": "true"}, json_body=list(tasks)
        )
        ids = [int(i) for i in body.get("task_ids") or []]
        if len(ids) != len(tasks):
            raise LabelStudioError(
                f"Label Studio imported {body.get('task_count')} tasks, returned {len(ids)} ids for {len(tasks)} sent"
            )
        return ids

    def iter_tasks(
        self,
        project_id: int,
        *,
        fields: str = "task_only",
        updated_after: datetime | None = None,
        page_size: int = 200,
    ) -> Iterator[dict[str, Any]]:
        """All tasks of a project (``fields="all"`` includes annotations and predictions), optionally only those
        updated after a time (Label Studio bumps a task's ``updated_at`` when its annotations change)."""
        params: dict[str, Any] = {"project": int(project_id), "page_size": int(page_size), "fields": fields}
        if updated_after is not None:
            params["query"] = json.dumps(
                {
                    "filters": {
                        "conjunction": "and",
                        "items": [
                            {
                                "filter": "filter:tasks:updated_at",
                                "operator": "greater",
                                "type": "Datetime",
                                "value": updated_after.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                            }
                        ],
                    },
                    "ordering": ["tasks:id"],
                }
            )
        page = 1
        seen = 0
        while True:
            try:
                body = self.request("GET", "/api/tasks", params={**params, "page": page})
            except LabelStudioRequestError as exc:
                if exc.status_code == 404 and page > 1:  # past the last page
                    return
                raise
            tasks = body.get("tasks", []) if isinstance(body, dict) else body
            yield from tasks
            seen += len(tasks)
            total = body.get("total") if isinstance(body, dict) else None
            # Label Studio may serve fewer than page_size per page: stop on the total or an empty page only.
            if not tasks or (total is not None and seen >= total):
                return
            page += 1

    def get_task(self, task_id: int) -> dict[str, Any]:
        return self.request("GET", f"/api/tasks/{int(task_id)}")

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        body = self.request("GET", "/api/predictions", params={"task": int(task_id)})
        return body.get("results", []) if isinstance(body, dict) else body

    def create_prediction(
        self, task_id: int, result: list[dict[str, Any]], model_version: str, score: float | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"task": int(task_id), "result": result, "model_version": model_version}
        if score is not None:
            body["score"] = float(score)
        return self.request("POST", "/api/predictions", json_body=body)

    # --- annotations --------------------------------------------------------------------------------------------------

    def task_annotations(self, task_id: int) -> list[dict[str, Any]]:
        return self.request("GET", f"/api/tasks/{int(task_id)}/annotations")

    def create_annotation(
        self, task_id: int, result: list[dict[str, Any]], *, lead_time: float | None = None, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"result": result, **extra}
        if lead_time is not None:
            body["lead_time"] = float(lead_time)
        return self.request("POST", f"/api/tasks/{int(task_id)}/annotations", json_body=body)

    def update_annotation(self, annotation_id: int, result: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/annotations/{int(annotation_id)}", json_body={"result": result, **extra})

    def delete_annotation(self, annotation_id: int) -> None:
        self.request("DELETE", f"/api/annotations/{int(annotation_id)}")

    # --- storages and webhooks ----------------------------------------------------------------------------------------

    def local_storages(self, project_id: int) -> list[dict[str, Any]]:
        return self.request("GET", "/api/storages/localfiles", params={"project": int(project_id)})

    def create_local_storage(self, project_id: int, path: str, title: str = "imagery") -> dict[str, Any]:
        return self.request(
            "POST",
            "/api/storages/localfiles",
            json_body={"project": int(project_id), "path": path, "title": title, "use_blob_urls": True},
        )

    def webhooks(self, project_id: int | None = None) -> list[dict[str, Any]]:
        params = {"project": int(project_id)} if project_id is not None else None
        return self.request("GET", "/api/webhooks", params=params)

    def create_webhook(
        self, project_id: int, url: str, headers: Mapping[str, str], actions: Sequence[str]
    ) -> dict[str, Any]:
        return self.request(
            "POST",
            "/api/webhooks",
            json_body={
                "project": int(project_id),
                "url": url,
                "headers": dict(headers),
                "send_payload": True,
                "send_for_all_actions": False,
                "actions": list(actions),
                "is_active": True,
            },
        )

    def update_webhook(self, webhook_id: int, **fields: Any) -> dict[str, Any]:
        return self.request("PATCH", f"/api/webhooks/{int(webhook_id)}", json_body=fields)


def connect_ml_backend(
    client: LabelStudioClient, ls_project_id: int, url: str, title: str = "GeoSeg"
) -> dict[str, Any]:
    """Register (or find) an ML backend at ``url`` on a project, interactive pre-annotations on; returns LS's row."""
    rows = client.request("GET", "/api/ml", params={"project": int(ls_project_id)}) or []
    for row in rows:
        if str(row.get("url", "")).rstrip("/") == url.rstrip("/"):
            if not row.get("is_interactive"):
                row = client.request("PATCH", f"/api/ml/{row['id']}", json_body={"is_interactive": True})
            return row
    return client.request(
        "POST",
        "/api/ml",
        json_body={"project": int(ls_project_id), "url": url, "title": title, "is_interactive": True},
    )
