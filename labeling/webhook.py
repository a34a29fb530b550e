"""The webhook receiver: a small ASGI app that Label Studio calls on annotation created / updated / deleted.

Every call must carry the shared secret in the ``X-Geolabel-Secret`` header (compared in constant time); calls
without it or with a wrong one get 401 and change nothing. Bodies larger than ``max_body`` get 413 (checked on the
declared length and while reading). A valid event is applied with :func:`labeling.sync.apply_webhook_event` in a
worker thread; malformed annotations are reported in the JSON answer and logged, never fatal.

``GET /health`` answers 200 without a secret (for probes). Run it with ``geolabel labelstudio webhook``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from labeling.sync import SyncReport

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Geolabel-Secret"
DEFAULT_MAX_BODY = 64 * 1024 * 1024  # a 4096^2 noisy brush mask is ~15 MB of JSON

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class WebhookApp:
    """ASGI app; ``handler(payload) -> SyncReport`` does the work (called in a thread)."""

    def __init__(
        self,
        handler: Callable[[Mapping[str, Any]], SyncReport],
        secret: str,
        *,
        path: str = "/webhook",
        max_body: int = DEFAULT_MAX_BODY,
    ) -> None:
        if not secret or len(secret) < 16:
            raise ValueError("the webhook secret must be at least 16 characters")
        self._secret = secret.encode()
        self.handler = handler
        self.path = path
        self.max_body = int(max_body)
        self.events = 0

    def __repr__(self) -> str:
        return f"WebhookApp(path={self.path!r}, max_body={self.max_body})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if path == "/health" and method == "GET":
            await _answer(send, 200, {"status": "ok", "events": self.events})
            return
        if path != self.path:
            await _answer(send, 404, {"error": "not found"})
            return
        if method != "POST":
            await _answer(send, 405, {"error": "POST only"})
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        given = headers.get(SECRET_HEADER.lower())
        if given is None or not hmac.compare_digest(given, self._secret):
            log.warning("webhook: rejected a call with a %s secret", "missing" if given is None else "wrong")
            await _answer(send, 401, {"error": f"missing or wrong {SECRET_HEADER} header"})
            return
        declared = headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    await _answer(send, 413, {"error": f"body larger than {self.max_body} bytes"})
                    return
            except ValueError:
                await _answer(send, 400, {"error": "bad Content-Length"})
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await _answer(send, 413, {"error": f"body larger than {self.max_body} bytes"})
                return
            chunks.append(body)
            if not msg.get("more_body"):
                break
        try:
            payload = json.loads(b"".join(chunks))
            if not isinstance(payload, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            await _answer(send, 400, {"error": f"body is not a JSON object: {exc}"})
            return
        import anyio.to_thread

        try:
            report = await anyio.to_thread.run_sync(self.handler, payload)
        except Exception as exc:  # the event is lost for now; the next poll sync picks it up
            log.exception("webhook: %s event failed", payload.get("action"))
            await _answer(send, 500, {"error": f"{type(exc).__name__}: {exc}"})
            return
        self.events += 1
        await _answer(
            send,
            200,
            {
                "action": payload.get("action"),
                "upserted": report.upserted,
                "retracted": report.retracted,
                "malformed": report.malformed,
                "skipped": report.skipped_tasks,
            },
        )


async def _answer(send: Send, status: int, body: Mapping[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


def make_webhook_app(
    engine,  # noqa: ANN001 - sqlalchemy Engine
    blobs,  # noqa: ANN001 - storage.blobs.BlobStore
    project,  # noqa: ANN001 - labeling.project.ProjectHandle
    secret: str,
    **kw: Any,
) -> WebhookApp:
    """The receiver wired to the database: each event in its own session."""
    from sqlalchemy.orm import Session

    from labeling.sync import apply_webhook_event

    def handle(payload: Mapping[str, Any]) -> SyncReport:
        with Session(engine) as session:
            return apply_webhook_event(session, blobs, project, payload)

    return WebhookApp(handle, secret, **kw)


def register_webhook(client, project, receiver_url: str, secret: str) -> dict[str, Any]:  # noqa: ANN001
    """Create (or update) the project's webhook pointing at ``receiver_url`` with the secret header."""
    from labeling.sync import WEBHOOK_ACTIONS

    headers = {SECRET_HEADER: secret}
    for hook in client.webhooks(project.ls_project_id):
        if hook.get("url") == receiver_url:
            return client.update_webhook(
                hook["id"], headers=headers, actions=list(WEBHOOK_ACTIONS), is_active=True, send_payload=True
            )
    return client.create_webhook(project.ls_project_id, receiver_url, headers, WEBHOOK_ACTIONS)
