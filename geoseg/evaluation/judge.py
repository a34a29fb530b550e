"""MLLM-as-judge (GeoSeg §5): show a multimodal model the composite (ground truth green, prediction red, overlap
yellow) with the query and a written rubric, and ask for 1-5 Likert scores on four criteria.

The judge reuses a grounder backend for the model call (``transformers`` / ``tiny``: ``generate_text``;
``openai``: ``complete``), with its own system and user text. Answers are parsed robustly: JSON (bare, fenced, after a
``<think>`` block) or "Criterion: 4" prose. A criterion whose score is missing, not an integer or outside 1..5 is
recorded as unparsed (with the raw text kept), never a crash; a failed model call is recorded as an error.
Aggregation reports, per group (all, domain, level, domain x level), the mean of each criterion over the parsed
scores, how many were parsed, and how many answers were unparsed.

Scores from the tiny random model are noise: they only show the mechanics (see TINY_MODEL_WARNING).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoseg.evaluation.overlay import composite

CRITERIA: tuple[str, ...] = ("faithfulness", "localization", "robustness", "overlap")
_ALIASES = {"localisation": "localization", "location": "localization", "faithful": "faithfulness",
            "robust": "robustness", "iou": "overlap", "overlap_quality": "overlap"}

JUDGE_SYSTEM = (
    "You are a strict expert judge of remote-sensing reasoning segmentation. You score a predicted mask against the "
    "ground truth, using only what you see in the image and the rubric you are given."
)

RUBRIC = """\
The image is a composite: GREEN pixels are ground truth missed by the prediction, RED pixels are predicted but not \
ground truth, YELLOW pixels are where prediction and ground truth overlap. Untinted pixels are in neither mask.

Score each criterion with an integer from 1 (worst) to 5 (best):
- Faithfulness: does the prediction segment what the question asks for (the right kind of object, the right \
instance, respecting every condition in the question)? 5 = exactly the asked-for target; 3 = a related object or \
only part of the conditions respected; 1 = an unrelated object or nothing.
- Localization: is the prediction in the right place? 5 = centred on the ground-truth target; 3 = overlaps it but \
is shifted or spills into neighbours; 1 = elsewhere in the image or empty.
- Robustness: is the mask clean and plausible (no scattered fragments, holes or background noise) given the scene's \
clutter? 5 = one clean region with sensible borders; 3 = some fragments or ragged borders; 1 = noise.
- Overlap: how much yellow relative to red and green? 5 = almost all yellow; 4 = mostly yellow; 3 = about half; \
2 = little yellow; 1 = no yellow at all."""

ANSWER_FORMAT = (
    'Reply with JSON only: {"faithfulness": n, "localization": n, "robustness": n, "overlap": n, '
    '"rationale": "<one sentence>"} where each n is an integer from 1 to 5.'
)


def judge_user_prompt(query: str) -> str:
    """The user text sent next to the composite image."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("the judge needs the non-empty query the mask answers")
    return f"Question: {query.strip()}\n\n{RUBRIC}\n\n{ANSWER_FORMAT}"


@dataclass(frozen=True)
class Judgement:
    """The parsed answer: ``scores[c]`` is an int in 1..5 or None (then ``c`` is in ``unparsed``)."""

    scores: Mapping[str, int | None]
    unparsed: tuple[str, ...]
    raw_text: str
    rationale: str = ""
    error: str | None = None

    @property
    def complete(self) -> bool:
        return not self.unparsed and self.error is None


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)
_PROSE = re.compile(
    r"(?P<name>faithfulness|faithful|localization|localisation|location|robustness|robust|overlap)\W{0,6}"
    r"(?:score\W{0,3})?(?:is\s+|of\s+|=\s*)?(?P<value>-?\d+(?:\.\d+)?)(?P<denom>\s*/\s*\d+)?",
    re.I,
)


def _as_score(value: Any) -> int | None:
    """An integer 1..5 from an int, a numeric string or "4/5"; anything else (3.5, 0, 7, "good") -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*5)?\s*", value)
        if not m:
            return None
        value = float(m.group(1))
    if isinstance(value, int | float) and float(value).is_integer() and 1 <= value <= 5:
        return int(value)
    return None


def _json_objects(text: str) -> Iterable[dict[str, Any]]:
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    dec = json.JSONDecoder()
    for cand in candidates:
        for i, ch in enumerate(cand):
            if ch != "{":
                continue
            try:
                obj, _ = dec.raw_decode(cand[i:])
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                yield obj


def _normalise_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in obj.items():
        key = str(k).strip().lower().replace(" ", "_")
        key = _ALIASES.get(key, key)
        if isinstance(v, Mapping) and "score" in v:  # {"faithfulness": {"score": 4, "reason": ...}}
            v = v["score"]
        out[key] = v
    if isinstance(obj.get("scores"), Mapping):
        out.update(_normalise_keys(obj["scores"]))
    return out


def parse_judgement(text: str) -> Judgement:
    """Parse a judge answer; never raises. Unscorable criteria are listed in ``unparsed``."""
    raw = text if isinstance(text, str) else ("" if text is None else str(text))
    body = _THINK.sub(" ", raw)
    scores: dict[str, int | None] = dict.fromkeys(CRITERIA)
    rationale = ""
    in_json: set[str] = set()  # a criterion the JSON answer scored (even badly) is not looked up in prose
    for obj in _json_objects(body):
        norm = _normalise_keys(obj)
        if not any(c in norm for c in CRITERIA):
            continue
        for c in CRITERIA:
            if c in norm:
                in_json.add(c)
                scores[c] = _as_score(norm[c])
        rationale = str(norm.get("rationale", norm.get("reason", "")))
        break
    if any(v is None for v in scores.values()):
        for m in _PROSE.finditer(body):
            c = _ALIASES.get(m["name"].lower(), m["name"].lower())
            if scores.get(c) is None and c not in in_json:
                denom = (m["denom"] or "").replace(" ", "")
                scores[c] = _as_score(m["value"]) if denom in ("", "/5") else None
    unparsed = tuple(c for c in CRITERIA if scores[c] is None)
    return Judgement(scores=scores, unparsed=unparsed, raw_text=raw, rationale=rationale)


def ask_backend(backend: Any, image: np.ndarray, system: str, user: str) -> str:
    """One (image, text) -> text call on a grounder backend from :func:`geoseg.grounding.build_grounder`."""
    from geoseg.grounding.prompts import GroundingPrompt

    prompt = GroundingPrompt(system=system, user=user, form="geoseg", convention="norm1000")
    if hasattr(backend, "generate_text"):  # transformers / tiny
        return backend.generate_text(image, prompt)
    if hasattr(backend, "complete") and hasattr(backend, "request_body"):  # OpenAI-compatible
        return backend.complete(backend.request_body(image, prompt))
    if callable(backend):  # a plain function (image, system, user) -> str
        return backend(image, system, user)
    raise TypeError(f"{type(backend).__name__} cannot be used as a judge backend (no generate_text / complete)")


@dataclass(frozen=True)
class JudgeRecord:
    sample_id: str
    domain: str
    level: str
    judgement: Judgement
    model: str = ""
    groups: Mapping[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        j = self.judgement
        return {"sample_id": self.sample_id, "domain": self.domain, "level": self.level, "model": self.model,
                **{c: j.scores.get(c) for c in CRITERIA}, "unparsed": ",".join(j.unparsed),
                "error": j.error or "", "raw_text": j.raw_text[:500]}


def judge_one(backend: Any, image: np.ndarray, gt: np.ndarray, pred: np.ndarray, query: str) -> Judgement:
    """Build the composite, ask the backend, parse; a failing call gives a Judgement with ``error`` set."""
    comp = composite(image, gt, pred)
    try:
        text = ask_backend(backend, comp, JUDGE_SYSTEM, judge_user_prompt(query))
    except Exception as exc:  # recorded, the batch goes on
        return Judgement(scores=dict.fromkeys(CRITERIA), unparsed=CRITERIA, raw_text="",
                         error=f"{type(exc).__name__}: {exc}")
    return parse_judgement(text)


def judge_run(run: Any, backend: Any, *, limit: int | None = None, model: str = "",
              progress: Callable[[int, int], None] | None = None) -> list[JudgeRecord]:
    """Judge the samples of an :class:`~geoseg.evaluation.harness.EvalRun`; with ``limit``, that many samples
    evenly spaced over the run (so every domain and level of a sorted benchmark gets some)."""
    outcomes = list(run.outcomes)
    if limit is not None and limit < len(outcomes):
        picks = sorted({int(round(i)) for i in np.linspace(0, len(outcomes) - 1, max(0, int(limit)))})
        outcomes = [outcomes[i] for i in picks]
    records = []
    for i, o in enumerate(outcomes, 1):
        s = run.sample(o.sample_id)
        j = judge_one(backend, s.load_image(), s.load_mask(), run.load_prediction(o), o.query)
        records.append(JudgeRecord(o.sample_id, o.domain, o.level, j, model=model))
        if progress:
            progress(i, len(outcomes))
    return records


def aggregate_judgements(records: Sequence[JudgeRecord], by: Sequence[str] = ("domain", "level")) -> list[dict]:
    """Rows per group (all, each key, the cross product): n, unparsed answers, mean and count of each criterion."""
    groups: dict[tuple[str, ...], list[JudgeRecord]] = defaultdict(list)
    for r in records:
        vals = {"domain": r.domain, "level": r.level}
        groups[("all",)].append(r)
        for k in by:
            groups[(k, str(vals[k]))].append(r)
        if len(by) > 1:
            groups[("x", *(str(vals[k]) for k in by))].append(r)
    rows = []
    for key in sorted(groups, key=lambda k: (k[0] != "all", k[0] == "x", k)):
        rs = groups[key]
        row: dict[str, Any] = {"group": "/".join(key), "n": len(rs),
                               "unparsed_answers": sum(1 for r in rs if r.judgement.unparsed),
                               "errors": sum(1 for r in rs if r.judgement.error)}
        for c in CRITERIA:
            vals = [r.judgement.scores[c] for r in rs if r.judgement.scores.get(c) is not None]
            row[c] = round(float(np.mean(vals)), 3) if vals else None
            row[f"n_{c}"] = len(vals)
        rows.append(row)
    return rows
