"""Synthetic multi-step problems whose correct step-by-step rationales are written by a program.

The offline stand-in for a teacher (demo and tests): every problem is generated from a seed, solved
by code, and explained step by step, so every rationale is correct by construction (the tests
re-execute each problem from its question text and check each step). Wording varies: every kind of
step has several phrasings, picked per problem, so a student cannot learn one template per family.

Families and the documented split (this project's choice):

* in-domain (IND, train on these): ``multistep_arithmetic`` (integer expressions with brackets,
  precedence), ``boolean_expressions`` (``not``/``and``/``or``), ``date_arithmetic`` (adding and
  subtracting days and weeks across month and year ends);
* out-of-domain (OOD, held out for evaluation): ``object_tracking`` (state tracking through swaps,
  multiple choice) and ``logical_deduction`` (ordering objects from constraints, multiple choice).
  The OOD families need kinds of reasoning (tracking a state, propagating constraints) that the IND
  families never show, as BBH's held-out tasks do for a student trained on other tasks.

Determinism: problem ``i`` of family ``f`` under ``seed`` uses ``random.Random(f"{f}:{seed}:{i}")``
(string seeds hash with SHA-512, stable across runs, machines and Python versions).
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass

from ..records import RationaleRecord, write_records

IN_DOMAIN: tuple[str, ...] = ("multistep_arithmetic", "boolean_expressions", "date_arithmetic")
OUT_OF_DOMAIN: tuple[str, ...] = ("object_tracking", "logical_deduction")

DESCRIPTIONS: dict[str, str] = {
    "multistep_arithmetic": "Solve multi-step arithmetic problems.",
    "boolean_expressions": "Evaluate the result of a random Boolean expression.",
    "date_arithmetic": "Compute a date from a given date and an offset in days or weeks.",
    "object_tracking": "Track the objects held by players through a sequence of swaps.",
    "logical_deduction": "Deduce the order of a sequence of objects from clues about their positions.",
}

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")
LETTERS = "ABCDEFG"


def _pick(rng: random.Random, options: tuple[str, ...], **values: object) -> str:
    return rng.choice(options).format(**values)


# ----------------------------------------------------------------------------- multistep arithmetic


def _num(value: int) -> str:
    """An operand as written in a step: negatives in brackets (``3 - (-2)``)."""
    return f"({value})" if value < 0 else str(value)


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _flat_steps(numbers: list[int], ops: list[str], rng: random.Random) -> tuple[int, list[str]]:
    """Evaluate ``n0 op0 n1 op1 n2 ...`` with ``*`` first, left to right; one sentence per operation."""
    numbers, ops, steps = list(numbers), list(ops), []
    phrasings = ("{a} {op} {b} = {c}.", "Compute {a} {op} {b} = {c}.", "We get {a} {op} {b} = {c}.")
    while ops:
        index = ops.index("*") if "*" in ops else 0
        a, op, b = numbers[index], ops[index], numbers[index + 1]
        c = _apply(a, op, b)
        steps.append(_pick(rng, phrasings, a=_num(a), op=op, b=_num(b), c=c))
        numbers[index : index + 2] = [c]
        del ops[index]
    return numbers[0], steps


def _arithmetic(rng: random.Random) -> tuple[str, str, list[str], None]:
    groups = []
    for _ in range(2):
        size = rng.choice((2, 2, 3))
        groups.append(([rng.randint(-9, 9) for _ in range(size)], [rng.choice("+-*") for _ in range(size - 1)]))
    outer = rng.choice("+-*")

    def show(numbers: list[int], ops: list[str]) -> str:
        return " ".join(f"{n} {o}" for n, o in zip(numbers, ops)) + f" {numbers[-1]}"

    question = f"(({show(*groups[0])}) {outer} ({show(*groups[1])})) ="
    steps = [
        _pick(
            rng,
            (
                "Work from the inside out: evaluate each bracket, then combine them.",
                "Brackets come first, and inside a bracket multiplication comes before addition and subtraction.",
                "Let's evaluate the two bracketed parts separately and then combine the results.",
            ),
        )
    ]
    values = []
    for name, (numbers, ops) in zip(("left", "right"), groups):
        steps.append(
            _pick(
                rng,
                ("The {name} bracket is {e}.", "Take the {name} part, {e}.", "Now the {name} bracket: {e}."),
                name=name,
                e=show(numbers, ops),
            )
        )
        value, sub = _flat_steps(numbers, ops, rng)
        steps += sub
        values.append(value)
    result = _apply(values[0], outer, values[1])
    steps.append(
        _pick(
            rng,
            (
                "Combining the two parts: {a} {op} {b} = {c}.",
                "Putting them together, {a} {op} {b} = {c}.",
                "Finally, {a} {op} {b} = {c}.",
            ),
            a=_num(values[0]),
            op=outer,
            b=_num(values[1]),
            c=result,
        )
    )
    return question, str(result), steps, None


# ----------------------------------------------------------------------------- boolean expressions


def _bool_tree(rng: random.Random, depth: int):
    if depth == 0 or rng.random() < 0.25:
        return rng.choice((True, False))
    kind = rng.choice(("not", "and", "or", "and", "or"))
    if kind == "not":
        return ("not", _bool_tree(rng, depth - 1))
    return (kind, _bool_tree(rng, depth - 1), _bool_tree(rng, depth - 1))


def _bool_text(node) -> str:
    if isinstance(node, bool):
        return str(node)
    if node[0] == "not":
        inner = _bool_text(node[1])
        return f"not ( {inner} )" if isinstance(node[1], tuple) and node[1][0] != "not" else f"not {inner}"
    parts = [_bool_text(child) if not isinstance(child, tuple) or child[0] == "not" else f"( {_bool_text(child)} )" for child in node[1:]]
    return f"{parts[0]} {node[0]} {parts[1]}"


def _boolean(rng: random.Random) -> tuple[str, str, list[str], None]:
    tree = _bool_tree(rng, 3)
    while not isinstance(tree, tuple):
        tree = _bool_tree(rng, 3)
    steps = [
        _pick(
            rng,
            (
                "Evaluate the innermost parts first; \"not\" binds tighter than \"and\", which binds tighter than \"or\".",
                "Brackets are evaluated first, and the order of operations is not, then and, then or.",
                "Let's simplify the expression from the inside out.",
            ),
        )
    ]

    def evaluate(node) -> bool:
        if isinstance(node, bool):
            return node
        if node[0] == "not":
            value = evaluate(node[1])
            result = not value
            steps.append(_pick(rng, ("not {a} = {c}.", "Negating, not {a} = {c}.", "Here not {a} = {c}."), a=value, c=result))
            return result
        left, right = evaluate(node[1]), evaluate(node[2])
        result = (left and right) if node[0] == "and" else (left or right)
        steps.append(
            _pick(
                rng,
                ("{a} {op} {b} = {c}.", "Then {a} {op} {b} = {c}.", "This gives {a} {op} {b} = {c}."),
                a=left,
                op=node[0],
                b=right,
                c=result,
            )
        )
        return result

    value = evaluate(tree)
    return f"{_bool_text(tree)} is", str(value), steps, None


# ----------------------------------------------------------------------------- date arithmetic


def _fmt(date: dt.date) -> str:
    return date.strftime("%m/%d/%Y")


def _plural(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"


def _date(rng: random.Random) -> tuple[str, str, list[str], None]:
    start = dt.date(rng.randint(1990, 2030), 1, 1) + dt.timedelta(days=rng.randint(0, 364))
    weeks = rng.random() < 0.3
    amount = rng.randint(1, 6) if weeks else rng.randint(1, 75)
    days = amount * 7 if weeks else amount
    forward = rng.random() < 0.5
    unit = ("week" if amount == 1 else "weeks") if weeks else ("day" if amount == 1 else "days")
    when = f"{amount} {unit} {'from today' if forward else 'ago'}"
    lead = rng.choice(("Today is", "The current date is", "It is"))
    question = f"{lead} {start.strftime('%B')} {start.day}, {start.year}. What is the date {when} in MM/DD/YYYY?"
    steps = [
        _pick(
            rng,
            ("Today is {d} in MM/DD/YYYY.", "In MM/DD/YYYY, today is {d}.", "The starting date is {d}."),
            d=_fmt(start),
        )
    ]
    if weeks:
        steps.append(_pick(rng, ("{w} {u} is {n} days.", "One week has 7 days, so {w} {u} make {n} days."), w=amount, u=unit, n=days))
    current, remaining = start, days
    while remaining > 0:
        if forward:
            next_month = (current.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
            hop = min(remaining, (next_month - current).days)
            target = current + dt.timedelta(days=hop)
        else:
            hop = min(remaining, current.day) if current.day > 1 else 1
            target = current - dt.timedelta(days=hop)
        sign = "forward" if forward else "back"
        steps.append(
            _pick(
                rng,
                (
                    "Going {s} {n} from {a} reaches {b}.",
                    "{N} {s} from {a} is {b}.",
                    "Moving {n} {s} takes us from {a} to {b}.",
                ),
                s=sign,
                n=_plural(hop),
                N=_plural(hop).capitalize(),
                a=_fmt(current),
                b=_fmt(target),
            )
        )
        remaining -= hop
        current = target
    return question, _fmt(current), steps, None


# ----------------------------------------------------------------------------- object tracking

NAMES = ("Alice", "Bob", "Claire", "Dave", "Eve")
COLORS = ("red", "blue", "green", "yellow", "purple", "orange", "white", "black", "pink", "brown")
ITEMS = ("ball", "present", "hat")


def _tracking(rng: random.Random) -> tuple[str, str, list[str], tuple[str, ...]]:
    count = rng.choice((3, 3, 4, 5))
    names = list(NAMES[:count])
    item = rng.choice(ITEMS)
    colors = rng.sample(COLORS, count)
    holding = {name: f"{color} {item}" for name, color in zip(names, colors)}
    swaps = [tuple(rng.sample(names, 2)) for _ in range(rng.randint(count, count + 2))]
    start = ", ".join(f"{n} has {_article(holding[n])} {holding[n]}" for n in names)
    order = ("First", *(["Then"] * (len(swaps) - 2)), "Finally")
    moves = " ".join(f"{w}, {a} and {b} swap their {item}s." for w, (a, b) in zip(order, swaps))
    who = rng.choice(names)
    options = [f"{color} {item}" for color in colors]
    listed = "\n".join(f"({LETTERS[i]}) {option}" for i, option in enumerate(options))
    question = (
        f"{', '.join(names[:-1])}, and {names[-1]} are playing a game. At the start of the game, {start}. "
        f"As the game progresses, pairs of players trade {item}s. {moves} "
        f"At the end of the game, {who} has the\nOptions:\n{listed}"
    )
    steps = [
        _pick(
            rng,
            ("At the start: {s}.", "Initially, {s}.", "We begin with: {s}."),
            s=", ".join(f"{n}: {holding[n]}" for n in names),
        )
    ]
    for a, b in swaps:
        holding[a], holding[b] = holding[b], holding[a]
        steps.append(
            _pick(
                rng,
                (
                    "{a} and {b} swap, so now {s}.",
                    "After {a} and {b} trade: {s}.",
                    "{a} swaps with {b}; the holdings become {s}.",
                ),
                a=a,
                b=b,
                s=", ".join(f"{n}: {holding[n]}" for n in names),
            )
        )
    letter = LETTERS[options.index(holding[who])]
    steps.append(_pick(rng, ("At the end, {w} has the {x}.", "So {w} ends up with the {x}."), w=who, x=holding[who]))
    return question, f"({letter})", steps, tuple(options)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


# ----------------------------------------------------------------------------- logical deduction

THINGS = ("book", "bird", "car", "fruit stand")
PLACES = {"book": "On a shelf", "bird": "On a branch", "car": "In a parking row", "fruit stand": "On a street"}


def _clue_text(clue: tuple, thing: str, count: int) -> str:
    if clue[0] == "abs":
        _, obj, pos = clue
        if pos == 0:
            return f"The {obj} {thing} is the leftmost."
        if pos == count - 1:
            return f"The {obj} {thing} is the rightmost."
        return f"The {obj} {thing} is the {ORDINALS[pos]} from the left."
    _, left, right = clue
    return f"The {left} {thing} is to the left of the {right} {thing}."


def _propagate(objects: list[str], clues: list[tuple], rng: random.Random | None) -> tuple[dict[str, set[int]], list[str]]:
    """Constraint propagation used both to generate (is the puzzle solved?) and to explain."""
    count = len(objects)
    cand = {o: set(range(count)) for o in objects}
    steps: list[str] = []
    fixed: set[str] = set()

    def say(options: tuple[str, ...], **values: object) -> None:
        if rng is not None:
            steps.append(_pick(rng, options, **values))

    changed = True
    while changed:
        changed = False
        for clue in clues:
            if clue[0] == "abs":
                _, obj, pos = clue
                if cand[obj] != {pos}:
                    cand[obj] = {pos}
                    changed = True
            else:
                _, left, right = clue
                new_left = {p for p in cand[left] if p < max(cand[right])}
                new_right = {p for p in cand[right] if p > min(cand[left])}
                if new_left != cand[left] or new_right != cand[right]:
                    cand[left], cand[right] = new_left, new_right
                    changed = True
        for obj in objects:
            if len(cand[obj]) == 1 and obj not in fixed:
                fixed.add(obj)
                (pos,) = cand[obj]
                for other in objects:
                    if other != obj and pos in cand[other]:
                        cand[other].discard(pos)
                        changed = True
                say(
                    (
                        "So the {o} one must be {p} from the left.",
                        "This fixes the {o} one in the {p} position.",
                        "Therefore the {o} one is {p}.",
                    ),
                    o=obj,
                    p=ORDINALS[pos],
                )
        for pos in range(count):
            holders = [o for o in objects if pos in cand[o]]
            if len(holders) == 1 and cand[holders[0]] != {pos}:
                cand[holders[0]] = {pos}
                changed = True
    return cand, steps


def _deduction(rng: random.Random) -> tuple[str, str, list[str], tuple[str, ...]]:
    count = rng.choice((3, 4, 5))
    thing = rng.choice(THINGS)
    objects = rng.sample(COLORS, count)
    order = list(objects)
    rng.shuffle(order)
    position = {o: i for i, o in enumerate(order)}
    clues: list[tuple] = []
    while True:
        cand, _ = _propagate(objects, clues, None)
        if all(len(c) == 1 for c in cand.values()):
            break
        if rng.random() < 0.35:
            obj = rng.choice(objects)
            clue = ("abs", obj, position[obj])
        else:
            a, b = rng.sample(objects, 2)
            clue = ("rel", a, b) if position[a] < position[b] else ("rel", b, a)
        if clue not in clues:
            clues.append(clue)
    asked = rng.randrange(count)
    asked_text = "leftmost" if asked == 0 else "rightmost" if asked == count - 1 else f"{ORDINALS[asked]} from the left"
    listed = "\n".join(f"({LETTERS[i]}) The {o} {thing} is the {asked_text}" for i, o in enumerate(objects))
    question = (
        f"{PLACES[thing]}, there are {count} {thing}s in a fixed order: "
        + ", ".join(f"{_article(o)} {o} {thing}" for o in objects)
        + ". "
        + " ".join(_clue_text(c, thing, count) for c in clues)
        + f"\nOptions:\n{listed}"
    )
    _, reasoning = _propagate(objects, clues, rng)
    steps = [
        _pick(
            rng,
            (
                "Let's place the {t}s one clue at a time.",
                "We combine the clues to pin down each {t}'s position.",
                "Number the positions from the left and apply the clues.",
            ),
            t=thing,
        )
    ]
    steps += reasoning
    steps.append(
        _pick(
            rng,
            ("The order from left to right is: {o}.", "From left to right we get: {o}."),
            o=", ".join(order),
        )
    )
    steps.append(f"The {asked_text} is the {order[asked]} {thing}.")
    return question, f"({LETTERS[objects.index(order[asked])]})", steps, tuple(f"The {o} {thing} is the {asked_text}" for o in objects)


# ----------------------------------------------------------------------------- public API

FAMILIES: dict[str, Callable[[random.Random], tuple[str, str, list[str], tuple[str, ...] | None]]] = {
    "multistep_arithmetic": _arithmetic,
    "boolean_expressions": _boolean,
    "date_arithmetic": _date,
    "object_tracking": _tracking,
    "logical_deduction": _deduction,
}


@dataclass(frozen=True)
class SyntheticSplit:
    """The documented IND/OOD split of the families."""

    in_domain: tuple[str, ...] = IN_DOMAIN
    out_of_domain: tuple[str, ...] = OUT_OF_DOMAIN


def generate_one(family: str, index: int, seed: int = 0) -> RationaleRecord:
    """Problem ``index`` of ``family`` under ``seed``: question, program-written rationale, answer."""
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family '{family}'; choose from {sorted(FAMILIES)}")
    rng = random.Random(f"{family}:{seed}:{index}")
    question, answer, steps, choices = FAMILIES[family](rng)
    return RationaleRecord(
        id=f"{family}-{seed}-{index}",
        question=question,
        rationale="\n".join(steps),
        answer=answer,
        task=family,
        choices=choices,
        description=DESCRIPTIONS[family],
    )


def generate(family: str, count: int, seed: int = 0) -> list[RationaleRecord]:
    """``count`` problems of one family (deterministic in ``seed``)."""
    return [generate_one(family, index, seed) for index in range(count)]


def generate_split(split: str, count_per_family: int, seed: int = 0) -> list[RationaleRecord]:
    """Problems of every family of a split (``ind``, ``ood`` or ``all``), family by family."""
    names = {"ind": IN_DOMAIN, "ood": OUT_OF_DOMAIN, "all": IN_DOMAIN + OUT_OF_DOMAIN}.get(split)
    if names is None:
        raise ValueError(f"split must be 'ind', 'ood' or 'all', got '{split}'")
    return list(itertools.chain.from_iterable(generate(name, count_per_family, seed) for name in names))


def main(argv: list[str] | None = None) -> int:
    """``python -m trl_safedistill.data.synthetic --split ind --count 100 --out ind.jsonl``."""
    parser = argparse.ArgumentParser(prog="python -m trl_safedistill.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--split", default="ind", choices=("ind", "ood", "all"))
    parser.add_argument("--family", action="append", help="one family (repeatable); overrides --split")
    parser.add_argument("--count", type=int, default=100, help="problems per family")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.family:
        records = list(itertools.chain.from_iterable(generate(f, args.count, args.seed) for f in args.family))
    else:
        records = generate_split(args.split, args.count, args.seed)
    print(f"wrote {write_records(args.out, records)} records to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
