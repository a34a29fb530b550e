"""Label Studio brush RLE, vectorised with numpy.

Format (Label Studio's ``BrushLabels`` ``"format": "rle"``, the thi.ng rle-pack bit stream): a big-endian bit stream
of

* a header: ``num`` (32 bits, number of values), ``word_size - 1`` (5 bits), four ``rle_size - 1`` fields (4 bits
  each; Label Studio uses rle sizes 3, 4, 8, 16 and word size 8);
* records until ``num`` values are produced: a flag bit, a 2-bit index into the rle sizes, a count ``n - 1`` of that
  many bits, then either one word repeated ``n`` times (flag 1) or ``n`` literal words (flag 0);
* zero padding to a whole byte.

The values are the RGBA bytes of the image, 4 per pixel, row major; a mask lives in the alpha channel. The encoder
here writes each pixel as ``(255, 255, 255, 255)`` or ``(0, 0, 0, 0)`` and reproduces the bit stream of
``label_studio_sdk.converter.brush.mask2rle(mask.astype(uint8) * 255)`` byte for byte, including its padding rule
(it always appends 1 to 8 zero bits). The decoder reads any valid stream (any word size, any rle sizes, literal
records as Label Studio's frontend writes them) and yields the same values as the SDK's ``decode_rle``; a pixel is in
the mask when its alpha is non-zero.

Decoding a variable-length record stream is sequential by nature. Here the length of a record that would start at
each bit of the stream is computed for all bits at once with numpy (a repeat record's length depends only on its first
three bits); following the chain of records from the header is then a tight loop of one addition per record, and the
fields of all records are read at once again. Literal records (flag 0) are measured one by one.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np

__all__ = [
    "BrushRLEError",
    "decode_rle_values",
    "mask_to_rle",
    "rle_header",
    "rle_to_mask",
]

_HEADER_BITS = 32 + 5 + 4 * 4
#: The rle sizes Label Studio (and the SDK encoder) use; the encoder below hard-codes their bit layout.
LS_RLE_SIZES = (3, 4, 8, 16)
LS_WORD_SIZE = 8
_CHANNELS = 4
_MAX_RUN = 1 << 16


class BrushRLEError(ValueError):
    """A brush RLE that cannot be decoded (truncated, wrong size, values that are not bytes)."""


# --------------------------------------------------------------------------------------------------------- encode


# Per record kind (size index, foreground): the flag bit, the size index and the value, in place; and the width.
_RECORD_WIDTH = np.asarray([3 + c + LS_WORD_SIZE for c in LS_RLE_SIZES], dtype=np.uint64)
_RECORD_BASE = np.asarray(
    [((4 + i) << (c + LS_WORD_SIZE)) | (255 * fg) for i, c in enumerate(LS_RLE_SIZES) for fg in (0, 1)],
    dtype=np.uint64,
)


def _mask_runs(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-major runs of equal values of a 2-D bool mask: (lengths, values), whatever its memory order.

    A Fortran-ordered mask (what pycocotools decodes COCO RLE into, see ``storage.maskcodec.decode_mask(...,
    contiguous=False)``) is not transposed: the row-major value changes are found column against column in its own
    memory order (pixel (r, c) against (r, c - 1), and the first pixel of row r against the last of row r - 1) and
    sorted; the runs are the same as those of ``m.ravel()`` (tests check it on random masks).
    """
    h, w = m.shape
    if not (m.flags.f_contiguous and not m.flags.c_contiguous and h > 1 and w > 1):
        return _pixel_runs(m.ravel())
    f = m.ravel(order="F")  # a view: f[c * h + r] == m[r, c]
    q = np.flatnonzero(f[h:] != f[:-h])  # m[r, c] != m[r, c - 1] for q = (c - 1) * h + r
    within = (q % h) * w + q // h + 1
    rows = np.flatnonzero(f[1:h] != f[(w - 1) * h : w * h - 1]) + 1  # m[r, 0] != m[r - 1, w - 1]
    starts = np.sort(np.concatenate([within, rows * w]))  # row-major index of each run's first pixel but the first
    ends = np.empty(starts.size + 1, dtype=np.int64)
    ends[:-1] = starts
    ends[-1] = h * w
    lengths = np.diff(ends, prepend=0)
    first = ends - lengths  # row-major index of each run's first pixel
    values = f[(first % w) * h + first // w]
    return lengths, values


def _pixel_runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of equal values of a flat bool array: (lengths, values)."""
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1])
    ends = np.empty(change.size + 1, dtype=np.int64)
    ends[:-1] = change + 1
    ends[-1] = n
    lengths = np.diff(ends, prepend=0)
    values = flat[ends - 1]
    return lengths, values


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Encode an (H, W) mask as Label Studio brush RLE (a list of byte values).

    Non-zero / True pixels are the mask. Identical, byte for byte, to
    ``label_studio_sdk.converter.brush.mask2rle((mask != 0).astype(np.uint8) * 255)``.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    if m.size == 0:
        raise ValueError(f"mask must not be empty, got shape {m.shape}")
    if m.size * _CHANNELS >= 1 << 32:
        raise ValueError(f"mask too large for brush RLE (32-bit value count): shape {m.shape}")
    pix_len, fg = _mask_runs(m if m.dtype == np.bool_ else m != 0)
    run_len = pix_len * _CHANNELS  # every pixel is 4 equal channel values

    # Runs longer than 256 values use the 16-bit count and are split into pieces of at most 65536 values, the
    # earlier pieces exactly 65536 long.
    if run_len.max() <= _MAX_RUN:
        rec_len, rec_fg = run_len, fg
    else:
        pieces = (run_len + _MAX_RUN - 1) // _MAX_RUN
        rec_fg = np.repeat(fg, pieces)
        rec_len = np.full(int(pieces.sum()), _MAX_RUN, dtype=np.int64)
        rec_len[np.cumsum(pieces) - 1] = run_len - (pieces - 1) * _MAX_RUN

    # One record: flag 1, size index (2 bits), count - 1 (3, 4, 8 or 16 bits), value (8 bits). Runs are at least 4
    # long (4 channels), so, as in the SDK encoder, every record is a repeat record.
    idx = (rec_len > 8).astype(np.intp) + (rec_len > 16) + (rec_len > 256)  # <= 8, <= 16, <= 256, else
    code = _RECORD_BASE[idx * 2 + rec_fg] | ((rec_len - 1).view(np.uint64) << np.uint64(LS_WORD_SIZE))
    width = _RECORD_WIDTH[idx]

    header = (m.size * _CHANNELS, LS_WORD_SIZE - 1, *(s - 1 for s in LS_RLE_SIZES))
    hdr_code = 0
    for v, bits in zip(header, (32, 5, 4, 4, 4, 4), strict=True):
        hdr_code = (hdr_code << bits) | v
    if code.size >= 64:  # pair neighbouring records (<= 54 bits together): half the elements to pack
        if code.size % 2:
            code = np.append(code, np.uint64(0))
            width = np.append(width, np.uint64(0))
        code = (code[0::2] << width[1::2]) | code[1::2]
        width = width[0::2] + width[1::2]
    ends = np.cumsum(width) + np.uint64(_HEADER_BITS)
    total_bits = int(ends[-1])
    words = _pack_codes(code, width, ends - width, total_bits)
    words[0] |= np.uint64(hdr_code << (64 - _HEADER_BITS))
    # The SDK always pads with 8 - (bits % 8) zero bits, 1 to 8: the byte count is bits // 8 + 1.
    return list(words.astype(">u8").tobytes()[: total_bits // 8 + 1])


def _pack_codes(code: np.ndarray, width: np.ndarray, offsets: np.ndarray, total_bits: int) -> np.ndarray:
    """OR codes of up to 64 bits, each ``width`` bits wide, at bit ``offsets`` into big-endian 64-bit words.

    Relies on numpy's defined result (0) for shifts by 64 or more.
    """
    out = np.zeros(total_bits // 64 + 2, dtype=np.uint64)
    if code.size == 0:
        return out
    q = (offsets >> np.uint64(6)).astype(np.int64)
    r = offsets & np.uint64(63)
    top = code << (np.uint64(64) - width)  # the code in the top bits of a word
    hi = top >> r
    lo = top << (np.uint64(64) - r)  # the part spilling into the next word (0 if none)
    starts = np.flatnonzero(np.diff(q, prepend=-1))
    qs = q[starts]
    out[qs] = np.bitwise_or.reduceat(hi, starts)
    out[qs + 1] |= np.bitwise_or.reduceat(lo, starts)
    return out


# --------------------------------------------------------------------------------------------------------- decode


class _Bits:
    """Random access to fields of a big-endian bit stream through 64-bit windows."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nbits = len(data) * 8
        pad = (-len(data)) % 8 + 24
        self.words = np.frombuffer(data + b"\0" * pad, dtype=">u8").astype(np.uint64)

    def window(self, pos: np.ndarray) -> np.ndarray:
        """The 64 bits starting at each bit position ``pos`` (first bit in the most significant place)."""
        k = pos >> 6
        if k.size and int(k.max()) + 1 >= self.words.size:  # a corrupt record points past the data
            raise BrushRLEError("brush RLE corrupt: a record reads past the end of the data")
        off = (pos & 63).astype(np.uint64)
        # (b >> 1) >> (63 - off) == b >> (64 - off) without a shift by 64 when off == 0.
        return (self.words[k] << off) | ((self.words[k + 1] >> np.uint64(1)) >> (np.uint64(63) - off))


def rle_header(rle: Sequence[int] | bytes | np.ndarray) -> tuple[int, int, tuple[int, int, int, int]]:
    """(num values, word size, rle sizes) of a brush RLE."""
    data = _as_bytes(rle)
    if len(data) * 8 < _HEADER_BITS:
        raise BrushRLEError(f"brush RLE too short for its header: {len(data)} bytes")
    h = int.from_bytes(data[:7], "big") >> (56 - _HEADER_BITS)
    sizes = tuple(((h >> (12 - 4 * i)) & 15) + 1 for i in range(4))
    return h >> 21, ((h >> 16) & 31) + 1, sizes  # type: ignore[return-value]


def _as_bytes(rle: Sequence[int] | bytes | np.ndarray) -> bytes:
    if isinstance(rle, bytes | bytearray):
        return bytes(rle)
    if isinstance(rle, np.ndarray):
        if rle.ndim != 1:
            raise BrushRLEError(f"brush RLE must be a flat list of bytes, got an array of shape {rle.shape}")
        if rle.size and (rle.min() < 0 or rle.max() > 255):
            raise BrushRLEError("brush RLE values must be bytes (0..255)")
        return rle.astype(np.uint8).tobytes()
    if isinstance(rle, str | int | float) or rle is None:  # bytes(10**9) would allocate a gigabyte of zeros
        kind = "a string" if isinstance(rle, str) else type(rle).__name__
        raise BrushRLEError(f"brush RLE must be a list of byte values, got {kind}")
    try:
        return bytes(rle)
    except (TypeError, ValueError) as exc:
        raise BrushRLEError(f"brush RLE must be a list of integers 0..255: {exc}") from None


_LENGTHS_LUT: dict[tuple[tuple[int, ...], int], np.ndarray] = {}


def _lengths_lut(rle_sizes: tuple[int, ...], ws: int) -> np.ndarray:
    """(65536, 8) uint8: for two stream bytes v and a bit offset o in the first, the length of a repeat record
    starting at that bit (0 when its flag bit is 0, a literal record)."""
    key = (tuple(rle_sizes), ws)
    if key not in _LENGTHS_LUT:
        by_top3 = np.zeros(8, dtype=np.uint8)
        for idx, size in enumerate(rle_sizes):
            by_top3[4 + idx] = 3 + size + ws
        v = np.arange(1 << 16, dtype=np.uint32)[:, None]
        top3 = ((v << np.arange(8, dtype=np.uint32)[None, :]) >> np.uint32(13)) & np.uint32(7)
        _LENGTHS_LUT[key] = by_top3[top3]
    return _LENGTHS_LUT[key]


def _repeat_lengths(data: bytes, rle_sizes: tuple[int, ...], ws: int) -> np.ndarray:
    """For every bit position p: the length in bits of a repeat record starting at p, or 0 where the flag bit is 0.

    A repeat record's length (3 + rle size + word size) depends only on its first 3 bits (flag, size index), so the
    lengths at the 8 bit offsets of a byte are one row of a table indexed by that byte and the next. Literal records
    (flag 0) get 0 and are measured one by one.
    """
    b = np.frombuffer(data + b"\0", dtype=np.uint8)
    u16 = (b[:-1].astype(np.uint16) << np.uint16(8)) | b[1:]
    return _lengths_lut(rle_sizes, ws)[u16].ravel()


def _literal_length(bits: _Bits, p: int, sizes: np.ndarray, ws: int) -> int:
    _, rsz, n = _fields(bits, np.asarray([p], dtype=np.int64), sizes)
    return int(3 + rsz[0] + n[0] * ws)


def _record_starts(bits: _Bits, sizes: np.ndarray, ws: int) -> np.ndarray:
    """Bit positions of the records of the stream, in order, from the end of the header to the end of the data.

    Record lengths are computed for every bit position at once (numpy); following the chain from the header is then
    one addition per record on a memoryview, the only sequential part of the decoder.
    """
    nbits = bits.nbits
    if nbits <= _HEADER_BITS:
        return np.zeros(0, dtype=np.int64)
    lengths = memoryview(_repeat_lengths(bits.data, tuple(sizes.tolist()), ws))
    starts = array("q")
    add = starts.append
    p = _HEADER_BITS
    while p < nbits:
        add(p)
        step = lengths[p]
        p += step if step else _literal_length(bits, p, sizes, ws)
    return np.frombuffer(starts, dtype=np.int64) if len(starts) else np.zeros(0, dtype=np.int64)


def _fields(bits: _Bits, pos: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flag, count bits, n values) of the records at ``pos``."""
    win = bits.window(pos)
    flag = (win >> np.uint64(63)).astype(bool)
    rsz = sizes[((win >> np.uint64(61)) & np.uint64(3)).astype(np.int64)]
    n = ((win << np.uint64(3)) >> (64 - rsz).astype(np.uint64)).astype(np.int64) + 1
    return flag, rsz, n


def _parse(data: bytes) -> tuple[int, int, _Bits, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Header and the records that produce the header's ``num`` values: (num, ws, bits, pos, flag, rsz, n, produced).

    ``produced`` is the running count of values; its last entry is clipped to ``num`` (decoders stop there).
    """
    num, ws, rle_sizes = rle_header(data)
    bits = _Bits(data)
    sizes = np.asarray(rle_sizes, dtype=np.int64)
    pos = _record_starts(bits, sizes, ws)
    flag, rsz, n = _fields(bits, pos, sizes)
    produced = np.cumsum(n)
    last = int(np.searchsorted(produced, num))  # the first record that reaches num values
    if last >= pos.size:
        got = int(produced[-1]) if produced.size else 0
        raise BrushRLEError(f"brush RLE truncated: its header says {num} values, the stream holds {got}")
    k = last + 1
    produced = produced[:k].copy()
    produced[-1] = num
    return num, ws, bits, pos[:k], flag[:k], rsz[:k], n[:k], produced


def decode_rle_values(rle: Sequence[int] | bytes | np.ndarray) -> np.ndarray:
    """Decode a brush RLE into its flat value stream (uint8 for word sizes <= 8, else uint16/uint32).

    Equal to ``label_studio_sdk.converter.brush.decode_rle(rle)`` (word size 8).
    """
    data = _as_bytes(rle)
    num, ws, _ = rle_header(data)
    dtype = np.uint8 if ws <= 8 else np.uint16 if ws <= 16 else np.uint32
    if num == 0:
        return np.zeros(0, dtype=dtype)
    num, ws, bits, pos, flag, rsz, n, produced = _parse(data)
    word_at = pos + 3 + rsz
    top = np.uint64(64 - ws)
    if flag.all():
        values = bits.window(word_at) >> top
        lengths = np.diff(produced, prepend=0)
    else:
        # A literal record holds n words, each a run of length 1; a repeat record one word repeated n times.
        words_per = np.where(flag, 1, n)
        rec = np.repeat(np.arange(pos.size), words_per)
        first = np.cumsum(words_per) - words_per
        k = np.arange(rec.size) - first[rec]
        values = bits.window(word_at[rec] + k * ws) >> top
        lengths = np.where(flag[rec], n[rec], 1)
        total = int(lengths.sum())
        if total > num:  # the decoders stop at num values
            cut = np.cumsum(lengths)
            stop = int(np.searchsorted(cut, num)) + 1
            values, lengths = values[:stop], lengths[:stop].copy()
            lengths[-1] -= int(cut[stop - 1]) - num
    return np.repeat(values.astype(dtype), lengths)


def rle_to_mask(rle: Sequence[int] | bytes | np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode a brush RLE into an (height, width) bool mask: the pixels whose alpha value is non-zero.

    Equal to ``decode_rle(rle).reshape(height, width, 4)[:, :, 3] != 0`` with the SDK's ``decode_rle``.
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height} x {width}")
    data = _as_bytes(rle)
    num, _, _ = rle_header(data)
    if num != height * width * _CHANNELS:
        raise BrushRLEError(
            f"brush RLE holds {num} values; a {width}x{height} RGBA image needs {height * width * _CHANNELS}"
        )
    num, ws, bits, pos, flag, rsz, n, produced = _parse(data)
    if not flag.all():
        return decode_rle_values(data).reshape(height, width, _CHANNELS)[:, :, 3] != 0
    alpha = (bits.window(pos + 3 + rsz) >> np.uint64(64 - ws)) != 0
    # Run k covers values [produced[k-1], produced[k]); the alpha values (flat index 4p+3) below x number x // 4.
    pix_len = np.diff(produced // _CHANNELS, prepend=0)
    return np.repeat(alpha, pix_len).reshape(height, width)
