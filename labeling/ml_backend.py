"""A Label Studio ML backend for GeoSeg pre-labels, speaking Label Studio's ML backend protocol directly (ASGI).

Endpoints (what Label Studio 1.23's ``ml/api_connector.py`` calls):

* ``GET /health``   -> ``{"status": "UP", "model_version", "models_loaded", ...}``; answers at once, also while the
  models load or a prediction runs (Label Studio gives it 1 s).
* ``POST /setup``   -> ``{"model_version"}``; remembers the Label Studio host and access token sent with it (used to
  download ``/data/...`` task images; the token is never logged or returned).
* ``POST /predict`` -> ``{"results": [{"result", "score", "model_version"}, ...]}``, one per task. The query is the
  task's ``data.query``, unless the request's ``params.context`` carries a new one (an annotator asking for a fresh
  suggestion with another query: a ``textarea`` region's text, or ``{"query": "..."}``).
* ``POST /webhook`` -> acknowledges Label Studio's events (``{"status": "ok"}``); nothing to train.

Models load once, in the background at start-up (:class:`ModelHandle` from ``load_model``); at most
``max_concurrency`` predictions run at once (an asyncio semaphore in front of a thread pool of that size). An
interactive request has a deadline (``timeout_s``, queueing included); a batch request ("Retrieve predictions") gives
each task ``timeout_s`` once it has a slot and stops within ``batch_budget_s``, answering with what is done before
Label Studio's own 100 s predict timeout would discard it all. A request that misses its deadline, or whose model
raises, gets a clear message instead of a hung UI: for an interactive request the single result has an empty
``result`` and an ``error`` text (Label Studio passes it through to the client as ``data.error``); in a batch the
failed task's entry has no ``result``, so Label Studio stores no misleading empty pre-label for it (retrieving again
continues with those tasks), and the message is logged here and returned in ``errors``. A model still busy with a
timed-out request keeps its slot until it finishes, so the bound holds.

Each prediction carries ``model_version``; with meaningless (tiny random) models, every brush region carries the
warning as region ``meta.text`` and the response as ``warning``.

This module knows no model code: ``load_model`` is injected (``flows.cli_ml.load_geoseg_model`` builds the GeoSeg
one), so the protocol, the limits and the error handling are tested on their own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx
import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Suggestion:
    """One pre-label: the (H, W) bool mask at image resolution, with what Label Studio shows next to it."""

    mask: np.ndarray
    model_version: str
    score: float | None = None
    route: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class SmartPrompt:
    """An annotator's smart-tool prompt on one task, in image pixels: clicks (x, y) with labels (1 positive, 0
    negative) and/or a box (x0, y0, x1, y1)."""

    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()
    box: tuple[float, float, float, float] | None = None
    width: int = 0  # the image size Label Studio measured the regions on (original_width/height)
    height: int = 0

    def in_pixels_of(self, width: int, height: int) -> tuple[np.ndarray, np.ndarray, tuple | None]:
        """(points (k, 2), labels (k,), box or None) scaled to an image of ``width`` x ``height`` (the regions were
        measured on ``self.width`` x ``self.height``: a display copy may differ from the stored image)."""
        sx = width / self.width if self.width else 1.0
        sy = height / self.height if self.height else 1.0
        pts = np.asarray(self.points, dtype=np.float64).reshape(-1, 2) * [sx, sy]
        box = None if self.box is None else (self.box[0] * sx, self.box[1] * sy, self.box[2] * sx, self.box[3] * sy)
        return pts, np.asarray(self.labels, dtype=np.int64).reshape(-1), box


@dataclass(frozen=True)
class ModelHandle:
    """What the backend serves: ``suggest(image_bytes, query) -> Suggestion`` and its version; ``prompt(image_bytes,
    SmartPrompt) -> Suggestion`` answers Label Studio's smart tools (a click, a box) when the model has it."""

    suggest: Callable[[bytes, str], Suggestion]
    model_version: str
    warning: str | None = None  # e.g. geoseg.types.TINY_MODEL_WARNING for tiny random models
    prompt: Callable[[bytes, SmartPrompt], Suggestion] | None = None


@dataclass(frozen=True)
class MLBackendConfig:
    max_concurrency: int = 1
    timeout_s: float = 30.0  # per interactive /predict request (waiting for a slot included), per task in a batch
    #: A batch request (Label Studio's "Retrieve predictions") stops starting tasks after this many seconds and answers
    #: with what is done, under Label Studio's own 100 s ML_TIMEOUT_PREDICT (which would discard the whole answer);
    #: the tasks left get an error entry and no prediction, so retrieving again continues with them.
    batch_budget_s: float = 80.0
    load_timeout_s: float = 600.0
    label_studio_url: str | None = None  # where relative /data/... image URLs live; default: the /setup hostname
    label_studio_token: str | None = None  # default: the /setup access token
    image_timeout_s: float = 30.0
    #: Origins (``http(s)://host[:port]``) besides Label Studio's own from which absolute image URLs in task data may
    #: be fetched, e.g. the S3 endpoint of presigned URLs. Anything else is refused (no SSRF through task data).
    allowed_image_origins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {self.max_concurrency}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if not self.batch_budget_s > 0:
            raise ValueError(f"batch_budget_s must be > 0, got {self.batch_budget_s}")
        object.__setattr__(self, "allowed_image_origins", tuple(_origin(o) for o in self.allowed_image_origins))

    def __repr__(self) -> str:  # the token stays out of reprs and logs
        token = "***" if self.label_studio_token else None
        return (
            f"MLBackendConfig(max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s}, "
            f"label_studio_url={self.label_studio_url!r}, label_studio_token={token})"
        )


def _origin(url: str) -> str:
    """``scheme://host:port`` of an http(s) URL (default ports made explicit); ValueError otherwise."""
    from urllib.parse import urlsplit

    parts = urlsplit(str(url).strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL or origin: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


class PredictionTimeoutError(TimeoutError):
    pass


def brush_region(suggestion: Suggestion, warning: str | None = None) -> list[dict[str, Any]]:
    """The Label Studio result for one suggestion: one brush region (``[]`` for an empty mask)."""
    from labeling.push import brush_result

    result = brush_result(np.asarray(suggestion.mask, dtype=bool), score=suggestion.score)
    for region in result:
        region["origin"] = "prediction"
        notes = [n for n in (warning, f"route: {suggestion.route}" if suggestion.route else None) if n]
        if notes:  # one entry: Label Studio's region details run a list's entries together with no separator
            region["meta"] = {"text": [" | ".join(notes)]}
    return result


def context_query(context: Any) -> str | None:
    """A new query an annotator sent with an interactive request, or None."""
    if not isinstance(context, Mapping):
        return None
    q = context.get("query")
    if isinstance(q, str) and q.strip():
        return q.strip()
    for region in context.get("result") or []:
        if isinstance(region, Mapping) and region.get("type") == "textarea":
            texts = (region.get("value") or {}).get("text") or []
            texts = [texts] if isinstance(texts, str) else texts
            joined = " ".join(t.strip() for t in texts if isinstance(t, str) and t.strip())
            if joined:
                return joined
    return None


#: Keypoint labels that mean "not this" (besides Label Studio's own ``is_positive: false``, an Alt-click).
NEGATIVE_LABELS = frozenset({"negative", "background", "not target"})


def smart_prompt(context: Any) -> SmartPrompt | None:
    """The smart-tool prompt in an interactive request's context, or None.

    Label Studio sends the region the annotator just drew: ``keypointlabels`` (``value.x``/``value.y`` in percent
    of ``original_width``/``original_height``; ``is_positive`` false for a negative click) or ``rectanglelabels``
    (``x``, ``y``, ``width``, ``height`` in percent). Every click and the last box of the context count.
    """
    if not isinstance(context, Mapping):
        return None
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    box = None
    size = (0, 0)
    for region in context.get("result") or []:
        if not isinstance(region, Mapping):
            continue
        kind = str(region.get("type", "")).lower()
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue
        value = region.get("value") or {}
        try:
            w, h = int(region["original_width"]), int(region["original_height"])
            x, y = float(value["x"]) * w / 100.0, float(value["y"]) * h / 100.0
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"a {kind} region without original size or x/y: {dict(region)!r:.200}") from None
        if w <= 0 or h <= 0:
            raise ValueError(f"a {kind} region with image size {w}x{h}")
        size = (w, h)
        if kind == "keypointlabels":
            names = {str(n).lower() for n in value.get("keypointlabels") or []}
            positive = bool(region.get("is_positive", True)) and not (names & NEGATIVE_LABELS)
            points.append((min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)))
            labels.append(1 if positive else 0)
        else:
            bw, bh = float(value.get("width", 0)) * w / 100.0, float(value.get("height", 0)) * h / 100.0
            x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(float(w), x + bw), min(float(h), y + bh)
            if x1 - x0 < 1 or y1 - y0 < 1:
                raise ValueError(f"the box is empty inside the {w}x{h} image")
            box = (x0, y0, x1, y1)
    if not points and box is None:
        return None
    return SmartPrompt(tuple(points), tuple(labels), box, size[0], size[1])


def wait_until_healthy(url: str, timeout_s: float = 120.0) -> bool:
    """Wait until the backend at ``url`` answers ``/health`` (Label Studio calls it when connecting); False when
    ``timeout_s`` passed first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _release_in(loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore) -> None:
    """Give a model slot back from the worker thread (no-op once the server's loop has closed)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(slots.release)


class GeoSegMLBackend:
    """The backend's state: the model (loaded once), the concurrency bound, the Label Studio connection."""

    def __init__(
        self,
        load_model: Callable[[], ModelHandle],
        config: MLBackendConfig | None = None,
        *,
        fetch_image: Callable[[str], bytes] | None = None,
        model_version: str | None = None,
    ) -> None:
        self.config = config or MLBackendConfig()
        self.model_version_hint = model_version  # known before the models load (a hash of the config)
        self._load_model = load_model
        self._model: ModelHandle | None = None
        self._load_error: str | None = None
        self._loaded = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.max_concurrency, thread_name_prefix="geoseg-ml"
        )
        self._slots: asyncio.Semaphore | None = None  # made in the serving event loop
        self._ls_host: str | None = self.config.label_studio_url
        self._ls_token: str | None = self.config.label_studio_token
        self._fetch_image = fetch_image
        self.in_flight = 0
        self.max_in_flight = 0
        self._count_lock = threading.Lock()
        self.loads = 0

    # --- model ------------------------------------------------------------------------------------------------------

    def start_loading(self) -> None:
        threading.Thread(target=self._load, name="geoseg-ml-load", daemon=True).start()

    def _load(self) -> None:
        try:
            t0 = time.perf_counter()
            self._model = self._load_model()
            self.loads += 1
            log.info("ml-backend: model %s loaded in %.1f s", self._model.model_version, time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - reported by /health and every /predict
            self._load_error = f"{type(exc).__name__}: {exc}"
            log.error("ml-backend: model failed to load: %s", self._load_error)
        finally:
            self._loaded.set()

    def model(self, wait: float) -> ModelHandle:
        if not self._loaded.wait(wait):
            raise PredictionTimeoutError(f"the GeoSeg models are still loading (waited {wait:.0f} s); try again")
        if self._model is None:
            raise RuntimeError(f"the GeoSeg models failed to load: {self._load_error}")
        return self._model

    @property
    def model_version(self) -> str | None:
        return self._model.model_version if self._model is not None else self.model_version_hint

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- Label Studio -----------------------------------------------------------------------------------------------

    def setup(self, body: Mapping[str, Any]) -> None:
        host, token = body.get("hostname"), body.get("access_token")
        if isinstance(host, str) and host.startswith(("http://", "https://")) and not self.config.label_studio_url:
            self._ls_host = host
        if isinstance(token, str) and token and not self.config.label_studio_token:
            self._ls_token = token

    def image_bytes(self, url: str) -> bytes:
        if self._fetch_image is not None:
            return self._fetch_image(url)
        if not isinstance(url, str) or not url:
            raise ValueError("the task has no image URL (data.image)")
        headers = {}
        if url.startswith("/"):
            if not self._ls_host:
                raise ValueError(
                    f"image {url} is relative to Label Studio, whose address is unknown: connect the backend in "
                    "Label Studio (it calls /setup) or start it with --label-studio-url"
                )
            url = urljoin(self._ls_host.rstrip("/") + "/", url.lstrip("/"))
            if self._ls_token:
                headers["Authorization"] = f"Token {self._ls_token}"
        elif not url.startswith(("http://", "https://")):
            raise ValueError(f"image URL {url!r} is neither http(s) nor a Label Studio /data/ path")
        else:
            allowed = set(self.config.allowed_image_origins)
            if self._ls_host:
                allowed.add(_origin(self._ls_host))
            if _origin(url) not in allowed:
                raise ValueError(
                    f"refusing to fetch the task image from {_origin(url)}: not Label Studio's address nor an allowed "
                    "image origin (MLBackendConfig.allowed_image_origins / --allow-image-origin)"
                )
        # no redirects: a redirect could lead anywhere (SSRF); Label Studio and presigned URLs answer directly
        r = httpx.get(url, headers=headers, timeout=self.config.image_timeout_s, follow_redirects=False)
        if r.status_code != 200:
            raise ValueError(f"could not download the task image ({url.split('?')[0]}): HTTP {r.status_code}")
        return r.content

    # --- prediction -------------------------------------------------------------------------------------------------

    def _run(self, model: ModelHandle, image_url: str, query: str | SmartPrompt) -> Suggestion:
        with self._count_lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if isinstance(query, SmartPrompt):
                return model.prompt(self.image_bytes(image_url), query)  # type: ignore[misc] - checked by the caller
            return model.suggest(self.image_bytes(image_url), query)
        finally:
            with self._count_lock:
                self.in_flight -= 1

    async def predict_one(
        self,
        task: Mapping[str, Any],
        query_override: str | None,
        *,
        batch_start: float | None = None,
        smart: SmartPrompt | None = None,
    ) -> dict[str, Any]:
        """One task -> ``{"result", "score", "model_version"}`` or ``{"error", "model_version"}``.

        Interactive (``batch_start`` None): everything, queueing included, within ``timeout_s``. In a batch: a slot
        must be had within the batch budget, then the model gets ``timeout_s``, never past the budget's end.
        ``smart``: an annotator's click/box (Label Studio's smart tools) answered by ``ModelHandle.prompt``.
        """
        now = time.monotonic()
        if batch_start is None:
            queue_end = run_end = now + self.config.timeout_s
            waited = f"{self.config.timeout_s:g} s"
        else:
            queue_end = batch_start + self.config.batch_budget_s
            run_end = queue_end
            waited = f"this request's {self.config.batch_budget_s:g} s budget; retrieve predictions again to continue"
        data = task.get("data") or {}
        task_id = task.get("id")
        mv = self.model_version
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.max_concurrency)
        slots = self._slots
        try:
            query = query_override or data.get("query")
            if smart is None and (not isinstance(query, str) or not query.strip()):
                raise ValueError("the task has no query (data.query) and the request carried none")
            model = await asyncio.to_thread(self.model, max(0.0, queue_end - time.monotonic()))
            mv = model.model_version
            if smart is not None and model.prompt is None:
                raise ValueError("this model answers no smart tools (clicks, boxes); ask with a query instead")
            try:
                await asyncio.wait_for(slots.acquire(), max(0.0, queue_end - time.monotonic()))
            except TimeoutError:
                raise PredictionTimeoutError(
                    f"GeoSeg is busy ({self.config.max_concurrency} prediction(s) running); no slot within {waited}"
                ) from None
            started = time.monotonic()
            try:
                fut = self._pool.submit(self._run, model, data.get("image"), smart or query.strip())
            except BaseException:
                slots.release()
                raise
            # the slot is held until the model returns, also after this request gave up on it
            fut.add_done_callback(lambda _f: _release_in(loop, slots))
            budget = min(started + self.config.timeout_s, run_end) - time.monotonic()
            try:
                sug = await asyncio.wait_for(asyncio.wrap_future(fut), max(0.0, budget))
            except TimeoutError:
                if batch_start is not None and run_end < started + self.config.timeout_s:  # cut by the batch budget
                    raise PredictionTimeoutError(f"GeoSeg did not finish within {waited}") from None
                raise PredictionTimeoutError(
                    f"GeoSeg did not answer within {self.config.timeout_s:g} s (slow model or large image); "
                    "try again later or ask an admin to raise the backend's --timeout"
                ) from None
            return {
                "result": brush_region(sug, model.warning),
                "score": float(sug.score) if sug.score is not None else 0.0,
                "model_version": sug.model_version,
            }
        except Exception as exc:  # noqa: BLE001 - one clear line per task, the batch goes on
            msg = str(exc) if isinstance(exc, TimeoutError) else f"GeoSeg pre-label failed: {type(exc).__name__}: {exc}"
            log.warning("ml-backend: task %s: %s", task_id, msg)
            out: dict[str, Any] = {"error": msg, "task": task_id}
            if mv:
                out["model_version"] = mv
            return out

    async def predict(self, body: Mapping[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise ValueError("'tasks' must be a non-empty list")
        params = body.get("params") or {}
        context = params.get("context") if isinstance(params, Mapping) else None
        override = context_query(context)
        smart = smart_prompt(context)
        interactive = context is not None
        start = None if interactive else time.monotonic()
        outs = await asyncio.gather(
            *(self.predict_one(t if isinstance(t, Mapping) else {}, override, batch_start=start, smart=smart)
              for t in tasks)
        )
        errors = [o["error"] for o in outs if "error" in o]
        if interactive:  # Label Studio returns results[0] to the annotator's client: keep the message visible there
            outs = [{"result": [], "score": 0.0, **o} if "error" in o else o for o in outs]
        resp: dict[str, Any] = {"results": outs}
        if self.model_version is not None:
            resp["model_version"] = self.model_version
        if self._model is not None and self._model.warning:
            resp["warning"] = self._model.warning
        if errors:
            resp["errors"] = errors
        return resp

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": "UP",
            "model_class": "GeoSeg",
            "models_loaded": self._model is not None,
            "max_concurrency": self.config.max_concurrency,
            "in_flight": self.in_flight,
        }
        if self.model_version is not None:
            out["model_version"] = self.model_version
        if self._model is not None and self._model.warning:
            out["warning"] = self._model.warning
        if self._load_error:
            out["status"] = "ERROR"
            out["error"] = self._load_error
        return out


def create_app(
    load_model: Callable[[], ModelHandle],
    config: MLBackendConfig | None = None,
    *,
    fetch_image: Callable[[str], bytes] | None = None,
    model_version: str | None = None,
) -> Any:
    """The ASGI app (Starlette). ``app.state.backend`` is the :class:`GeoSegMLBackend`.

    ``model_version``, when known before the models load, lets ``/setup`` answer at once (Label Studio gives it 3 s)
    while a large model is still loading; without it ``/setup`` waits up to 2.5 s for the load.

    Longer than 80 lines because the route handlers are closures over one backend and config (the protocol's four
    endpoints read best side by side); each handler is a few lines calling :class:`GeoSegMLBackend`.
    """

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    backend = GeoSegMLBackend(load_model, config, fetch_image=fetch_image, model_version=model_version)

    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise ValueError("the request body is not JSON") from None
        if not isinstance(body, dict):
            raise ValueError("the request body must be a JSON object")
        return body

    async def health(request: Request) -> JSONResponse:
        h = backend.health()
        return JSONResponse(h, status_code=200 if h["status"] == "UP" else 503)

    async def setup(request: Request) -> JSONResponse:
        try:
            body = await _json(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        backend.setup(body)
        if backend._load_error:
            return JSONResponse({"error": f"the GeoSeg models failed to load: {backend._load_error}"}, status_code=503)
        if backend.model_version is None:
            try:
                await asyncio.to_thread(backend.model, 2.5)
            except Exception as exc:  # noqa: BLE001 - Label Studio shows the connection as failed with this text
                return JSONResponse({"error": str(exc)}, status_code=503)
        return JSONResponse({"model_version": backend.model_version})

    async def predict(request: Request) -> JSONResponse:
        try:
            body = await _json(request)
            return JSONResponse(await backend.predict(body))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def webhook(request: Request) -> JSONResponse:
        try:
            body = await _json(request)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"status": "ok", "action": body.get("action")}, status_code=201)

    async def versions(request: Request) -> JSONResponse:
        mv = backend.model_version
        return JSONResponse({"versions": [mv] if mv else [], "message": ""})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        backend.start_loading()
        yield
        backend.shutdown()

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/", health, methods=["GET"]),
            Route("/setup", setup, methods=["POST"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/webhook", webhook, methods=["POST"]),
            Route("/versions", versions, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.backend = backend
    return app
