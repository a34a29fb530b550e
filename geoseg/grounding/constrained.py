"""Constrained decoding of the grounder's answer: only text of the answer schema can be generated.

Free decoding asks the model for JSON and parses whatever comes back (``geoseg.grounding.parse``); a model that
strays (and every random tiny model) gives no box. Here the answer's grammar is enforced token by token instead:

* :func:`answer_grammar` builds the grammar of one answer from the prompt form, the coordinate convention and the
  frame the coordinates refer to: the GeoSeg form ``{"bbox": [x1, y1, x2, y2], "prompt": "..."}`` (or ``{"bbox":
  null, "prompt": ""}`` for no target) and the Think2Seg-RS list form ``[{"bbox_2d": [...], "positive_points": [[x,
  y]], "label": "..."}, ...]`` (or ``[]``). Coordinates are JSON integers with value bounds: 0 <= x1 < x2 <= grid
  (``norm1000``: 1000; ``pixel``: the frame's width / height), points inside their box. So every complete answer
  parses into boxes with positive area.
* :class:`TokenIndex` is the tokenizer's vocabulary as a character trie (built once per grounder); for a grammar
  state it lists the tokens whose text keeps the answer inside the grammar, walking only viable branches (string
  contents use a precomputed length-sorted list of "plain" tokens instead of a walk).
* :class:`GrammarLogitsProcessor` is a transformers logits processor (``generate(logits_processor=[...])``): one
  grammar state per batch row, fed with the token each step chose; disallowed tokens get ``-inf``; once the answer is
  complete only EOS is allowed. When the remaining ``max_new_tokens`` barely cover the shortest completion it
  *hurries* (closes strings, stops numbers and optional repetitions) so an answer is finished, not cut off.
* :func:`answer_schema` is the same answer as a JSON schema, for OpenAI-compatible servers (``response_format``;
  vLLM's guided decoding enforces it).

Whitespace: one optional space after ``:`` and ``,``; none elsewhere. Phrases are 1..``max_phrase`` characters without
``"``, backslash or control characters. Only greedy / sampling generation with one sequence per row is supported (no
beam search).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: Conventions whose coordinates are written as JSON integers (``norm1`` fractions are not constrained here).
CONSTRAINED_CONVENTIONS: tuple[str, ...] = ("norm1000", "pixel")
MAX_PHRASE = 32
MAX_ENTRIES = 3
MAX_POINTS = 2

# ------------------------------------------------------------------------------------------------ grammar elements


@dataclass(frozen=True, eq=False)
class Lit:
    """A literal text."""

    text: str


@dataclass(frozen=True, eq=False)
class WS:
    """One optional space."""


@dataclass(frozen=True, eq=False)
class Num:
    """A JSON integer named ``name``, with inclusive bounds computed from the values already written."""

    name: str
    lo: Callable[[dict[str, int]], int]
    hi: Callable[[dict[str, int]], int]
    max_digits: int


@dataclass(frozen=True, eq=False)
class Str:
    """The contents of a JSON string (the quotes are literals around it)."""

    minlen: int
    maxlen: int


@dataclass(frozen=True, eq=False)
class Alt:
    """One of several element sequences, told apart by their first character; ``optional`` adds "none of them"."""

    alternatives: tuple[tuple[Any, ...], ...]
    optional: bool = False


Grammar = tuple[Any, ...]
#: (frames, partial, values): frames are (sequence, index) from the outermost; partial is the progress inside the
#: element at the top frame's index (literal offset, digits so far, string length); values are (name, int) pairs.
State = tuple[tuple[tuple[Grammar, int], ...], Any, tuple[tuple[str, int], ...]]


def initial_state(grammar: Grammar) -> State:
    return (((grammar, 0),), None, ())


def is_string_char(ch: str) -> bool:
    return ch not in '"\\' and ord(ch) >= 32 and ch not in "\u2028\u2029\x7f"


def _num_viable(digits: str, lo: int, hi: int, max_digits: int) -> bool:
    """Whether some integer written ``digits...`` (JSON: no leading zero) lies in [lo, hi]."""
    if len(digits) > max_digits or (len(digits) > 1 and digits[0] == "0"):
        return False
    v = int(digits)
    if digits == "0":
        return lo <= 0 <= hi
    for extra in range(max_digits - len(digits) + 1):
        scale = 10**extra
        if v * scale <= hi and (v + 1) * scale - 1 >= lo:
            return True
    return False


def _next(frames: tuple, seq: Grammar, idx: int) -> tuple:
    return frames[:-1] + ((seq, idx + 1),)


def _settle(frames: tuple) -> tuple:
    """Pop finished sequences (advancing the element that opened them)."""
    while frames and frames[-1][1] >= len(frames[-1][0]):
        frames = frames[:-1]
        if frames:
            seq, idx = frames[-1]
            frames = _next(frames, seq, idx)
    return frames


def advance(state: State, ch: str, hurry: bool = False) -> State | None:
    """The state after writing ``ch``, or None when ``ch`` leaves the grammar. ``hurry`` takes the shortest way out:
    no further digit once a number is valid, no further character once a string is long enough, no optional
    repetition."""
    frames, partial, vals = state
    while True:
        frames = _settle(frames)
        if not frames:
            return None  # the answer is complete: nothing more may follow
        seq, idx = frames[-1]
        el = seq[idx]
        if isinstance(el, Lit):
            off = partial or 0
            if ch != el.text[off]:
                return None
            off += 1
            return (_next(frames, seq, idx), None, vals) if off == len(el.text) else (frames, off, vals)
        if isinstance(el, WS):
            if ch == " ":
                return (_next(frames, seq, idx), None, vals)
            frames, partial = _next(frames, seq, idx), None
            continue
        if isinstance(el, Num):
            digits = partial or ""
            known = dict(vals)
            lo, hi = el.lo(known), el.hi(known)
            done = bool(digits) and lo <= int(digits) <= hi
            if "0" <= ch <= "9" and not (hurry and done) and _num_viable(digits + ch, lo, hi, el.max_digits):
                return (frames, digits + ch, vals)
            if not done:
                return None
            frames, partial, vals = _next(frames, seq, idx), None, vals + ((el.name, int(digits)),)
            continue
        if isinstance(el, Str):
            n = partial or 0
            if is_string_char(ch) and n < el.maxlen and not (hurry and n >= el.minlen):
                return (frames, n + 1, vals)
            if n < el.minlen:
                return None
            frames, partial = _next(frames, seq, idx), None
            continue
        if isinstance(el, Alt):
            if not (hurry and el.optional):
                for alt in el.alternatives:
                    out = advance((frames + ((alt, 0),), None, vals), ch, hurry)
                    if out is not None:
                        return out
            if not el.optional:
                return None
            frames, partial = _next(frames, seq, idx), None
            continue
        raise TypeError(f"unknown grammar element {el!r}")


def accepting(state: State) -> bool:
    """Whether the answer is complete (nothing but optional elements left)."""
    frames, partial, _ = state
    if partial is not None:
        return False
    frames = _settle(frames)
    while frames:
        seq, idx = frames[-1]
        el = seq[idx]
        if not (isinstance(el, WS) or (isinstance(el, Alt) and el.optional)):
            return False
        frames = _settle(_next(frames, seq, idx))
    return True


def current_string(state: State) -> Str | None:
    """The string element being written (or about to be), else None."""
    frames = _settle(state[0])
    if not frames:
        return None
    seq, idx = frames[-1]
    el = seq[idx]
    return el if isinstance(el, Str) else None


def min_tokens(state: State, lit_cost: Callable[[str], int]) -> int:
    """A (generous) count of the tokens still needed to finish: literals by ``lit_cost``, a number not started by its
    maximum digits, a string by its missing minimum, the cheapest alternative of a required choice."""

    def seq_cost(seq: Grammar, start: int, partial: Any) -> int:
        total = 0
        for i in range(start, len(seq)):
            el, p = seq[i], partial if i == start else None
            if isinstance(el, Lit):
                total += lit_cost(el.text[p or 0 :])
            elif isinstance(el, Num):
                total += 0 if p else el.max_digits
            elif isinstance(el, Str):
                total += max(0, el.minlen - (p or 0))
            elif isinstance(el, Alt) and not el.optional:
                total += min(seq_cost(a, 0, None) for a in el.alternatives)
        return total

    frames, partial, _ = state
    total = 0
    for depth in range(len(frames) - 1, -1, -1):
        seq, idx = frames[depth]
        top = depth == len(frames) - 1
        total += seq_cost(seq, idx if top else idx + 1, partial if top else None)
    return total


# ------------------------------------------------------------------------------------------------ answer grammars


def _box(tag: str, grid_x: int, grid_y: int) -> tuple[Any, ...]:
    digits = len(str(max(grid_x, grid_y)))
    x1, y1, x2, y2 = (f"{c}.{tag}" for c in ("x1", "y1", "x2", "y2"))
    return (
        Lit("["),
        Num(x1, lambda v: 0, lambda v: grid_x - 1, digits),
        Lit(","), WS(),
        Num(y1, lambda v: 0, lambda v: grid_y - 1, digits),
        Lit(","), WS(),
        Num(x2, lambda v: v[x1] + 1, lambda v: grid_x, digits),
        Lit(","), WS(),
        Num(y2, lambda v: v[y1] + 1, lambda v: grid_y, digits),
        Lit("]"),
    )  # fmt: skip


def _point(tag: str, j: int, grid_x: int, grid_y: int) -> tuple[Any, ...]:
    digits = len(str(max(grid_x, grid_y)))
    x1, y1, x2, y2 = (f"{c}.{tag}" for c in ("x1", "y1", "x2", "y2"))
    return (
        Lit("["),
        Num(f"px{j}.{tag}", lambda v: v[x1], lambda v: v[x2], digits),
        Lit(","), WS(),
        Num(f"py{j}.{tag}", lambda v: v[y1], lambda v: v[y2], digits),
        Lit("]"),
    )  # fmt: skip


def _repeat(make: Callable[[int], tuple[Any, ...]], count: int, start: int = 0) -> tuple[Any, ...]:
    """``make(start)`` then optionally ``, make(start + 1)`` ... up to ``count`` items."""
    first = make(start)
    if count <= 1:
        return first
    return (*first, Alt(((Lit(","), WS(), *_repeat(make, count - 1, start + 1)),), optional=True))


def _grid(convention: str, frame: tuple[int, int]) -> tuple[int, int]:
    if convention == "norm1000":
        return 1000, 1000
    if convention == "pixel":
        W, H = (int(v) for v in frame)
        if W < 2 or H < 2:
            raise ValueError(f"constrained pixel boxes need a frame of at least 2x2 pixels, got {frame}")
        return W, H
    raise ValueError(
        f"constrained decoding writes integer coordinates: use convention {' or '.join(CONSTRAINED_CONVENTIONS)} "
        f"(got {convention!r}), or set constrained = false"
    )


def answer_grammar(
    form: str,
    convention: str,
    frame: tuple[int, int],
    *,
    allow_no_target: bool = True,
    max_phrase: int = MAX_PHRASE,
    max_entries: int = MAX_ENTRIES,
) -> Grammar:
    """The grammar of one answer in ``form`` (``geoseg`` / ``think2seg``) for coordinates in ``convention`` on an
    image of ``frame = (W, H)`` pixels (used by ``pixel``)."""
    gx, gy = _grid(convention, frame)
    phrase = (Lit('"'), Str(1, max_phrase), Lit('"'))
    if form == "geoseg":
        with_box = (*_box("0", gx, gy), Lit(","), WS(), Lit('"prompt":'), WS(), *phrase, Lit("}"))
        choices: list[tuple[Any, ...]] = [with_box]
        if allow_no_target:
            choices.append((Lit("null"), Lit(","), WS(), Lit('"prompt":'), WS(), Lit('""}')))
        return (Lit('{"bbox":'), WS(), Alt(tuple(choices)))
    if form == "think2seg":

        def entry(i: int) -> tuple[Any, ...]:
            tag = str(i)
            points = _repeat(lambda j: _point(tag, j, gx, gy), MAX_POINTS)
            return (
                Lit('{"bbox_2d":'), WS(), *_box(tag, gx, gy), Lit(","), WS(),
                Lit('"positive_points":'), WS(), Lit("["), *points, Lit("]"), Lit(","), WS(),
                Lit('"label":'), WS(), *phrase, Lit("}"),
            )  # fmt: skip

        entries = (*_repeat(entry, max_entries), Lit("]"))
        choices = [entries] + ([(Lit("]"),)] if allow_no_target else [])
        return (Lit("["), Alt(tuple(choices)))
    raise ValueError(f"unknown prompt form {form!r}")


def answer_schema(form: str, convention: str, frame: tuple[int, int] | None = None) -> dict[str, Any]:
    """The answer as a JSON schema (for ``response_format``): integers on the convention's grid (``norm1``: numbers
    in [0, 1]); ``pixel`` bounds by the larger frame side (a schema cannot bound x and y apart in one array)."""
    if convention == "norm1":
        coord: dict[str, Any] = {"type": "number", "minimum": 0, "maximum": 1}
    else:
        top = 1000 if convention == "norm1000" else max(int(v) for v in (frame or (1000, 1000)))
        coord = {"type": "integer", "minimum": 0, "maximum": top}
    box = {"type": "array", "items": coord, "minItems": 4, "maxItems": 4}
    phrase = {"type": "string", "maxLength": 64}
    if form == "geoseg":
        return {
            "type": "object",
            "properties": {"bbox": {"anyOf": [box, {"type": "null"}]}, "prompt": phrase},
            "required": ["bbox", "prompt"],
            "additionalProperties": False,
        }
    if form == "think2seg":
        point = {"type": "array", "items": coord, "minItems": 2, "maxItems": 2}
        entry = {
            "type": "object",
            "properties": {
                "bbox_2d": box,
                "positive_points": {"type": "array", "items": point, "minItems": 1, "maxItems": MAX_POINTS},
                "label": phrase,
            },
            "required": ["bbox_2d", "positive_points", "label"],
            "additionalProperties": False,
        }
        return {"type": "array", "items": entry, "maxItems": MAX_ENTRIES}
    raise ValueError(f"unknown prompt form {form!r}")


def response_format(form: str, convention: str, frame: tuple[int, int] | None = None) -> dict[str, Any]:
    """The chat-completions ``response_format`` asking for :func:`answer_schema` (OpenAI and vLLM spelling)."""
    return {
        "type": "json_schema",
        "json_schema": {"name": f"geoseg_{form}_answer", "schema": answer_schema(form, convention, frame)},
    }


# ------------------------------------------------------------------------------------------------ token index


class TokenIndex:
    """A tokenizer's vocabulary as a character trie, to list the tokens a grammar state allows.

    ``strings[i]`` is token i's text (None for special tokens, which are never allowed inside an answer).
    """

    def __init__(self, strings: Sequence[str | None]) -> None:
        import torch

        self.strings = list(strings)
        self.trie: dict = {}
        self.special_trie: dict = {}  # tokens with a character a string may not hold: walked inside strings
        plain: list[tuple[int, int]] = []
        for i, s in enumerate(self.strings):
            if not s:
                continue
            if all(is_string_char(c) for c in s):
                plain.append((len(s), i))
            else:
                self._insert(self.special_trie, s, i)
            self._insert(self.trie, s, i)
        plain.sort()
        self.plain_ids = torch.tensor([i for _n, i in plain], dtype=torch.long)
        lengths = [n for n, _i in plain]
        longest = lengths[-1] if lengths else 0
        #: plain_upto[b]: how many plain tokens have length <= b
        self.plain_upto = [0] * (longest + 2)
        j = 0
        for b in range(longest + 2):
            while j < len(lengths) and lengths[j] <= b:
                j += 1
            self.plain_upto[b] = j
        self._lit_cost: dict[str, int] = {}

    @staticmethod
    def _insert(trie: dict, s: str, i: int) -> None:
        node = trie
        for c in s:
            node = node.setdefault(c, {})
        node.setdefault(None, []).append(i)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> TokenIndex:
        """Token texts as the tokenizer decodes each id alone (specials and added tokens excluded)."""
        n = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False)
        skip = set(getattr(tokenizer, "all_special_ids", []) or [])
        skip |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
        if getattr(tokenizer, "unk_token_id", None) is not None:
            skip.add(tokenizer.unk_token_id)
        return cls([None if i in skip or "\ufffd" in t else t for i, t in enumerate(texts)])

    def lit_cost(self, text: str) -> int:
        """The fewest tokens whose texts concatenate to ``text`` (``len(text) + 1`` when no cover exists)."""
        cost = self._lit_cost.get(text)
        if cost is None:
            best = [0] + [len(text) + 1] * len(text)
            for start in range(len(text)):
                if best[start] > len(text):
                    continue
                node = self.trie
                for end in range(start, len(text)):
                    node = node.get(text[end])
                    if node is None:
                        break
                    if None in node:
                        best[end + 1] = min(best[end + 1], best[start] + 1)
            cost = best[-1]
            self._lit_cost[text] = cost
        return cost

    def allowed(self, state: State, hurry: bool = False) -> list[int]:
        """Ids of the tokens whose whole text keeps ``state`` inside the grammar (plain string tokens excluded when
        the state is inside a string: see :meth:`allowed_plain`)."""
        in_string = current_string(state) is not None
        out: list[int] = []
        stack = [(self.special_trie if in_string else self.trie, state)]
        while stack:
            node, st = stack.pop()
            for ch, child in node.items():
                if ch is None:
                    continue
                nxt = advance(st, ch, hurry)
                if nxt is None:
                    continue
                if None in child and self._can_finish_literal(nxt):
                    out.extend(child[None])
                stack.append((child, nxt))
        return out

    def _can_finish_literal(self, state: State) -> bool:
        """False when ``state`` stops inside a literal whose rest no run of tokens can write (a small vocabulary
        may have ``bbox`` and ``bbox_2d`` but no ``d``): such a token would lead into a dead end."""
        frames, off, _ = state
        if not off or not frames or frames[-1][1] >= len(frames[-1][0]):
            return True
        el = frames[-1][0][frames[-1][1]]
        if not isinstance(el, Lit):
            return True
        rest = el.text[off:]
        return self.lit_cost(rest) <= len(rest)

    def allowed_plain(self, state: State, hurry: bool = False):
        """Inside a string: the plain tokens that fit in what is left of it (a tensor of ids), else None."""
        el = current_string(state)
        if el is None:
            return None
        n = (state[1] or 0) if _settle(state[0]) == state[0] else 0  # a settled state starts a new element
        budget = 0 if hurry and n >= el.minlen else el.maxlen - n
        upto = self.plain_upto[min(max(budget, 0), len(self.plain_upto) - 1)]
        return self.plain_ids[:upto]


# ------------------------------------------------------------------------------------------------ logits processor


class GrammarLogitsProcessor:
    """Masks each row's logits to the tokens its grammar allows (a transformers ``LogitsProcessor``).

    Rows are fed the token chosen at each step; ``texts[row]`` is the answer text as the grammar saw it (token texts
    concatenated, EOS excluded), which the caller parses instead of ``batch_decode`` (some decoders insert spaces
    between tokens).
    """

    def __init__(self, index: TokenIndex, grammars: Sequence[Grammar], eos_ids: Sequence[int], max_new_tokens: int):
        if not eos_ids:
            raise ValueError("constrained decoding needs the model's EOS token id")
        self.index = index
        self.states = [initial_state(g) for g in grammars]
        self.hurried = [False] * len(grammars)
        self.done = [False] * len(grammars)
        self.pieces: list[list[str]] = [[] for _ in grammars]
        self.eos_ids = list(eos_ids)
        self.max_new_tokens = max_new_tokens
        self.prompt_len: int | None = None

    @property
    def texts(self) -> list[str]:
        return ["".join(p) for p in self.pieces]

    def _feed(self, row: int, token: int) -> None:
        if token in self.eos_ids:
            self.done[row] = True
            return
        text = self.index.strings[token] if token < len(self.index.strings) else None
        st: State | None = self.states[row]
        for ch in text or "\x00":
            st = advance(st, ch, self.hurried[row]) if st is not None else None
        if st is None:  # cannot happen for a token this processor allowed; stop the row rather than guess
            self.done[row] = True
            return
        self.states[row] = st
        self.pieces[row].append(text)

    def __call__(self, input_ids, scores):
        import torch

        if self.prompt_len is None:
            self.prompt_len = int(input_ids.shape[1])
        step = int(input_ids.shape[1]) - self.prompt_len
        mask = torch.full_like(scores, float("-inf"))
        eos = torch.tensor(self.eos_ids, dtype=torch.long, device=scores.device)
        for row in range(scores.shape[0]):
            if step > 0 and not self.done[row]:
                self._feed(row, int(input_ids[row, -1]))
            st = self.states[row]
            if self.done[row] or accepting(st):
                mask[row, eos] = 0.0
                continue
            left = self.max_new_tokens - step
            hurry = left <= min_tokens(st, self.index.lit_cost) + 1
            self.hurried[row] = hurry
            ids = self.index.allowed(st, hurry)
            plain = self.index.allowed_plain(st, hurry)
            if ids:
                mask[row, torch.tensor(ids, dtype=torch.long, device=scores.device)] = 0.0
            if plain is not None and len(plain):
                mask[row, plain.to(scores.device)] = 0.0
            if not ids and (plain is None or not len(plain)):
                mask[row, eos] = 0.0  # a dead end (the vocabulary cannot write the next character): stop
        return scores + mask
