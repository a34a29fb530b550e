"""Masks at rest: exact round trips, the compact codec choice, and clear errors on damaged or unexpected data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from storage.maskcodec import (
    CODEC_BITS,
    CODEC_RLE,
    MaskCodecError,
    coco_rle,
    coco_rle_decode,
    decode_mask,
    encode_mask,
    peek_shape,
)


def _codec(data: bytes) -> int:
    return data[5]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (3, 5), (810, 810), (1024, 1024), (1000, 1601)])
def test_round_trip_shapes_and_patterns(shape):
    rng = np.random.default_rng(sum(shape))
    h, w = shape
    empty = np.zeros(shape, bool)
    full = np.ones(shape, bool)
    blob = np.zeros(shape, bool)
    blob[h // 4 : max(h // 4 + 1, 3 * h // 4), w // 3 : max(w // 3 + 1, 2 * w // 3)] = True
    noise = rng.random(shape) < 0.5
    for m in (empty, full, blob, noise):
        data = encode_mask(m)
        out = decode_mask(data, shape)
        assert out.dtype == np.bool_ and out.shape == shape
        assert np.array_equal(out, m)
        assert peek_shape(data) == shape


def test_compact_codec_choice():
    m = np.zeros((1024, 1024), bool)
    m[100:600, 200:900] = True
    data = encode_mask(m)
    assert _codec(data) == CODEC_RLE and len(data) < 200  # a 1 MiB bool mask as ~100 bytes
    noise = np.random.default_rng(0).random((1024, 1024)) < 0.5
    data = encode_mask(noise)
    assert _codec(data) == CODEC_BITS
    assert len(data) <= 1024 * 1024 // 8 + 200  # never worse than 1 bit per pixel (plus header / deflate overhead)
    assert np.array_equal(decode_mask(data), noise)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_round_trip_property(m):
    assert np.array_equal(decode_mask(encode_mask(m), m.shape), m)


def test_coco_rle_is_pycocotools_valid():
    from pycocotools import mask as cocomask

    m = np.zeros((37, 53), bool)
    m[5:20, 10:41] = True
    m[30, 50] = True
    rle = coco_rle(m)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    assert int(cocomask.area({"size": rle["size"], "counts": rle["counts"].encode()})) == int(m.sum())
    assert np.array_equal(coco_rle_decode(rle), m)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((4, 4), np.uint8), "dtype bool"),
        (np.zeros((4,), bool), "2-D"),
        (np.zeros((4, 4, 1), bool), "2-D"),
        (np.zeros((0, 4), bool), "empty"),
    ],
)
def test_encode_refuses_bad_masks(bad, message):
    with pytest.raises(MaskCodecError, match=message):
        encode_mask(bad)


def test_decode_checks_shape_and_integrity():
    m = np.zeros((64, 48), bool)
    m[10:30, 5:40] = True
    data = encode_mask(m)
    with pytest.raises(MaskCodecError, match=r"differs from the expected \(48, 64\)"):
        decode_mask(data, (48, 64))
    with pytest.raises(MaskCodecError, match="too short"):
        decode_mask(data[:10])
    with pytest.raises(MaskCodecError, match="truncated"):
        decode_mask(data[:-3])
    with pytest.raises(MaskCodecError, match="magic"):
        decode_mask(b"XXXX" + data[4:])
    with pytest.raises(MaskCodecError, match="version"):
        decode_mask(data[:4] + bytes([9]) + data[5:])
    with pytest.raises(MaskCodecError, match="must be bytes"):
        decode_mask("not bytes")  # type: ignore[arg-type]
    # flip payload bytes: either deflate notices, or the decoded mask's area/shape does not match the header
    for i in range(len(data) - 1, 24, -1):
        corrupt = bytearray(data)
        corrupt[i] ^= 0xFF
        with pytest.raises(MaskCodecError):
            decode_mask(bytes(corrupt))
    # a wrong area in the header is caught after decoding
    tampered = bytearray(data)
    tampered[14] ^= 0x01
    with pytest.raises(MaskCodecError, match="foreground pixels"):
        decode_mask(bytes(tampered))
