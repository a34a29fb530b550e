"""Fault injectors that sit in front of REAL services (issue 9, part 3): nothing here imitates a service.

* :class:`TcpProxy` -- a loopback TCP relay (threads). ``stop()`` closes the listener and every live connection, so
  clients get *connection refused* exactly as if the server had gone away (used for moto_server, whose state lives in
  memory and would be lost by a real restart, and for PostgreSQL); ``start()`` listens again on the same port;
  ``cut()`` drops the live connections only (a dropped database connection mid-transaction).
* :class:`HttpFaultProxy` -- an HTTP reverse proxy in front of Label Studio that forwards every request unchanged
  unless a scripted action says otherwise: ``{"status": 503}`` (answered by the proxy, never reaching the server),
  ``{"sleep": 2.0}`` (then forwarded: slow server), ``{"drop": True}`` (connection closed without an answer),
  ``{"after": 500 | "drop" | "down"}`` (forwarded -- the server acts -- then the answer is replaced by a 500, lost,
  or lost and the proxy stops listening: the server "died" right after acting); ``down()`` / ``up()`` stop and restart
  listening on the same port (connection refused in between). A
  ``trigger(method, path, count)`` callback may return an action too (e.g. stop after the 2nd import).

Both count what they forwarded, so a test can assert how many attempts a client made.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, int(target_port))
        self.port = port or _free_port()
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0
        self.bytes_up = 0

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._listener is not None:
            return
        ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _ in range(50):  # the port may linger briefly after stop()
            try:
                ls.bind(("127.0.0.1", self.port))
                break
            except OSError:
                time.sleep(0.1)
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if up:
                    self.bytes_up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)

    def cut(self) -> int:
        """Drop every live connection (both directions, RST-like); returns how many sockets were closed."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for s in conns:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        return len(conns)

    def stop(self) -> None:
        """The service is gone: no listener (connection refused) and no live connection."""
        ls, self._listener = self._listener, None
        if ls is not None:
            with contextlib.suppress(OSError):
                ls.shutdown(socket.SHUT_RDWR)
            ls.close()
        self.cut()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # a client that gave up (timeout) is expected
        pass


class HttpFaultProxy:
    def __init__(self, target_url: str, trigger: Callable[[str, str, int], dict | None] | None = None) -> None:
        self.target_url = target_url.rstrip("/")
        self.script: deque[dict[str, Any]] = deque()
        self.trigger = trigger
        self.seen: Counter[tuple[str, str]] = Counter()
        self.actions: list[tuple[str, str, dict]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=self.target_url, timeout=300)
        self._server: _QuietServer | None = None
        self.port = 0
        self.up()
        self.url = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """(Re)start listening on the same port: the server is back."""
        if self._server is not None:
            return
        srv = None
        for _ in range(50):
            try:
                srv = _QuietServer(("127.0.0.1", self.port), self._handler())
                break
            except OSError:
                time.sleep(0.1)
        assert srv is not None, "could not listen again"
        srv.daemon_threads = True
        self.port = srv.server_address[1]
        self._server = srv
        threading.Thread(target=srv.serve_forever, daemon=True).start()

    def down(self) -> None:
        """Stop listening: clients get connection refused, as from a stopped server."""
        srv, self._server = self._server, None
        if srv is not None:
            threading.Thread(target=lambda: (srv.shutdown(), srv.server_close()), daemon=True).start()
            srv.socket.close()

    def __enter__(self) -> HttpFaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()
        self._http.close()

    def queue(self, *actions: dict[str, Any]) -> None:
        with self._lock:
            self.script.extend(actions)

    def _next_action(self, method: str, path: str) -> dict[str, Any]:
        key = (method, path.split("?")[0])
        with self._lock:
            self.seen[key] += 1
            n = self.seen[key]
            action = self.script.popleft() if self.script else None
        if action is None and self.trigger is not None:
            action = self.trigger(method, key[1], n)
        action = action or {}
        if action:
            self.actions.append((method, key[1], action))
        return action

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                action = proxy._next_action(self.command, self.path)
                if action.get("drop"):
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if "sleep" in action:
                    time.sleep(float(action["sleep"]))
                if "status" in action:
                    data = b'{"detail": "injected fault"}'
                    self.send_response(int(action["status"]))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                try:
                    r = proxy._http.request(self.command, self.path, headers=headers, content=body)
                except httpx.HTTPError:
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if "after" in action:  # the server DID act; the client is told otherwise / nothing
                    after = action["after"]
                    if after == "down":
                        proxy.down()
                    if after in ("drop", "down"):
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    data = b'{"detail": "injected fault after the server acted"}'
                    self.send_response(int(after))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _relay  # noqa: N815 (http.server API)

        return Handler


class ThreadedAsgi:
    """An ASGI app served by uvicorn on a loopback port in a thread (real HTTP), for the webhook receiver."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ThreadedAsgi:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
