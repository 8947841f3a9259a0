"""Answer extraction on real-looking student outputs, including failures (None, never an exception)."""

from __future__ import annotations

import pytest

from trl_safedistill.answers import extract_answer, is_correct, score_generation

LETTERS = ["(A)", "(B)", "(C)", "(D)"]


@pytest.mark.parametrize(
    "text, choices, expected",
    [
        ("The blue book is rightmost.\nTherefore, the answer is (C).", LETTERS, "(C)"),
        ("Let's think. ... So the answer is (B).", LETTERS, "(B)"),
        ("Therefore, the answer is B.\nExplanation: the orange book is second.", LETTERS, "(B)"),
        ("Therefore, the answer is **(D)**.", LETTERS, "(D)"),
        ("Therefore, the answer is (e).", LETTERS, None),  # not an option
        ("A is first, B is second.\nTherefore, the answer is", LETTERS, None),  # nothing after the phrase
        ("(A) looks right, but (B) ... I am not sure.", LETTERS, None),  # no answer phrase, last line not a choice
        ("(B)", LETTERS, "(B)"),  # bare option as the whole output
        ("Therefore, the answer is No.", ["Yes", "No"], "No"),
        ("Therefore, the answer is no, because Bob lies.", ["Yes", "No"], "No"),
        ("Therefore, the answer is invalid.", ["valid", "invalid"], "invalid"),
        ("Therefore, the answer is valid.", ["valid", "invalid"], "valid"),
        ("Therefore, the answer is implausible", ["plausible", "implausible"], "implausible"),
        ("Therefore, the answer is True.", ["True", "False"], "True"),
        ("So the answer is 12/22/2006.", ["12/22/2006", "12/21/2006"], "12/22/2006"),
        ("Therefore, the answer is the orange book is the leftmost.",
         ["The black book is the leftmost.", "The orange book is the leftmost."], "The orange book is the leftmost."),
        ("", LETTERS, None),
        (None, LETTERS, None),
        ("\u00ff\u0000 garbage tokens ::::", LETTERS, None),
    ],
)
def test_extract_with_choices(text, choices, expected):
    assert extract_answer(text, choices) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 + 4 = 7, so 7 items.\nTherefore, the answer is 7.", "7"),
        ("Therefore, the answer is -12.", "-12"),
        ("Therefore, the answer is 3.5.", "3.5"),
        ("The answer is } ] >", "} ] >"),
        ("Answer: apple banana cherry", "apple banana cherry"),
        ("I think it is seven", None),  # no answer phrase, free form: no guess
        ("Therefore, the answer is\n\n", None),
    ],
)
def test_extract_free_form(text, expected):
    assert extract_answer(text) == expected


def test_custom_answer_phrase_wins_over_fallbacks():
    text = "The answer is 5 maybe. Final: 6"
    assert extract_answer(text, answer_phrase="Final:") == "6"


@pytest.mark.parametrize(
    "prediction, golds, correct",
    [
        ("7", ["7"], True),
        ("seven", ["7"], True),
        ("7.0", ["7"], True),
        ("1,000", ["1000"], True),
        ("B", ["(B)"], True),
        ("(b)", ["(B)"], True),
        ("yes", ["Yes"], True),
        ("No", ["Yes"], False),
        (None, ["Yes"], False),
        ("8", ["7"], False),
    ],
)
def test_is_correct(prediction, golds, correct):
    assert is_correct(prediction, golds) is correct


def test_score_generation_maps_option_text_to_label():
    doc = {"options": ["red", "blue"], "labels": ["(A)", "(B)"], "golds": ["(B)", "blue"]}
    assert score_generation(doc, "Therefore, the answer is blue.") == 1.0
    assert score_generation(doc, "Therefore, the answer is (B).") == 1.0
    assert score_generation(doc, "Therefore, the answer is (A).") == 0.0
    assert score_generation(doc, "no conclusion at all") == 0.0
