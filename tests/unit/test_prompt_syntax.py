"""A1111 prompt syntax: LoRA tags, emphasis weights, BREAK, and the compel translation table.

Pure: compel itself reading the translation is checked in ``tests/unit/engine/test_prompts.py``.
"""

from __future__ import annotations

import pytest

from pixelmill.core.errors import InvalidRequest
from pixelmill.core.prompt_syntax import (MAX_EMPHASIS_DEPTH, MAX_EMPHASIS_WEIGHT, Segment, check_emphasis,
                                          extract_lora_tags, is_plain, parse_emphasis, segments_text,
                                          uses_break, uses_weighting)

# --- LoRA tags ---------------------------------------------------------------------------


@pytest.mark.parametrize(("prompt", "text", "tags"), [
    ("a cat", "a cat", []),
    ("a cat <lora:style>", "a cat", [("style", 1.0)]),
    ("<lora:style:0.7> a cat", "a cat", [("style", 0.7)]),
    ("a <lora:style:-1.5> cat", "a cat", [("style", -1.5)]),
    ("a <lora:one:.5>, <lora:two:2> cat <LORA:three>", "a , cat",
     [("one", 0.5), ("two", 2.0), ("three", 1.0)]),
    ("a <lora: spaced name : 1 > cat", "a cat", [("spaced name", 1.0)]),
    ("a  cat, <lora:x>", "a cat,", [("x", 1.0)]),
])
def test_lora_tags_are_removed_in_order(prompt, text, tags):
    assert extract_lora_tags(prompt) == (text, tags)


def test_prompt_without_tags_is_untouched():
    assert extract_lora_tags("  a  (cat:1.2)  ") == ("  a  (cat:1.2)  ", [])


@pytest.mark.parametrize("prompt", [
    "a <lora:style:abc> cat",
    "a <lora:style:1.2.3> cat",
    "a <lora:style:> cat",
    "a <lora::1> cat",
    "a <lora:style:0.5:1.0> cat",
    "a <lora:style:inf> cat",
    "a <lora:style cat",
])
def test_malformed_lora_tags_are_refused(prompt):
    with pytest.raises(InvalidRequest) as caught:
        extract_lora_tags(prompt)
    assert caught.value.param == "prompt"


# --- emphasis ----------------------------------------------------------------------------


def _flat(prompt: str) -> list[list[tuple[str, float]]]:
    return [[(s.text, s.weight) for s in chunk] for chunk in parse_emphasis(prompt)]


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a cat", [[("a cat", 1.0)]]),
    ("a (cat)", [[("a ", 1.0), ("cat", 1.1)]]),
    ("a [cat]", [[("a ", 1.0), ("cat", 0.909091)]]),
    ("(cat:1.3)", [[("cat", 1.3)]]),
    ("( cat : 0.5 )", [[(" cat ", 0.5)]]),
    ("((cat))", [[("cat", 1.21)]]),
    ("[[cat]]", [[("cat", 0.826446)]]),
    ("((cat:1.5))", [[("cat", 1.65)]]),
    ("([cat])", [[("cat", 1.0)]]),
    ("(a (b:2) c:1.5)", [[("a ", 1.5), ("b", 3.0), (" c", 1.5)]]),
    ("(cat:-1)", [[("cat", -1.0)]]),
    ("(cat:.5)", [[("cat", 0.5)]]),
    ("(a:b)", [[("a:b", 1.1)]]),
    (r"\(cat\) \[dog\] a\\b", [[("(cat) [dog] a\\b", 1.0)]]),
    (r"\((cat)\)", [[("(", 1.0), ("cat", 1.1), (")", 1.0)]]),
    ("a BREAK b", [[("a", 1.0)], [("b", 1.0)]]),
    ("(a BREAK b:1.2)", [[("a", 1.2)], [("b", 1.2)]]),
    ("BREAK a BREAK BREAK b BREAK", [[("a", 1.0)], [("b", 1.0)]]),
    ("aBREAK b Break", [[("aBREAK b Break", 1.0)]]),
    ("", []),
    ("()", []),
    ("a [ ] b ( )", [[("a   b  ", 1.0)]]),  # whitespace carries no weight
])
def test_emphasis_table(prompt, expected):
    assert _flat(prompt) == expected


@pytest.mark.parametrize(("prompt", "expected"), [
    ("a (cat", [[("a ", 1.0), ("cat", 1.1)]]),  # unclosed: weights the rest, like A1111
    ("a [cat (dog", [[("a ", 1.0), ("cat ", 0.909091), ("dog", 1.0)]]),
    ("a cat) dog]", [[("a cat) dog]", 1.0)]]),  # nothing open: literal
    ("cat:1.2)", [[("cat:1.2)", 1.0)]]),
    ("([a)]", [[("a", 1.0)]]),  # round and square close independently
    ("(a [b) c]", [[("a ", 1.1), ("b", 1.0), (" c", 0.909091)]]),
])
def test_unbalanced_brackets_are_lenient(prompt, expected):
    assert _flat(prompt) == expected


def test_malformed_emphasis_weight_is_refused():
    with pytest.raises(InvalidRequest) as caught:
        parse_emphasis("(cat:1.2.3)")
    assert caught.value.param == "prompt"


@pytest.mark.parametrize(("prompt", "weighting", "brk", "plain"), [
    ("a cat, photo", False, False, True),
    ("a (cat)", True, False, False),
    ("a [cat", True, False, False),
    ("a cat)", True, False, False),
    (r"a \(cat\)", False, False, False),
    (r"a \\(cat)", True, False, False),
    ("a BREAK cat", False, True, False),
    ("a BREAKfast", False, False, True),
])
def test_syntax_detection(prompt, weighting, brk, plain):
    assert uses_weighting(prompt) is weighting
    assert uses_break(prompt) is brk
    assert is_plain(prompt) is plain


def test_segments_text_drops_syntax():
    assert segments_text(parse_emphasis(r"a (cat:1.3) \(b\) BREAK [c]")) == "a cat (b) c"
    assert Segment("x").weight == 1.0


# --- bounds (issue 19 §7: 2,000 nested "(" gave 1.1^2000 = inf and a NaN image) ---------------


@pytest.mark.parametrize(("prompt", "weight"), [
    ("(" * 16 + "a" + ")" * 16, 4.594973),  # the deepest pure "(" nesting within the weight bound
    ("[" * MAX_EMPHASIS_DEPTH + "a", 0.047362),  # down-weighting cannot overflow: depth is the bound
    (f"(a:{MAX_EMPHASIS_WEIGHT:g})", MAX_EMPHASIS_WEIGHT),
    (f"(a:-{MAX_EMPHASIS_WEIGHT:g})", -MAX_EMPHASIS_WEIGHT),
    ("((a:2.5))", 2.75),
])
def test_weights_within_the_bounds_are_honoured(prompt, weight):
    assert _flat(prompt) == [[("a", weight)]]


@pytest.mark.parametrize(("prompt", "match"), [
    ("(" * 2000 + "a" + ")" * 2000, "nest more than"),
    ("[" * 2000 + "a" + "]" * 2000, "nest more than"),
    ("a " + ":( " * (MAX_EMPHASIS_DEPTH + 1), "nest more than"),  # unclosed ones count: they weight the rest
    ("(" * 17 + "a" + ")" * 17, "weight of 5.05"),
    ("(a:5.01)", "weight of 5.01"),
    ("((a:3):3)", "weight of 9"),
    ("(a:-6)", "weight of -6"),
    ("(a:" + "9" * 400 + ")", "weight of inf"),  # float("999…") is inf
    ("((a:0):" + "9" * 400 + ")", "weight of nan"),  # 0 × inf: NaN must not slip through a range check
])
def test_emphasis_that_cannot_be_honoured_is_refused_naming_prompt(prompt, match):
    with pytest.raises(InvalidRequest, match=match) as caught:
        parse_emphasis(prompt)
    assert caught.value.param == "prompt"


def test_whitespace_keeps_weight_one_whatever_encloses_it():
    # Only text with tokens is weighted, so only it is checked: "(a:9)" would be refused.
    assert _flat("( :9) b") == [[("  b", 1.0)]]


def test_check_emphasis_names_the_field():
    check_emphasis("a ((cat)) [dog]", param="negative_prompt")
    with pytest.raises(InvalidRequest) as caught:
        check_emphasis("(" * 2000 + "ugly", param="negative_prompt")
    assert caught.value.param == "negative_prompt"
    check_emphasis(r"plain text, \(escaped\)", param="prompt")  # plain: nothing to parse
