"""Brush RLE codec: exact against label_studio_sdk.converter.brush both ways, on many kinds of masks and streams."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from label_studio_sdk.converter import brush as sdk

from labeling.brush import BrushRLEError, decode_rle_values, mask_to_rle, rle_header, rle_to_mask


def _sdk_rle(mask: np.ndarray) -> list[int]:
    return sdk.mask2rle(mask.astype(np.uint8) * 255)


def _sdk_mask(rle: list[int], h: int, w: int) -> np.ndarray:
    return sdk.decode_rle(rle).reshape(h, w, 4)[:, :, 3] != 0


def _masks() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        np.zeros((1, 1), bool),
        np.ones((1, 1), bool),
        np.ones((1, 300), bool),
        np.zeros((300, 1), bool),
    ]
    single = np.zeros((40, 33), bool)
    single[3, 4] = True
    out.append(single)
    last = np.zeros((17, 19), bool)
    last[-1, -1] = True
    out.append(last)
    for p in (0.01, 0.3, 0.5, 0.9):
        out.append(rng.random((int(rng.integers(20, 120)), int(rng.integers(20, 120)))) < p)
    yy, xx = np.mgrid[:256, :320]
    out.append(((yy - 120) ** 2 + (xx - 150) ** 2) < 80**2)  # blob
    # runs of exactly 65536 values and multiples (16384 pixels = one full 16-bit run)
    out.append(np.ones((128, 128), bool))
    out.append(np.ones((256, 256), bool))
    stripes = np.zeros((64, 1024), bool)
    stripes[::2] = True
    out.append(stripes)
    return out


@pytest.mark.parametrize("mask", _masks(), ids=lambda m: f"{m.shape[0]}x{m.shape[1]}-{int(m.sum())}")
def test_encode_matches_sdk_and_round_trips(mask):
    rle = mask_to_rle(mask)
    assert rle == _sdk_rle(mask)
    assert all(isinstance(v, int) and 0 <= v <= 255 for v in rle[:64])
    back = rle_to_mask(rle, *mask.shape)
    assert back.dtype == np.bool_ and back.shape == mask.shape
    np.testing.assert_array_equal(back, mask)
    np.testing.assert_array_equal(decode_rle_values(rle), sdk.decode_rle(rle))


def test_large_noisy_mask_exact():
    rng = np.random.default_rng(3)
    mask = rng.random((512, 640)) < 0.5
    rle = mask_to_rle(mask)
    assert rle == _sdk_rle(mask)
    np.testing.assert_array_equal(rle_to_mask(rle, 512, 640), mask)


def test_encoder_accepts_non_bool_masks():
    m = np.array([[0, 3], [255, 0]], dtype=np.uint8)
    assert mask_to_rle(m) == _sdk_rle(m != 0)
    assert mask_to_rle(m.astype(float)) == _sdk_rle(m != 0)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    seed=st.integers(0, 2**32 - 1),
    p=st.floats(0.0, 1.0),
)
def test_property_exact_both_ways(h, w, seed, p):
    mask = np.random.default_rng(seed).random((h, w)) < p
    rle = mask_to_rle(mask)
    assert rle == _sdk_rle(mask)
    np.testing.assert_array_equal(rle_to_mask(rle, h, w), mask)
    np.testing.assert_array_equal(rle_to_mask(rle, h, w), _sdk_mask(rle, h, w))


# ---- a generic rle-pack writer (test-only): literal records, other word and rle sizes, like LS's frontend encoder


def _pack_stream(values: np.ndarray, word_size: int = 8, rle_sizes=(3, 4, 8, 16)) -> list[int]:
    bits: list[str] = [f"{len(values):032b}", f"{word_size - 1:05b}", *(f"{s - 1:04b}" for s in rle_sizes)]
    caps = [1 << s for s in rle_sizes]

    def size_index(n: int) -> int:
        return next(i for i, c in enumerate(caps) if n <= c)

    vals = [int(v) for v in values]
    i = 0
    literal: list[int] = []

    def flush():
        while literal:
            part = literal[: caps[-1]]
            del literal[: caps[-1]]
            t = size_index(len(part))
            bits.append("0" + f"{t:02b}" + f"{len(part) - 1:0{rle_sizes[t]}b}")
            bits.extend(f"{v:0{word_size}b}" for v in part)

    while i < len(vals):
        j = i
        while j < len(vals) and vals[j] == vals[i]:
            j += 1
        n = j - i
        if n == 1:
            literal.append(vals[i])
        else:
            flush()
            while n > 0:
                k = min(n, caps[-1])
                t = size_index(k)
                bits.append("1" + f"{t:02b}" + f"{k - 1:0{rle_sizes[t]}b}" + f"{vals[i]:0{word_size}b}")
                n -= k
        i = j
    flush()
    s = "".join(bits)
    s += "0" * (-len(s) % 8)
    return [int(s[k : k + 8], 2) for k in range(0, len(s), 8)]


@pytest.mark.parametrize("rle_sizes", [(3, 4, 8, 16), (1, 2, 5, 9), (16, 16, 16, 16)])
@pytest.mark.parametrize("word_size", [8, 5])
def test_decoder_reads_literal_records_and_other_layouts(rle_sizes, word_size):
    rng = np.random.default_rng(11)
    # RGBA-like data: colour channels vary pixel to pixel (literal records), alpha runs (repeat records)
    px = rng.integers(0, 1 << word_size, size=(30, 41, 4))
    px[..., 3] = np.where(rng.random((30, 41)) < 0.4, (1 << word_size) - 1, 0)
    px[5:9] = 0
    values = px.ravel()
    rle = _pack_stream(values, word_size, rle_sizes)
    assert rle_header(rle) == (values.size, word_size, tuple(rle_sizes))
    np.testing.assert_array_equal(decode_rle_values(rle), values)
    np.testing.assert_array_equal(decode_rle_values(rle), sdk.decode_rle(rle))
    np.testing.assert_array_equal(rle_to_mask(rle, 30, 41), px[..., 3] != 0)


def test_long_literal_record():
    values = np.arange(3000) % 251  # one literal record of 3000 words (needs the 16-bit count)
    rle = _pack_stream(values)
    np.testing.assert_array_equal(decode_rle_values(rle), values)


def test_bad_inputs_raise_clear_errors():
    mask = np.zeros((4, 5), bool)
    rle = mask_to_rle(mask)
    with pytest.raises(BrushRLEError, match="holds 80 values.*needs 100"):
        rle_to_mask(rle, 5, 5)
    with pytest.raises(BrushRLEError, match="truncated"):
        rle_to_mask(mask_to_rle(np.random.default_rng(0).random((20, 20)) < 0.5)[:40], 20, 20)
    with pytest.raises(BrushRLEError, match="too short"):
        rle_to_mask([1, 2, 3], 1, 1)
    with pytest.raises(BrushRLEError, match="0..255"):
        rle_to_mask([300, 2, 3, 4, 5, 6, 7, 8], 1, 1)
    with pytest.raises(BrushRLEError, match="string"):
        rle_to_mask("abc", 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="empty"):
        mask_to_rle(np.zeros((0, 3), bool))
    with pytest.raises(ValueError, match="positive"):
        rle_to_mask(rle, 0, 5)
