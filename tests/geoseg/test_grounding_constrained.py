"""Constrained decoding (geoseg.grounding.constrained): the answer grammar on its own, then the real tiny Qwen3-VL
generating under it on real aerial images. Tiny-model boxes are random: only their well-formedness is asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geoseg.grounding.constrained import (
    GrammarLogitsProcessor,
    TokenIndex,
    accepting,
    advance,
    answer_grammar,
    answer_schema,
    initial_state,
)
from geoseg.grounding.parse import parse_grounding
from geoseg.grounding.transformers_backend import TransformersGrounder

AERIAL = Path(__file__).resolve().parents[1] / "data" / "aerial"
IMAGES = ("SOAP_031.png", "SOAP_061.png", "AWPE_pigeon_lake_drone.jpg", "OSBS_029.tif")


def feed(grammar, text):
    st = initial_state(grammar)
    for ch in text:
        st = advance(st, ch)
        if st is None:
            return "rejected"
    return "complete" if accepting(st) else "open"


GEOSEG_CASES = {
    '{"bbox": [1, 2, 3, 4], "prompt": "red roof"}': "complete",
    '{"bbox":[0,0,1000,1000],"prompt":"a"}': "complete",
    '{"bbox": null, "prompt": ""}': "complete",
    '{"bbox":[10,20,5,40],"prompt":"x"}': "rejected",  # x2 <= x1: no zero/negative-width box can be written
    '{"bbox":[0,0,1001,9],"prompt":"x"}': "rejected",  # beyond the 0-1000 grid
    '{"bbox":[01,0,9,9],"prompt":"x"}': "rejected",  # JSON has no leading zeros
    '{"bbox":[1,2,3,4],"prompt":"say \\"hi\\""}': "rejected",  # no quotes inside the phrase
    '{"bbox":[1,2,3,4],"prompt":"x"': "open",
    '{"bbox":[1,2,3,4],"prompt":"x"}}': "rejected",  # nothing after the answer
}


@pytest.mark.parametrize("text", list(GEOSEG_CASES))
def test_geoseg_grammar(text):
    assert feed(answer_grammar("geoseg", "norm1000", (400, 300)), text) == GEOSEG_CASES[text]


def test_think2seg_and_pixel_grammar():
    g = answer_grammar("think2seg", "pixel", (400, 300))
    one = '[{"bbox_2d":[1,2,30,40],"positive_points":[[5,6],[7,8]],"label":"tree"}]'
    two = one[:-1] + ',{"bbox_2d": [100, 2, 400, 300], "positive_points": [[150, 60]], "label": "b"}]'
    assert feed(g, "[]") == feed(g, one) == feed(g, two) == "complete"
    assert feed(g, one.replace("[[5,6]", "[[50,6]")) == "rejected"  # a point outside its box
    assert feed(g, one.replace("30,40", "401,40")) == "rejected"  # beyond the 400 px frame
    assert feed(answer_grammar("think2seg", "pixel", (400, 300), allow_no_target=False), "[]") == "rejected"
    with pytest.raises(ValueError, match="norm1000 or pixel"):
        answer_grammar("geoseg", "norm1", (400, 300))


def test_every_grammar_answer_parses_into_a_box_and_matches_the_schema():
    import jsonschema

    texts = {
        "geoseg": ['{"bbox": [1, 2, 3, 4], "prompt": "red roof"}', '{"bbox":[0,0,1000,1000],"prompt":"a"}'],
        "think2seg": ['[{"bbox_2d":[1,2,30,40],"positive_points":[[5,6]],"label":"tree"}]'],
    }
    for form, answers in texts.items():
        for text in answers:
            assert feed(answer_grammar(form, "norm1000", (400, 300)), text) == "complete"
            jsonschema.validate(json.loads(text), answer_schema(form, "norm1000"))
            g = parse_grounding(text, (400, 300), "norm1000")
            assert g.error is None and g.boxes and all(b.area > 0 for b in g.boxes)


def test_token_index_allows_only_viable_tokens_and_hurries_to_finish():
    vocab = list('{}[]",: 0123456789') + ["bbox", "prompt", "null", "red", " roof", "bbox_2", '"}']
    index = TokenIndex(vocab)
    g = answer_grammar("geoseg", "norm1000", (10, 10), allow_no_target=False)
    st = initial_state(g)
    assert [vocab[i] for i in index.allowed(st)] == ["{"]
    for ch in '{"bbox":[12':
        st = advance(st, ch)
    assert sorted(vocab[i] for i in index.allowed(st)) == sorted([",", *"0123456789"])
    assert sorted(vocab[i] for i in index.allowed(st, hurry=True)) == [","]  # 12 is a valid x1: stop the number
    # a processor with a budget too small for a leisurely answer still completes one (hurrying)
    import torch

    proc = GrammarLogitsProcessor(index, [g], eos_ids=[len(vocab)], max_new_tokens=40)
    ids = torch.zeros((1, 3), dtype=torch.long)
    for _ in range(40):
        scores = proc(ids, torch.zeros((1, len(vocab) + 1)))
        nxt = int(torch.argmax(scores[0]))  # "random weights": the first allowed id
        if nxt == len(vocab):
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    text = proc.texts[0]
    assert feed(g, text) == "complete", text
    assert parse_grounding(text, (10, 10), "norm1000").boxes


@pytest.fixture(scope="module")
def images():
    from PIL import Image

    return [np.asarray(Image.open(AERIAL / name).convert("RGB")) for name in IMAGES]


@pytest.mark.parametrize("form", ["geoseg", "think2seg"])
def test_tiny_qwen3vl_constrained_answers_parse_into_boxes(tiny_grounder_dir: Path, images, form):
    """Random weights, real generation: every answer is well-formed and parses into a box (boxes mean nothing)."""
    g = TransformersGrounder(str(tiny_grounder_dir), prompt_form=form, max_new_tokens=96, allow_no_target=False,
                             batch_size=2, meaningless=True)
    queries = ["the largest tree crown", "a road next to the field"]
    items = [(im, q) for im in images for q in queries]
    out = g.ground_many(items)
    for (im, _q), res in zip(items, out, strict=True):
        H, W = im.shape[:2]
        assert res.error is None and res.boxes, res.raw_text
        for b in res.boxes:
            assert 0 <= b.x1 < b.x2 <= W and 0 <= b.y1 < b.y2 <= H
        json.loads(res.raw_text)  # the raw answer itself is strict JSON
    free = TransformersGrounder(str(tiny_grounder_dir), prompt_form=form, max_new_tokens=32, constrained=False)
    assert not any(r.boxes for r in free.ground_many(items[:2]))  # the same weights, free: no box (issue 15)


def test_pixel_convention_and_options(tiny_grounder_dir: Path, images):
    g = TransformersGrounder(str(tiny_grounder_dir), convention="pixel", max_new_tokens=64, allow_no_target=False)
    res = g.ground(images[0], "a tree")
    assert res.error is None and res.boxes
    with pytest.raises(ValueError, match="norm1000 or pixel"):
        TransformersGrounder(str(tiny_grounder_dir), convention="norm1")
    assert not TransformersGrounder(str(tiny_grounder_dir), convention="norm1", constrained=False).constrained
