"""The OpenAI-compatible grounder against a real local chat-completions HTTP server (tests/fixtures/grounding.py):
answers, image transport, auth, timeouts, 5xx retries, connection errors, and bounded concurrency for batches."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest

from geoseg.grounding import GrounderAuthError, GrounderError, build_grounder
from geoseg.grounding.openai_backend import OpenAIGrounder, image_data_url, message_content
from geoseg.types import BackendSpec, Box, Grounding
from tests.fixtures.grounding import TINY_SERVED_MODEL

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"


@pytest.fixture(scope="module")
def aerial_rgb() -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(AERIAL / "SOAP_061.png").convert("RGB"))


def grounder(server, **options) -> OpenAIGrounder:
    opts = {"base_url": server.base_url, "timeout": 2.0, "backoff": 0.01, "max_retries": 2}
    opts.update(options)
    return OpenAIGrounder("qwen3-vl-served", **opts)


def test_canned_answer_converted_to_pixels_and_image_sent_losslessly(chat_server, aerial_rgb):
    H, W = aerial_rgb.shape[:2]
    with grounder(chat_server) as g:
        out = g.ground(aerial_rgb, "the largest building")
    assert out.error is None and out.phrase == "large flat-roofed building"
    assert out.box == Box(0.1 * W, 0.2 * H, 0.4 * W, 0.6 * H)
    assert len(chat_server.requests) == 1
    req = chat_server.requests[0]
    np.testing.assert_array_equal(req["image"], aerial_rgb)  # PNG data URL: pixel-exact
    assert req["body"]["temperature"] == 0.0 and req["body"]["model"] == "qwen3-vl-served"
    assert "0-1000 grid" in req["text"]
    assert req["auth"] is None


def test_think2seg_no_target_and_think_answers(chat_server, aerial_rgb):
    g = grounder(chat_server, prompt_form="think2seg")
    trees = g.ground(aerial_rgb, "the trees along the road")
    assert len(trees.boxes) == 2 and len(trees.points[1]) == 2
    assert '"bbox_2d"' in chat_server.requests[0]["text"]
    none = g.ground(aerial_rgb, "a swimming pool")
    assert none.no_target and none.error is None
    lot = g.ground(aerial_rgb, "the parking lot")
    assert lot.phrase == "parking lot" and lot.raw_text.startswith("<think>")
    junk = g.ground(aerial_rgb, "gibberish please")
    assert junk.box is None and junk.error and junk.raw_text == "I am not sure what you mean."


def test_api_key_from_named_env_var(chat_server, aerial_rgb, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    chat_server.token = secret
    monkeypatch.setenv("GEOLABEL_TEST_GROUNDER_KEY", secret)
    g = grounder(chat_server, api_key_env="GEOLABEL_TEST_GROUNDER_KEY")
    assert g.ground(aerial_rgb, "the largest building").box is not None
    assert chat_server.requests[-1]["auth"] == f"Bearer {secret}"
    assert secret not in repr(g)


def test_401_names_the_env_var_and_hides_the_key(chat_server, aerial_rgb, monkeypatch):
    chat_server.token = "the-right-key"
    monkeypatch.setenv("GEOLABEL_TEST_GROUNDER_KEY", "a-wrong-key-xyz")
    g = grounder(chat_server, api_key_env="GEOLABEL_TEST_GROUNDER_KEY")
    with pytest.raises(GrounderAuthError, match="GEOLABEL_TEST_GROUNDER_KEY") as info:
        g.ground(aerial_rgb, "the largest building")
    assert "a-wrong-key-xyz" not in str(info.value)
    assert len(chat_server.requests) == 1  # 4xx: no retry
    with pytest.raises(GrounderAuthError, match="api_key_env"):
        grounder(chat_server).ground(aerial_rgb, "the largest building")


def test_missing_key_env_var_is_a_clear_error(chat_server, monkeypatch):
    monkeypatch.delenv("GEOLABEL_TEST_UNSET_KEY", raising=False)
    with pytest.raises(GrounderAuthError, match="GEOLABEL_TEST_UNSET_KEY"):
        grounder(chat_server, api_key_env="GEOLABEL_TEST_UNSET_KEY")


def test_5xx_then_success_is_retried(chat_server, aerial_rgb):
    chat_server.queue({"status": 500}, {"status": 503, "retry_after": 0}, {"status": 429})
    g = grounder(chat_server, max_retries=3)
    out = g.ground(aerial_rgb, "the largest building")
    assert out.box is not None
    assert len(chat_server.requests) == 4


def test_persistent_5xx_gives_a_clear_error(chat_server, aerial_rgb):
    chat_server.queue(*[{"status": 502}] * 3)
    with pytest.raises(GrounderError, match=r"failed after 3 attempt\(s\).*HTTP 502"):
        grounder(chat_server, max_retries=2).ground(aerial_rgb, "the largest building")
    assert len(chat_server.requests) == 3


def test_400_is_not_retried(chat_server, aerial_rgb):
    with pytest.raises(GrounderError, match="HTTP 400.*no canned answer"):
        grounder(chat_server).ground(aerial_rgb, "something unknown")
    assert len(chat_server.requests) == 1


def test_timeout_then_success(chat_server, aerial_rgb):
    chat_server.queue({"sleep": 1.0})
    t0 = time.perf_counter()
    out = grounder(chat_server, timeout=0.3).ground(aerial_rgb, "the largest building")
    assert out.box is not None
    assert len(chat_server.requests) == 2
    assert time.perf_counter() - t0 < 1.0


def test_persistent_timeout_gives_a_clear_error(chat_server, aerial_rgb):
    chat_server.queue({"sleep": 0.6}, {"sleep": 0.6})
    with pytest.raises(GrounderError, match="timed out"):
        grounder(chat_server, timeout=0.2, max_retries=1).ground(aerial_rgb, "the largest building")


def test_connection_refused_is_retried_then_clear(aerial_rgb):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    g = OpenAIGrounder("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=0.01, timeout=1.0)
    with pytest.raises(GrounderError, match=r"failed after 2 attempt\(s\).*connection failed"):
        g.ground(aerial_rgb, "the largest building")


def test_unreadable_200_response(chat_server, aerial_rgb):
    chat_server.queue({"body": "<html>proxy error</html>"})
    with pytest.raises(GrounderError, match="unreadable chat-completions response"):
        grounder(chat_server).ground(aerial_rgb, "the largest building")


def test_ground_many_bounded_concurrency_in_order(chat_server, aerial_rgb):
    chat_server.delay = 0.5
    small = np.ascontiguousarray(aerial_rgb[:64, :64])
    queries = ["the largest building", "a swimming pool", "the parking lot"] * 2
    g = grounder(chat_server, concurrency=3)
    t0 = time.perf_counter()
    out = g.ground_many([(small, q) for q in queries])
    elapsed = time.perf_counter() - t0
    assert chat_server.max_in_flight == 3  # bounded, and actually concurrent
    assert elapsed < 0.5 * len(queries)  # one at a time would take at least this long
    assert [isinstance(o, Grounding) for o in out] == [True] * len(queries)
    assert out[0].phrase == out[3].phrase == "large flat-roofed building"
    assert out[1].no_target and out[2].phrase == "parking lot"


def test_ground_many_returns_per_item_errors(chat_server, aerial_rgb):
    items = [(aerial_rgb, "the largest building"), (aerial_rgb, "unknown query"), (np.zeros((3, 3)), "a road")]
    out = grounder(chat_server, concurrency=2).ground_many(items)
    assert isinstance(out[0], Grounding) and out[0].box is not None
    assert isinstance(out[1], GrounderError) and "HTTP 400" in str(out[1])
    assert isinstance(out[2], ValueError) and "uint8" in str(out[2])


def test_server_backed_by_the_tiny_model(chat_server, aerial_rgb):
    g = build_grounder(
        BackendSpec("openai", TINY_SERVED_MODEL, {"base_url": chat_server.base_url, "max_tokens": 32, "timeout": 30})
    )
    from geoseg.protocols import Grounder

    assert isinstance(g, Grounder)
    out = g.ground(aerial_rgb, "the largest tree crown")
    assert chat_server.generated and out.raw_text == chat_server.generated[0]
    assert isinstance(out, Grounding)  # random tokens: usually no box, the text is kept


def test_truncated_answer_is_reported(chat_server, aerial_rgb):
    chat_server.queue({"answer": '{"bbox": [10, 20', "finish_reason": "length"})
    out = grounder(chat_server, max_tokens=7).ground(aerial_rgb, "the largest building")
    assert out.box is None and "cut off at max_tokens=7" in out.error


def test_option_validation():
    with pytest.raises(ValueError, match="base_url"):
        OpenAIGrounder("m")
    with pytest.raises(ValueError, match="base_url"):
        OpenAIGrounder("m", base_url="127.0.0.1:8000")
    with pytest.raises(ValueError, match="concurrency"):
        OpenAIGrounder("m", base_url="http://x/v1", concurrency=0)
    with pytest.raises(ValueError, match="timeout"):
        OpenAIGrounder("m", base_url="http://x/v1", timeout=0)
    with pytest.raises(ValueError, match="spec.model"):
        build_grounder(BackendSpec("openai"))


def test_helpers():
    url = image_data_url(np.zeros((4, 4, 3), np.uint8))
    assert url.startswith("data:image/png;base64,")
    assert image_data_url(np.zeros((4, 4, 3), np.uint8), "jpeg").startswith("data:image/jpeg;base64,")
    parts = [{"type": "text", "text": "a"}, {"text": "b"}]
    assert message_content({"choices": [{"message": {"content": parts}}]}) == "ab"
    assert message_content({"choices": [{"message": {"content": None}}]}) == ""
    with pytest.raises(ValueError):
        message_content({"error": "x"})


def test_response_format_carries_the_answer_schema(chat_server, aerial_rgb):
    from geoseg.grounding.constrained import answer_schema

    g = grounder(chat_server)
    assert g.ground(aerial_rgb, "the largest building").box is not None
    rf = chat_server.requests[0]["body"]["response_format"]
    assert rf["type"] == "json_schema" and rf["json_schema"]["schema"] == answer_schema("geoseg", "norm1000")
    assert g.response_format_supported is True
    grounder(chat_server, prompt_form="think2seg").ground(aerial_rgb, "the trees along the road")
    assert chat_server.requests[1]["body"]["response_format"]["json_schema"]["schema"]["type"] == "array"
    grounder(chat_server, constrained=False).ground(aerial_rgb, "the largest building")
    assert "response_format" not in chat_server.requests[2]["body"]


def test_rejected_response_format_falls_back_once_and_is_remembered(chat_server, aerial_rgb):
    chat_server.reject_response_format = True
    g = grounder(chat_server)
    first = g.ground(aerial_rgb, "the largest building")
    second = g.ground(aerial_rgb, "the largest building")
    assert first.box is not None and second.box == first.box  # the free-text parser reads the free answers
    sent = ["response_format" in r["body"] for r in chat_server.requests]
    assert sent == [True, False, False] and g.response_format_supported is False


def test_ground_many_encodes_each_image_once(chat_server, aerial_rgb, monkeypatch):
    import geoseg.grounding.openai_backend as backend

    calls = []
    real = backend.image_data_url
    monkeypatch.setattr(backend, "image_data_url", lambda im, fmt="png": calls.append(1) or real(im, fmt))
    other = np.ascontiguousarray(aerial_rgb[::2, ::2])
    queries = ["the largest building", "the parking lot", "a swimming pool"]
    items = [(im, q) for im in (aerial_rgb, other) for q in queries]
    out = grounder(chat_server, concurrency=4).ground_many(items)
    assert len(calls) == 2 and len(chat_server.requests) == 6  # one PNG per image, one request per query
    assert [o.box is not None for o in out] == [True, True, False] * 2
