"""Synthetic problems: every rationale re-checked by re-executing the problem from its question text."""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import re

import pytest

from trl_safedistill.data.synthetic import FAMILIES, IN_DOMAIN, OUT_OF_DOMAIN, generate, generate_split, main
from trl_safedistill.records import load_jsonl

COUNT = 60


def _arith(a: str, op: str, b: str) -> int:
    x, y = int(a.strip("()")), int(b.strip("()"))
    return x + y if op == "+" else x - y if op == "-" else x * y


def check_arithmetic(record) -> None:
    expression = record.question.removesuffix(" =")
    assert re.fullmatch(r"[\d\s()+\-*]+", expression)
    tree = ast.parse(expression, mode="eval")  # only numbers and + - * (checked above)
    assert str(eval(compile(tree, "<q>", "eval"))) == record.answer
    steps = re.findall(r"(\(-?\d+\)|-?\d+) ([+\-*]) (\(-?\d+\)|-?\d+) = (-?\d+)", record.rationale)
    assert len(steps) >= 2
    for a, op, b, c in steps:
        assert _arith(a, op, b) == int(c), (record.id, a, op, b, c)
    assert steps[-1][3] == record.answer


def check_boolean(record) -> None:
    expression = record.question.removesuffix(" is")
    assert set(expression.split()) <= {"True", "False", "not", "and", "or", "(", ")"}
    assert str(eval(expression)) == record.answer
    for a, b in re.findall(r"not (True|False) = (True|False)", record.rationale):
        assert (a == "False") == (b == "True")
    for a, op, b, c in re.findall(r"(True|False) (and|or) (True|False) = (True|False)", record.rationale):
        assert str(eval(f"{a} {op} {b}")) == c
    assert record.rationale.rstrip(".").endswith(record.answer)


def check_date(record) -> None:
    month, day, year = re.search(r"(\w+) (\d+), (\d{4})\.", record.question).groups()
    start = dt.datetime.strptime(f"{month} {day} {year}", "%B %d %Y").date()
    amount, unit, direction = re.search(r"(\d+) (days?|weeks?) (from today|ago)", record.question).groups()
    days = int(amount) * (7 if unit.startswith("week") else 1)
    end = start + dt.timedelta(days=days if direction == "from today" else -days)
    assert record.answer == end.strftime("%m/%d/%Y")
    total = 0
    for line in record.rationale.splitlines():
        hop = re.search(r"(\d+) days?\b.*?(\d\d/\d\d/\d{4}).*?(\d\d/\d\d/\d{4})", line)
        if hop:
            n, a, b = int(hop.group(1)), *(dt.datetime.strptime(x, "%m/%d/%Y").date() for x in hop.group(2, 3))
            assert abs((b - a).days) == n, line
            total += n
    assert total == days


def check_tracking(record) -> None:
    holding = dict(re.findall(r"(\w+) has an? (\w+ \w+)[,.]", record.question.split("As the game")[0]))
    swaps = re.findall(r"(\w+) and (\w+) swap their", record.question)
    who = re.search(r"At the end of the game, (\w+) has the", record.question).group(1)
    options = re.findall(r"\(([A-E])\) (.+)", record.question)
    state_lines = [line for line in record.rationale.splitlines() if "swap" in line or "trade" in line]
    assert len(state_lines) == len(swaps)
    for (a, b), line in zip(swaps, state_lines):
        holding[a], holding[b] = holding[b], holding[a]
        stated = dict(re.findall(r"(\w+): (\w+ \w+)", line))
        assert stated == holding, line
    letter = next(letter for letter, text in options if text == holding[who])
    assert record.answer == f"({letter})"


def check_deduction(record) -> None:
    head, rest = record.question.split(" in a fixed order: ", 1)
    thing = re.search(r"there are \d+ (.+)s$", head).group(1)
    listing, clues_text = rest.split(". ", 1)
    objects = re.findall(rf"an? (\w+) {thing}", listing)
    clues_text = clues_text.split("\nOptions:")[0]
    ordinals = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh"]
    checks = []
    for sentence in re.findall(r"The .+?\.", clues_text):
        if m := re.fullmatch(rf"The (\w+) {thing} is to the left of the (\w+) {thing}\.", sentence):
            checks.append(lambda p, a=m[1], b=m[2]: p[a] < p[b])
        elif m := re.fullmatch(rf"The (\w+) {thing} is the leftmost\.", sentence):
            checks.append(lambda p, a=m[1]: p[a] == 0)
        elif m := re.fullmatch(rf"The (\w+) {thing} is the rightmost\.", sentence):
            checks.append(lambda p, a=m[1]: p[a] == len(objects) - 1)
        elif m := re.fullmatch(rf"The (\w+) {thing} is the (\w+) from the left\.", sentence):
            rank = ordinals.index(m[2])
            checks.append(lambda p, a=m[1], k=rank: p[a] == k)
        else:
            raise AssertionError(f"unparsed clue {sentence!r}")
    solutions = []
    for order in itertools.permutations(objects):
        position = {o: i for i, o in enumerate(order)}
        if all(check(position) for check in checks):
            solutions.append(order)
    assert len(solutions) == 1, record.id
    stated = re.search(r"(?:is|get): ([\w, ]+)\.", record.rationale).group(1).split(", ")
    assert tuple(stated) == solutions[0]
    options = re.findall(r"\(([A-G])\) The (\w+) .+? is the (.+)", record.question)
    asked = options[0][2]
    index = 0 if asked == "leftmost" else len(objects) - 1 if asked == "rightmost" else ordinals.index(asked.split()[0])
    letter = next(letter for letter, obj, _ in options if obj == solutions[0][index])
    assert record.answer == f"({letter})"


CHECKS = {
    "multistep_arithmetic": check_arithmetic,
    "boolean_expressions": check_boolean,
    "date_arithmetic": check_date,
    "object_tracking": check_tracking,
    "logical_deduction": check_deduction,
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rationales_are_correct_when_the_problem_is_re_executed(family):
    records = generate(family, COUNT, seed=3)
    assert len({r.id for r in records}) == COUNT
    for record in records:
        assert record.task == family and record.rationale and record.answer
        CHECKS[family](record)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_wording_varies_within_a_family(family):
    records = generate(family, COUNT, seed=0)
    skeletons = set()
    first_lines = set()
    for record in records:
        lines = record.rationale.splitlines()
        first_lines.add(lines[0].split()[0])
        for line in lines[1:-1]:
            skeletons.add(" ".join(re.sub(r"\d\d/\d\d/\d{4}|-?\d+|True|False|\b[A-Z][a-z]+\b|\w+ (ball|present|hat)|\b[a-z]+ (one|book|bird|car)", "#", line).split()[:3]))
    assert len(first_lines) >= 2, first_lines
    assert len(skeletons) >= 3, skeletons


def test_generation_is_deterministic_by_seed():
    for family in FAMILIES:
        assert generate(family, 5, seed=7) == generate(family, 5, seed=7)
        assert generate(family, 5, seed=7) != generate(family, 5, seed=8)


def test_documented_split_and_cli(tmp_path):
    assert set(IN_DOMAIN) | set(OUT_OF_DOMAIN) == set(FAMILIES)
    assert not set(IN_DOMAIN) & set(OUT_OF_DOMAIN)
    assert {r.task for r in generate_split("ood", 2)} == set(OUT_OF_DOMAIN)
    out = tmp_path / "ind.jsonl"
    assert main(["--split", "ind", "--count", "4", "--out", str(out)]) == 0
    records = load_jsonl(out)
    assert len(records) == 4 * len(IN_DOMAIN) and {r.task for r in records} == set(IN_DOMAIN)
