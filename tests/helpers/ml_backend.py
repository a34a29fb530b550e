"""Helpers for ML-backend tests: run an ASGI app on a loopback port, and a stand-in model that draws a rectangle.

The stand-in model sleeps or raises on request: the faults (a slow or failing model, one still loading) that a test
cannot get from the tiny GeoSeg models on demand. Its masks are a fixed rectangle and mean nothing.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from labeling.ml_backend import ModelHandle, Suggestion


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(app) -> Iterator[str]:  # noqa: ANN001 - any ASGI app
    """Run ``app`` with uvicorn in a thread; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(10)


def rect_model(delay: float = 0.0, fail: bool = False, load_delay: float = 0.0) -> Callable[[], ModelHandle]:
    calls: list[str] = []

    def suggest(image: bytes, query: str) -> Suggestion:
        calls.append(query)
        if fail:
            raise RuntimeError("CUDA out of memory (simulated)")
        time.sleep(delay)
        m = np.zeros((20, 30), dtype=bool)
        m[5:10, 3:12] = True
        return Suggestion(m, "rect-v1", 0.5, "point")

    def load() -> ModelHandle:
        time.sleep(load_delay)
        return ModelHandle(suggest, "rect-v1", warning="meaningless test model")

    load.calls = calls  # type: ignore[attr-defined]
    return load
