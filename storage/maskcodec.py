"""Masks at rest: a small header plus a lossless compact payload, checked on the way back.

Layout (little-endian)::

    b"GLMK"  u8 version (=1)  u8 codec  u32 height  u32 width  u32 area  u32 payload_len  payload

codec 1: COCO compressed RLE (pycocotools, column-major counts string), zlib-deflated.
codec 2: the mask packed to 1 bit per pixel (``np.packbits``, row-major), zlib-deflated -- chosen when it is smaller,
         which happens for noisy, fragmented masks where RLE runs are short.

Decoding checks the magic, version, codec, payload length, the decoded shape against the header and against the
shape the caller expects, and the foreground pixel count (``area``) against the header: a damaged blob is an error,
never a silently different mask.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from typing import Any

import numpy as np

MAGIC = b"GLMK"
VERSION = 1
CODEC_RLE = 1
CODEC_BITS = 2
_HEADER = struct.Struct("<4sBBIIII")
MAX_SIDE = 1 << 20


class MaskCodecError(ValueError):
    """The bytes are not a valid encoded mask, or not the mask the caller expects."""


def _as_bool_mask(mask: Any) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim != 2:
        raise MaskCodecError(f"a mask must be 2-D (height, width), got shape {m.shape}")
    if m.dtype != np.bool_:
        raise MaskCodecError(f"a mask must have dtype bool, got {m.dtype}; convert explicitly (e.g. mask > 0)")
    if m.shape[0] < 1 or m.shape[1] < 1 or max(m.shape) > MAX_SIDE:
        raise MaskCodecError(f"mask shape {m.shape} is empty or too large")
    return m


def coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a (H, W) bool mask: ``{"size": [H, W], "counts": str}`` (JSON-able)."""
    from pycocotools import mask as cocomask

    m = _as_bool_mask(mask)
    rle = cocomask.encode(np.asfortranarray(m, dtype=np.uint8))
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")}


def coco_rle_decode(rle: dict[str, Any], *, contiguous: bool = True) -> np.ndarray:
    """The (H, W) bool mask of a COCO compressed RLE dict (``counts`` as str or bytes).

    ``contiguous=False`` returns pycocotools' own Fortran-ordered array viewed as bool (no copy, no transpose): the
    same values, for consumers that do not need C order (``labeling.brush.mask_to_rle``).
    """
    from pycocotools import mask as cocomask

    try:
        h, w = (int(v) for v in rle["size"])
        counts = rle["counts"]
        counts = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
        with warnings.catch_warnings():  # pycocotools' numpy-2 copy-keyword DeprecationWarning
            warnings.simplefilter("ignore", DeprecationWarning)
            out = cocomask.decode({"size": [h, w], "counts": counts})
    except Exception as exc:  # pycocotools raises bare Exceptions / TypeErrors on garbage
        raise MaskCodecError(f"not a valid COCO RLE: {exc}") from None
    if out.dtype == np.uint8 and out.ndim == 2:  # pycocotools writes 0/1 bytes: a bool view is the same mask
        out = out.view(np.bool_)
    else:
        out = out.astype(bool)
    return np.ascontiguousarray(out) if contiguous else out


def encode_mask(mask: np.ndarray) -> bytes:
    """Encode a (H, W) bool mask losslessly (see the module docstring for the format)."""
    m = _as_bool_mask(mask)
    h, w = m.shape
    area = int(np.count_nonzero(m))
    rle = coco_rle(m)["counts"].encode("ascii")
    codec, raw = CODEC_RLE, rle
    if len(rle) > (h * w + 7) // 8:  # fragmented: plain bits are smaller
        codec, raw = CODEC_BITS, np.packbits(m, axis=None).tobytes()
    payload = zlib.compress(raw, 6)
    return _HEADER.pack(MAGIC, VERSION, codec, h, w, area, len(payload)) + payload


def peek_shape(data: bytes) -> tuple[int, int]:
    """(height, width) from an encoded mask's header, without decoding it."""
    _, _, _, h, w, _, _ = _read_header(data)
    return h, w


def _read_header(data: bytes) -> tuple[bytes, int, int, int, int, int, int]:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MaskCodecError(f"encoded mask must be bytes, got {type(data).__name__}")
    if len(data) < _HEADER.size:
        raise MaskCodecError(f"encoded mask too short ({len(data)} bytes; the header alone is {_HEADER.size})")
    magic, version, codec, h, w, area, n = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MaskCodecError(f"not an encoded mask (magic {bytes(magic)!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise MaskCodecError(f"unsupported mask encoding version {version} (this code reads {VERSION})")
    if codec not in (CODEC_RLE, CODEC_BITS):
        raise MaskCodecError(f"unknown mask codec {codec}")
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or area > h * w:
        raise MaskCodecError(f"corrupt mask header: shape ({h}, {w}), area {area}")
    if len(data) != _HEADER.size + n:
        got = len(data) - _HEADER.size
        raise MaskCodecError(f"encoded mask truncated or padded: header says {n} payload bytes, got {got}")
    return magic, version, codec, h, w, area, n


def decode_mask(data: bytes, shape: tuple[int, int] | None = None, *, contiguous: bool = True) -> np.ndarray:
    """Decode bytes from :func:`encode_mask` to a (H, W) bool array; ``shape`` (if given) must match.

    ``contiguous=False`` may return a Fortran-ordered array (RLE codec: no transpose copy); same values, same checks.
    """
    _, _, codec, h, w, area, _ = _read_header(data)
    if shape is not None and (int(shape[0]), int(shape[1])) != (h, w):
        raise MaskCodecError(f"mask shape ({h}, {w}) differs from the expected {tuple(shape)}")
    try:
        raw = zlib.decompress(bytes(data[_HEADER.size :]))
    except zlib.error as exc:
        raise MaskCodecError(f"corrupt mask payload: {exc}") from None
    if codec == CODEC_RLE:
        m = coco_rle_decode({"size": [h, w], "counts": raw}, contiguous=contiguous)
    else:
        if len(raw) != (h * w + 7) // 8:
            raise MaskCodecError(f"corrupt bit-packed mask: {len(raw)} bytes for ({h}, {w})")
        m = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), count=h * w).reshape(h, w).view(np.bool_)
    if m.shape != (h, w):
        raise MaskCodecError(f"decoded mask has shape {m.shape}, header says ({h}, {w})")
    got = int(np.count_nonzero(m))
    if got != area:
        raise MaskCodecError(f"corrupt mask: {got} foreground pixels decoded, header says {area}")
    return m
