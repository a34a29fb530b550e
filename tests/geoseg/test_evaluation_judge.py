"""MLLM judge: the parser on answer strings, and the mechanics with the tiny model and an OpenAI-compatible server.

The answer strings below are hand-written in the shapes multimodal models give (bare and fenced JSON, a <think>
block first, nested score objects, Markdown prose, out-of-range and fractional scores, refusals); they are not
recordings of a particular model.
"""

from __future__ import annotations

import pytest

from geoseg.evaluation.bench import read_benchmark
from geoseg.evaluation.harness import evaluate
from geoseg.evaluation.judge import (
    CRITERIA,
    aggregate_judgements,
    judge_run,
    judge_user_prompt,
    parse_judgement,
)
from geoseg.types import TINY_MODEL_WARNING
from tests.fixtures.evaluation import ColourPipeline, load_make_bench

ANSWERS = {
    "bare": ('{"faithfulness": 4, "localization": 5, "robustness": 3, "overlap": 4, "rationale": "mostly right"}',
             {"faithfulness": 4, "localization": 5, "robustness": 3, "overlap": 4}),
    "fenced_after_think": ("<think>Green at the left {not json}, yellow centre.</think>\nHere you go:\n```json\n"
                           '{"Faithfulness": "5", "Localisation": 4, "Robustness": "4/5", "Overlap": 5}\n```',
                           {"faithfulness": 5, "localization": 4, "robustness": 4, "overlap": 5}),
    "nested": ('{"scores": {"faithfulness": {"score": 2, "reason": "wrong roof"}, "localization": {"score": 1},'
               ' "robustness": {"score": 3}, "overlap": {"score": 1}}}',
               {"faithfulness": 2, "localization": 1, "robustness": 3, "overlap": 1}),
    "prose": ("**Faithfulness**: 3/5 - the building is right.\n**Localization:** 4\nRobustness - 2\n"
              "Overlap score is 3.", {"faithfulness": 3, "localization": 4, "robustness": 2, "overlap": 3}),
    "out_of_range": ('{"faithfulness": 7, "localization": 0, "robustness": 3.5, "overlap": 4}',
                     {"faithfulness": None, "localization": None, "robustness": None, "overlap": 4}),
    "missing": ('{"faithfulness": 4, "overlap": 2}',
                {"faithfulness": 4, "localization": None, "robustness": None, "overlap": 2}),
    "ten_scale": ("Faithfulness: 8/10, Localization: 6/10", dict.fromkeys(CRITERIA)),
    "refusal": ("I cannot evaluate segmentation masks.", dict.fromkeys(CRITERIA)),
    "words": ('{"faithfulness": "good", "localization": true, "robustness": null, "overlap": [4]}',
              dict.fromkeys(CRITERIA)),
    "empty": ("", dict.fromkeys(CRITERIA)),
}


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_parser_on_answer_strings(name):
    text, expected = ANSWERS[name]
    j = parse_judgement(text)
    assert dict(j.scores) == expected
    assert j.unparsed == tuple(c for c in CRITERIA if expected[c] is None)
    assert j.raw_text == text


def test_parser_never_raises_on_junk():
    for junk in (None, 42, "{" * 1000, "}{", '{"faithfulness": {"score": "x"}}', "\x00\xff"):
        j = parse_judgement(junk)
        assert set(j.unparsed) <= set(CRITERIA)


def test_prompt_has_rubric_and_colours():
    p = judge_user_prompt("Which field is flooded?")
    for word in ("GREEN", "RED", "YELLOW", "Faithfulness", "Localization", "Robustness", "Overlap", "1 (worst)"):
        assert word in p
    with pytest.raises(ValueError):
        judge_user_prompt("  ")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    bench = read_benchmark(load_make_bench().make_bench(root / "b", per_domain=1, size=32))
    return evaluate(ColourPipeline(), bench, root / "cache")


def test_judge_with_openai_compatible_server(small_run, chat_server):
    from geoseg.grounding import build_grounder
    from geoseg.types import BackendSpec

    backend = build_grounder(BackendSpec("openai", "judge-model", {"base_url": chat_server.base_url,
                                                                   "max_retries": 0}))
    chat_server.queue({"answer": ANSWERS["bare"][0]}, {"answer": ANSWERS["prose"][0]},
                      {"answer": ANSWERS["refusal"][0]}, {"status": 400})
    records = judge_run(small_run, backend, model="judge-model")
    assert len(records) == 4
    assert records[0].judgement.complete and records[1].judgement.scores["overlap"] == 3
    assert records[2].judgement.unparsed == CRITERIA and records[3].judgement.error
    # the model saw the composite and the rubric
    req = chat_server.requests[0]
    text = str(req)
    assert "GREEN" in text and "image_url" in text
    rows = {r["group"]: r for r in aggregate_judgements(records)}
    assert rows["all"]["n"] == 4 and rows["all"]["unparsed_answers"] == 2 and rows["all"]["errors"] == 1
    assert rows["all"]["faithfulness"] == pytest.approx((4 + 3) / 2) and rows["all"]["n_faithfulness"] == 2
    assert any(k.startswith("domain/") for k in rows) and any(k.startswith("x/") for k in rows)


def test_judge_mechanics_with_tiny_model(small_run, tiny_grounder):
    # the tiny random Qwen3-VL answers noise: this shows the real call path end to end, the scores mean nothing
    records = judge_run(small_run, tiny_grounder, limit=2, model="tiny")
    assert len(records) == 2
    for r in records:
        assert r.judgement.error is None, r.judgement.error
        assert isinstance(r.judgement.raw_text, str)
        assert set(r.judgement.unparsed) <= set(CRITERIA)
    print(TINY_MODEL_WARNING, [r.row() for r in records])
