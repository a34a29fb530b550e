"""The grounder's answer parser and prompt templates: formats, conventions, bad numbers, and a fuzz test that it
never raises."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geoseg.grounding import build_prompt, parse_grounding, rescale_grounding
from geoseg.grounding.parse import box_to_pixels, json_candidates, strip_think
from geoseg.types import Box, Grounding

SIZE = (1000, 500)  # (W, H)


def box(g: Grounding, i: int = 0) -> tuple[float, float, float, float]:
    return g.boxes[i].as_tuple()


# --------------------------------------------------------------------------------------------------- forms and JSON


def test_geoseg_form_fenced_json():
    g = parse_grounding('```json\n{"bbox": [100, 200, 300, 400], "prompt": "red roof"}\n```', SIZE, "norm1000")
    assert box(g) == (100.0, 100.0, 300.0, 200.0)
    assert g.phrase == "red roof"
    assert g.error is None and g.points == ()


def test_bare_json_and_plain_fence():
    assert box(parse_grounding('{"bbox": [0, 0, 500, 1000]}', SIZE)) == (0.0, 0.0, 500.0, 500.0)
    g = parse_grounding('```\n{"bbox": [0, 0, 500, 1000], "prompt": "x"}\n```', SIZE)
    assert box(g) == (0.0, 0.0, 500.0, 500.0)


def test_json_embedded_in_prose_skips_non_grounding_brackets():
    text = 'Step [1]: I looked at the {image}. Answer: {"bbox": [10, 20, 30, 40], "prompt": "car"} done.'
    g = parse_grounding(text, SIZE, "pixel")
    assert box(g) == (10.0, 20.0, 30.0, 40.0)
    assert g.phrase == "car"


def test_think_preamble_answer_after_think_wins():
    text = '<think>draft: {"bbox": [0, 0, 10, 10]} no wait</think>\n{"bbox": [100, 100, 200, 200], "prompt": "pond"}'
    g = parse_grounding(text, SIZE, "pixel")
    assert box(g) == (100.0, 100.0, 200.0, 200.0)
    assert g.raw_text == text


def test_think_only_falls_back_to_reasoning():
    g = parse_grounding('<think>it is {"bbox": [1, 2, 3, 4]}</think>', SIZE, "pixel")
    assert box(g) == (1.0, 2.0, 3.0, 4.0)


def test_think2seg_list_with_points_and_labels():
    text = json.dumps(
        [
            {"bbox_2d": [0, 0, 500, 500], "positive_points": [[250, 250]], "label": "tree"},
            {"bbox_2d": [500, 500, 1000, 1000], "positive_points": [[700, 800], [800, 700]], "label": "tree"},
        ]
    )
    g = parse_grounding(text, SIZE, "norm1000")
    assert [b.as_tuple() for b in g.boxes] == [(0.0, 0.0, 500.0, 250.0), (500.0, 250.0, 1000.0, 500.0)]
    assert g.points == (((250.0, 125.0),), ((700.0, 400.0), (800.0, 350.0)))
    assert g.phrase == "tree" and g.error is None


def test_points_given_for_some_boxes_only():
    text = '[{"bbox_2d": [0, 0, 10, 10]}, {"bbox_2d": [20, 20, 40, 40], "positive_points": [30, 30]}]'
    g = parse_grounding(text, SIZE, "pixel")
    assert g.points == ((), ((30.0, 30.0),))


@pytest.mark.parametrize("text", ["[]", '{"bbox": null, "prompt": ""}', '{"bbox": []}', "```json\n[]\n```"])
def test_explicit_no_target_is_an_answer_not_an_error(text):
    g = parse_grounding(text, SIZE)
    assert g.no_target and g.box is None
    assert g.error is None
    assert g.raw_text == text


def test_wrapper_dict_and_bare_boxes():
    assert box(parse_grounding('{"objects": [{"box": [1, 2, 3, 4]}]}', SIZE, "pixel")) == (1.0, 2.0, 3.0, 4.0)
    assert box(parse_grounding("[1, 2, 3, 4]", SIZE, "pixel")) == (1.0, 2.0, 3.0, 4.0)
    g = parse_grounding("[[1, 2, 3, 4], [5, 6, 7, 8]]", SIZE, "pixel")
    assert len(g.boxes) == 2


def test_key_case_and_wrapper_rules():
    g = parse_grounding('{"BBox": [1, 2, 3, 4], "Prompt": "dam"}', SIZE, "pixel")
    assert box(g) == (1.0, 2.0, 3.0, 4.0) and g.phrase == "dam"
    # a bare 4-list one level down is not taken for a box (it may be a size or a colour)
    assert parse_grounding('{"image_size": [0, 0, 810, 810]}', SIZE, "pixel").box is None
    assert box(parse_grounding('{"answer": {"bbox_2d": [5, 6, 7, 8]}}', SIZE, "pixel")) == (5.0, 6.0, 7.0, 8.0)
    # ... but a bare box in prose is an answer
    assert box(parse_grounding("The target is at [10, 20, 30, 40].", SIZE, "pixel")) == (10.0, 20.0, 30.0, 40.0)


def test_python_literal_and_trailing_commas():
    g = parse_grounding("{'bbox': [1, 2, 3, 4], 'prompt': 'ship'}", SIZE, "pixel")
    assert box(g) == (1.0, 2.0, 3.0, 4.0) and g.phrase == "ship"
    assert box(parse_grounding('{"bbox": [1, 2, 3, 4,],}', SIZE, "pixel")) == (1.0, 2.0, 3.0, 4.0)


def test_corner_pair_boxes():
    assert box(parse_grounding('{"bbox": [[10, 20], [30, 40]]}', SIZE, "pixel")) == (10.0, 20.0, 30.0, 40.0)


def test_numeric_strings_accepted():
    assert box(parse_grounding('{"bbox": ["10", "20", "30.5", "40"]}', SIZE, "pixel")) == (10.0, 20.0, 30.5, 40.0)


# ------------------------------------------------------------------------------------------------------ conventions


@pytest.mark.parametrize(
    ("convention", "values"),
    [("pixel", [250, 100, 750, 400]), ("norm1000", [250, 200, 750, 800]), ("norm1", [0.25, 0.2, 0.75, 0.8])],
)
def test_conventions_give_the_same_pixels(convention, values):
    g = parse_grounding(json.dumps({"bbox": values}), SIZE, convention)
    assert box(g) == pytest.approx((250.0, 100.0, 750.0, 400.0))


def test_convention_guard_rejects_out_of_grid_values():
    g = parse_grounding('{"bbox": [100, 100, 400, 400]}', SIZE, "norm1")
    assert g.box is None
    assert "norm1 range" in g.error and "convention" in g.error


# ---------------------------------------------------------------------------------------------------- bad numbers


def test_inverted_box_is_reordered():
    assert box(parse_grounding('{"bbox": [300, 400, 100, 200]}', SIZE, "pixel")) == (100.0, 200.0, 300.0, 400.0)


def test_partly_outside_box_is_clamped():
    assert box(parse_grounding('{"bbox": [-20, -5, 1200, 450]}', SIZE, "pixel")) == (0.0, 0.0, 1000.0, 450.0)


@pytest.mark.parametrize(
    ("bbox", "reason"),
    [
        ("[2000, 600, 2100, 700]", "zero area"),
        ("[10, 10, 10, 50]", "zero area"),
        ("[NaN, 1, 2, 3]", "not finite"),
        ("[1, 2, 3, Infinity]", "not finite"),
        ('["left", 1, 2, 3]', "not a number"),
        ("[true, 1, 2, 3]", "not a number"),
        ("[1, 2, 3]", "4 numbers"),
        ("[[1, 2, 3], 4, 5, 6]", "not a number"),
        ("[[1, 2], [3]]", "4 numbers"),
    ],
)
def test_unusable_boxes_are_dropped_with_a_reason(bbox, reason):
    text = '{"bbox": ' + bbox + ', "prompt": "x"}'
    g = parse_grounding(text, SIZE, "pixel")
    assert g.box is None
    assert reason in g.error
    assert g.raw_text == text


def test_partial_drop_keeps_good_boxes_and_reports_the_rest():
    text = '[{"bbox_2d": [1, 2, 3, 4], "label": "a"}, {"bbox_2d": [NaN, 0, 1, 1]}, {"foo": 1}]'
    g = parse_grounding(text, SIZE, "pixel")
    assert [b.as_tuple() for b in g.boxes] == [(1.0, 2.0, 3.0, 4.0)]
    assert "dropped 2 part(s)" in g.error and "not finite" in g.error and "no box" in g.error


def test_bad_points_are_dropped_box_kept():
    text = '{"bbox_2d": [0, 0, 100, 100], "positive_points": [[50, 50], ["a", 1], [NaN, 2], [2000, 3]]}'
    g = parse_grounding(text, SIZE, "pixel")
    assert g.box == Box(0, 0, 100, 100)
    # [2000, 3] is a pixel point off the image: clamped inside the last column
    assert g.points[0][0] == (50.0, 50.0)
    assert g.points[0][1][0] == pytest.approx(1000.0 - 1e-6) and len(g.points[0]) == 2
    assert "point 1" in g.error and "point 2" in g.error


@pytest.mark.parametrize(
    "text", ["", "   ", "garbage", "{", "[[[[[", '{"foo": "bar"}', "[1, 2, 3]", '{"bbox"', "null", "42"]
)
def test_garbage_gives_no_box_with_error_and_raw_text(text):
    g = parse_grounding(text, SIZE)
    assert g.box is None
    assert g.error
    assert g.raw_text == text


def test_non_text_answers():
    assert parse_grounding(None, SIZE).error.startswith("answer is not text")
    g = parse_grounding(b'{"bbox": [1, 2, 3, 4]}', SIZE, "pixel")
    assert box(g) == (1.0, 2.0, 3.0, 4.0)


def test_caller_bugs_raise_clear_errors():
    with pytest.raises(ValueError, match="convention"):
        parse_grounding("[]", SIZE, "norm100")
    with pytest.raises(ValueError, match="image_size"):
        parse_grounding("[]", (0, 10))
    with pytest.raises(ValueError, match="image_size"):
        parse_grounding("[]", 512)


def test_huge_and_deeply_nested_inputs_are_fast():
    import time

    t0 = time.perf_counter()
    for text in ("[" * 200_000, '{"a": ' * 50_000, "x[1]" * 50_000, '"' * 100_000, "{'a': [" * 10_000):
        assert parse_grounding(text, SIZE).box is None
    assert time.perf_counter() - t0 < 5.0


def test_helpers():
    assert strip_think("<think>a</think>b") == ("b", "a")
    assert strip_think("plain") == ("plain", "")
    assert list(json_candidates('x ```json\n{"a": 1}\n``` y'))[0] == '{"a": 1}'
    assert box_to_pixels([500, 500, 1000, 1000], SIZE, "norm1000") == Box(500, 250, 1000, 500)


def test_rescale_grounding_maps_model_input_frame_to_image():
    g = Grounding(boxes=(Box(32, 64, 96, 128),), points=(((64.0, 96.0),),), phrase="p", raw_text="r")
    r = rescale_grounding(g, (128, 256), (1024, 512))
    assert r.box == Box(256, 128, 768, 256)
    assert r.points == (((512.0, 192.0),),)
    assert r.phrase == "p" and r.raw_text == "r"


# ------------------------------------------------------------------------------------------------------- prompts


@pytest.mark.parametrize("form", ["geoseg", "think2seg"])
@pytest.mark.parametrize("convention", ["pixel", "norm1000", "norm1"])
def test_prompts_name_the_form_and_convention(form, convention):
    p = build_prompt("  the largest building  ", form, convention, (810, 810))
    assert p.user.startswith("Question: the largest building\n")
    assert ('"bbox_2d"' in p.user) == (form == "think2seg")
    assert ('"bbox"' in p.user) == (form == "geoseg")
    marker = {"pixel": "810x810 image", "norm1000": "0-1000 grid", "norm1": "between 0 and 1"}[convention]
    assert marker in p.user
    assert p.form == form and p.convention == convention and p.system


def test_prompt_errors():
    with pytest.raises(ValueError, match="non-empty"):
        build_prompt("   ")
    with pytest.raises(ValueError, match="prompt form"):
        build_prompt("q", form="sam")
    with pytest.raises(ValueError, match="convention"):
        build_prompt("q", convention="px")


# ---------------------------------------------------------------------------------------------------------- fuzz


def _check_inside(g: Grounding, size: tuple[int, int]) -> None:
    W, H = size
    assert isinstance(g, Grounding)
    for b in g.boxes:
        assert 0 <= b.x1 < b.x2 <= W and 0 <= b.y1 < b.y2 <= H
    for ps in g.points:
        for x, y in ps:
            assert 0 <= x < W and 0 <= y < H and math.isfinite(x) and math.isfinite(y)
    assert (g.box is None) or g.box is g.boxes[0]


conventions = st.sampled_from(["pixel", "norm1000", "norm1"])
sizes = st.tuples(st.integers(1, 4096), st.integers(1, 4096))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=400), size=sizes, convention=conventions)
def test_fuzz_arbitrary_text_never_raises(text, size, convention):
    g = parse_grounding(text, size, convention)
    assert g.raw_text == text
    _check_inside(g, size)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5000, 5000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(
            st.sampled_from(["bbox", "bbox_2d", "box", "prompt", "label", "positive_points", "points", "x", "y"]),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, size=sizes, convention=conventions, wrap=st.sampled_from(["bare", "fence", "prose", "think"]))
def test_fuzz_grounding_shaped_json_never_raises(value, size, convention, wrap):
    body = json.dumps(value)
    text = {
        "bare": body,
        "fence": f"```json\n{body}\n```",
        "prose": f"Sure! Here it is: {body} Hope that helps.",
        "think": f"<think>hmm [{body}</think>{body}",
    }[wrap]
    g = parse_grounding(text, size, convention)
    assert g.raw_text == text
    _check_inside(g, size)
