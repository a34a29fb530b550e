"""Grounder backend for any OpenAI-compatible chat-completions server (vLLM, SGLang, a hosted API).

``POST {base_url}/chat/completions`` with the image as a base64 PNG data URL next to the prompt text, greedy
(temperature 0). The API key is read from the environment variable *named* by ``api_key_env`` and sent only in the
``Authorization`` header: it is never stored in options, logged, or put in an error message.

Faults: timeouts, connection errors, HTTP 5xx and 429 are retried with exponential backoff (``backoff * 2**attempt``,
capped at ``backoff_max``; a 429/503 ``Retry-After`` is honoured up to the same cap); other 4xx fail at once
(401/403 as :class:`GrounderAuthError` naming the env var, others as :class:`GrounderRejectedError`).
``ground_many`` runs a batch with at most ``concurrency`` requests in flight and returns one Grounding or exception
per item, in order; each distinct image of the batch is encoded once, whatever the number of its queries.

Constrained answers (``constrained=True``, the default): each grounding request carries a ``response_format`` with
the answer's JSON schema (``geoseg.grounding.constrained.answer_schema``; vLLM enforces it with guided decoding).
A server that rejects the field (HTTP 4xx whose error names it: ``response_format``, ``json_schema``, guided or
structured output) gets the request again without it, once; when that succeeds the grounder
remembers and sends free requests from then on (logged once). The free-text parser reads both kinds of answer.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np

from geoseg.grounding.constrained import response_format
from geoseg.grounding.errors import GrounderAuthError, GrounderError, GrounderRejectedError
from geoseg.grounding.parse import note_truncation, parse_grounding
from geoseg.grounding.prompts import GroundingPrompt, build_prompt, check_convention, check_form
from geoseg.grounding.transformers_backend import as_rgb_uint8
from geoseg.types import Grounding

log = logging.getLogger(__name__)

#: Words a server's 4xx error uses when it is the structured-output field it refuses (OpenAI: "Invalid parameter:
#: 'response_format' ...", vLLM: "... guided decoding / json_schema ..."). Other 4xx are not retried.
_RESPONSE_FORMAT_WORDS = ("response_format", "json_schema", "guided", "structured output")


def _names_response_format(message: str) -> bool:
    low = message.lower()
    return any(w in low for w in _RESPONSE_FORMAT_WORDS)

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))


def image_data_url(image: np.ndarray, image_format: str = "png") -> str:
    """The image as a ``data:image/png;base64,...`` URL (PNG is lossless; ``jpeg`` is smaller for huge tiles)."""
    from PIL import Image

    fmt = image_format.lower()
    if fmt not in ("png", "jpeg"):
        raise ValueError(f"image_format must be png or jpeg, got {image_format!r}")
    buf = io.BytesIO()
    # PNG at zlib level 1: still lossless, encodes faster than the default level 6 and is about as small on photos
    options = {"quality": 95} if fmt == "jpeg" else {"compress_level": 1}
    Image.fromarray(as_rgb_uint8(image)).save(buf, format=fmt.upper(), **options)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def message_content(payload: Any) -> str:
    """The assistant text of a chat-completions response body; ValueError when the body has no such text."""
    try:
        message = payload["choices"][0]["message"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ValueError("response has no choices[0].message") from exc
    content = message.get("content") if isinstance(message, dict) else None
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise ValueError(f"choices[0].message.content has unexpected type {type(content).__name__}")


def _finish_reason(payload: Any) -> str | None:
    try:
        reason = payload["choices"][0].get("finish_reason")
    except (KeyError, IndexError, TypeError, AttributeError):
        return None
    return reason if isinstance(reason, str) else None


class OpenAIGrounder:
    """𝓛 served behind an OpenAI-compatible API. Thread-safe; one HTTP connection pool per instance."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        convention: str = "norm1000",
        prompt_form: str = "geoseg",
        max_tokens: int = 512,
        temperature: float = 0.0,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 16.0,
        concurrency: int = 4,
        image_format: str = "png",
        system_prompt: bool = True,
        extra_body: dict[str, Any] | None = None,
        require_gpu: bool = False,
        meaningless: bool = False,
        constrained: bool = True,
    ) -> None:
        if not model or not isinstance(model, str):
            raise ValueError("OpenAIGrounder needs the served model name")
        if not base_url or not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(
                "OpenAIGrounder needs base_url, the server's API root such as http://127.0.0.1:8000/v1; "
                f"got {base_url!r}"
            )
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.convention = check_convention(convention)
        self.prompt_form = check_form(prompt_form)
        int_options = (("max_retries", max_retries, 0), ("concurrency", concurrency, 1), ("max_tokens", max_tokens, 1))
        for name, value, lo in int_options:
            if not isinstance(value, int) or isinstance(value, bool) or value < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
        for name, value in (("timeout", timeout), ("connect_timeout", connect_timeout), ("backoff_max", backoff_max)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not isinstance(backoff, (int, float)) or backoff < 0:
            raise ValueError(f"backoff must be a number >= 0, got {backoff!r}")
        self.max_tokens = max_tokens
        self.temperature = float(temperature)
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.backoff_max = float(backoff_max)
        self.concurrency = concurrency
        self.image_format = image_format
        self.system_prompt = bool(system_prompt)
        self.extra_body = dict(extra_body or {})
        self.meaningless = bool(meaningless)
        self.constrained = bool(constrained)
        #: None until a server answered a constrained request; False once it rejected response_format
        self.response_format_supported: bool | None = None
        # accepted for profile compatibility and not enforced here: the GPU belongs to the server
        self.require_gpu = bool(require_gpu)
        self.api_key_env = api_key_env
        if api_key_env is not None and not os.environ.get(api_key_env):
            raise GrounderAuthError(
                f"the grounder at {self.base_url} expects an API key in the environment variable {api_key_env}, "
                "which is not set (or empty)"
            )
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return (
            f"OpenAIGrounder(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r}, "
            f"convention={self.convention!r}, prompt_form={self.prompt_form!r})"
        )

    # ------------------------------------------------------------------------------------------------ HTTP
    def _http(self) -> httpx.Client:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    headers = {"Content-Type": "application/json"}
                    if self.api_key_env:
                        headers["Authorization"] = f"Bearer {os.environ.get(self.api_key_env, '')}"
                    self._client = httpx.Client(
                        headers=headers,
                        timeout=httpx.Timeout(self.timeout, connect=self.connect_timeout),
                        limits=httpx.Limits(max_connections=max(self.concurrency, 1) * 2),
                    )
        return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> OpenAIGrounder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.backoff * (2**attempt), self.backoff_max)
        if retry_after:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), self.backoff_max))
        return delay

    def _auth_error(self, status: int) -> GrounderAuthError:
        if self.api_key_env:
            where = f"the key in the environment variable {self.api_key_env} was refused"
        else:
            where = "no API key was sent; set api_key_env to the name of the environment variable holding the key"
        return GrounderAuthError(f"grounder at {self.url} answered HTTP {status}: {where}")

    def request_body(self, image: np.ndarray, prompt: GroundingPrompt, image_url: str | None = None) -> dict[str, Any]:
        """The chat-completions body for (image, prompt); ``image_url``: the image already encoded (a data URL)."""
        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": prompt.system})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image_url or image_data_url(image, self.image_format)}},
                    {"type": "text", "text": prompt.user},
                ],
            }
        )
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }
        body.update(self.extra_body)
        return body

    def complete(self, body: dict[str, Any]) -> str:
        """POST one chat completion with retries; returns the assistant text or raises GrounderError."""
        return self.complete_with_reason(body)[0]

    def complete_with_reason(self, body: dict[str, Any]) -> tuple[str, str | None]:
        """Like :meth:`complete`, also returning ``finish_reason`` (``"length"`` when max_tokens cut the answer)."""
        client = self._http()
        attempts = self.max_retries + 1
        last = "no attempt made"
        for attempt in range(attempts):
            retry_after = None
            try:
                resp = client.post(self.url, json=body)
            except httpx.TimeoutException as exc:
                last = f"timed out ({type(exc).__name__}, timeout {self.timeout:g} s)"
            except httpx.TransportError as exc:
                last = f"connection failed ({type(exc).__name__}: {exc})"
            else:
                status = resp.status_code
                if status in (401, 403):
                    raise self._auth_error(status)
                if status in _RETRY_STATUS:
                    last = f"HTTP {status}: {resp.text[:200]!r}"
                    retry_after = resp.headers.get("Retry-After")
                elif status >= 400:
                    raise GrounderRejectedError(
                        f"grounder at {self.url} rejected the request, HTTP {status}: {resp.text[:500]!r}", status
                    )
                else:
                    try:
                        payload = resp.json()
                        return message_content(payload), _finish_reason(payload)
                    except ValueError as exc:
                        raise GrounderError(
                            f"grounder at {self.url} sent an unreadable chat-completions response "
                            f"(HTTP {status}): {exc}; body starts {resp.text[:200]!r}"
                        ) from exc
            if attempt + 1 < attempts:
                time.sleep(self._delay(attempt, retry_after))
        raise GrounderError(f"grounder at {self.url} failed after {attempts} attempt(s); last error: {last}")

    # --------------------------------------------------------------------------------------------- inference
    def ground(self, image: np.ndarray, query: str) -> Grounding:
        """𝓛(image, query) through the served model; raises GrounderError when the server cannot answer."""
        return self._ground(as_rgb_uint8(image), query)

    def _ground(self, rgb: np.ndarray, query: str, image_url: str | None = None) -> Grounding:
        H, W = rgb.shape[:2]
        prompt = build_prompt(query, self.prompt_form, self.convention, (W, H))
        body = self.request_body(rgb, prompt, image_url)
        answer, finish_reason = self._complete_grounding(body, (W, H))
        g = parse_grounding(answer, (W, H), self.convention)
        return note_truncation(g, "max_tokens", self.max_tokens) if finish_reason == "length" else g

    def _complete_grounding(self, body: dict[str, Any], frame: tuple[int, int]) -> tuple[str, str | None]:
        """POST with the answer's JSON schema as ``response_format`` (unless switched off or known to be rejected);
        on a 4xx, once more without it, remembering the server's answer."""
        if not self.constrained or self.response_format_supported is False or "response_format" in body:
            return self.complete_with_reason(body)
        constrained = {**body, "response_format": response_format(self.prompt_form, self.convention, frame)}
        try:
            out = self.complete_with_reason(constrained)
        except GrounderRejectedError as exc:
            if not _names_response_format(str(exc)):
                raise  # rejected for another reason: not retried
            out = self.complete_with_reason(body)  # raises on its own when the request itself is the problem
            with self._lock:
                if self.response_format_supported is not False:
                    log.warning("grounder at %s rejected response_format (%s); sending free requests from now on",
                                self.url, exc.status)
                self.response_format_supported = False
            return out
        self.response_format_supported = True
        return out

    def ground_many(self, items: Iterable[tuple[np.ndarray, str]]) -> list[Grounding | Exception]:
        """Ground a batch with at most ``concurrency`` requests in flight; one result (or exception) per item.

        Each distinct image array is validated and encoded once (in the pool, before the requests that need it)."""
        items = list(items)
        if not items:
            return []
        workers = 1 if self.concurrency == 1 or len(items) == 1 else min(self.concurrency, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grounder") as pool:
            encoded: dict[int, Any] = {}
            for image, _query in items:  # encodes are queued first: a request never waits behind its own encode
                if id(image) not in encoded:
                    encoded[id(image)] = pool.submit(self._encode, image)

            def one(item: tuple[np.ndarray, str]) -> Grounding | Exception:
                image, query = item
                try:
                    rgb, url = encoded[id(image)].result()
                    return self._ground(rgb, query, url)
                except (GrounderError, ValueError) as exc:
                    return exc

            return list(pool.map(one, items))

    def _encode(self, image: np.ndarray) -> tuple[np.ndarray, str]:
        rgb = as_rgb_uint8(image)
        return rgb, image_data_url(rgb, self.image_format)
