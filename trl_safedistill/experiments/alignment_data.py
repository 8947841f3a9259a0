"""The safety-alignment data: refusals in varied wording to harmful prompts, helpful answers to benign ones.

Written for this project (no third-party text beyond the prompts themselves):

* Refusals are **composed** (:func:`trl_safedistill.data.refusal_text.compose_refusal`, shared with the refusal-mix
  baseline): an opener, a reason and a redirect drawn per example (17 x 14 x 12 = 2,856 distinct texts), written as
  a person would decline, not from any judge's phrase list, so the refusal judge (trained on other models'
  human-labelled responses) measures whether the student refuses, not whether it recalls a template.
* Harmful prompts: the ``align`` parts of AdvBench, HarmBench and Do-Not-Answer
  (:func:`trl_safedistill.data.offline.protocol_splits`), round-robin over the sources; disjoint from every
  calibration and test prompt after near-duplicate removal.
* Benign answers (:func:`alignment_pairs`' ``benign``): round-robin over (a) the ``align`` parts of the benign
  look-alikes and imperatives, answered by the base model itself (a refusal-free self-distillation: the answers the
  student already gives, kept when not degenerate and not a refusal by the ``refusal-rule`` judge) and (b)
  :data:`BENIGN_QA`. Without look-alikes and imperatives among them, an aligned model learns to refuse by trigger
  word or by sentence form. No yes/no question is among them, so the protocol's yes/no set tests a form the
  alignment never showed (until 2026-12 BIG-bench ``strategyqa`` questions and answers were a third source).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..data.refusal_text import compose_refusal

BENIGN_QA: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are there in a leap year?", "A leap year has 366 days."),
    ("What is 12 multiplied by 8?", "12 multiplied by 8 is 96."),
    ("How do I boil an egg?", "Place the egg in boiling water for about 9 minutes, then cool it in cold water and peel it."),
    ("What gas do plants absorb from the air?", "Plants absorb carbon dioxide from the air and release oxygen."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'joyful'."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level."),
    ("How do I convert kilometers to miles?", "Multiply the distance in kilometers by 0.621 to get miles."),
    ("Who wrote 'Romeo and Juliet'?", "William Shakespeare wrote 'Romeo and Juliet'."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("Suggest a name for a pet goldfish.", "How about 'Bubbles'? It is a classic, friendly name for a goldfish."),
    ("How can I improve my sleep?", "Keep a regular schedule, avoid screens before bed, and keep your bedroom dark and cool."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("Translate 'thank you' into Spanish.", "'Thank you' in Spanish is 'gracias'."),
    ("How do I make a cup of tea?", "Boil water, pour it over a tea bag in a cup, steep for 3 to 5 minutes, then remove the bag."),
    ("What is photosynthesis?", "Photosynthesis is how plants use sunlight, water and carbon dioxide to make sugar and oxygen."),
    ("Name three primary colors.", "Red, blue and yellow are the traditional primary colors."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("Write a short greeting for a birthday card.", "Happy birthday! Wishing you a year full of joy, laughter and good friends."),
    ("How do I calculate the area of a rectangle?", "Multiply its length by its width."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean."),
    ("How do I keep houseplants healthy?", "Give them the right amount of light, water them when the soil is dry, and use pots with drainage."),
    ("What is the plural of 'mouse'?", "The plural of 'mouse' is 'mice'."),
    ("How many minutes are in two hours?", "There are 120 minutes in two hours."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("Give me a tip for learning a new language.", "Practice a little every day, for example by reading short texts and speaking aloud."),
    ("What is 15 percent of 200?", "15 percent of 200 is 30."),
    ("How do I tie a simple knot?", "Make a loop, pass the end of the rope through it, and pull both ends tight."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the main ingredient of guacamole?", "The main ingredient of guacamole is avocado."),
    ("How far is the Moon from Earth?", "The Moon is about 384,000 kilometers from Earth on average."),
    ("What is a haiku?", "A haiku is a short poem of three lines with five, seven and five syllables."),
    ("How do I sort a list of numbers in Python?", "Use sorted(numbers) for a new list, or numbers.sort() to sort it in place."),
    ("What is the tallest mountain on Earth?", "Mount Everest is the tallest mountain above sea level."),
    ("Recommend a healthy breakfast.", "Oatmeal with fruit and a handful of nuts is a healthy breakfast."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What language is spoken in Brazil?", "Portuguese is the main language spoken in Brazil."),
    ("How do I clean a cast-iron pan?", "Rinse it with hot water, scrub gently, dry it fully and rub in a thin layer of oil."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometers per second in a vacuum."),
    ("Summarize the water cycle in one sentence.", "Water evaporates, condenses into clouds, falls as precipitation and collects again."),
    ("What is the opposite of 'ancient'?", "The opposite of 'ancient' is 'modern'."),
    ("How do I write a good email subject line?", "Keep it short and specific, and say what the email is about or what you need."),
    ("What is 100 divided by 4?", "100 divided by 4 is 25."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("How can I save money on groceries?", "Plan meals, shop with a list, compare unit prices and buy seasonal produce."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Explain what a noun is.", "A noun is a word that names a person, place, thing or idea, such as 'teacher' or 'city'."),
    ("How many bones are in the adult human body?", "An adult human body has 206 bones."),
    ("What should I pack for a day hike?", "Water, snacks, sunscreen, a map, a light jacket and comfortable shoes."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("How do I stretch my back safely?", "Try gentle stretches such as knee-to-chest and cat-cow, moving slowly and without pain."),
    ("What is the past tense of 'run'?", "The past tense of 'run' is 'ran'."),
    ("How many hours are in a week?", "There are 168 hours in a week."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid."),
    ("Give me an idea for a weekend activity with kids.", "Have a picnic in a park and bring a ball or a kite to play with."),
    ("What is the currency of the United Kingdom?", "The currency of the United Kingdom is the pound sterling."),
    ("How do I find the average of three numbers?", "Add the three numbers and divide the sum by 3."),
    ("Why is the sky blue?", "Air molecules scatter blue sunlight more than red light, so the sky looks blue."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 whose only divisors are 1 and itself, like 7."),
    ("How do I remove a coffee stain from a shirt?", "Rinse it with cold water, apply a little liquid detergent, let it sit, then wash as usual."),
    ("Name a famous composer.", "Ludwig van Beethoven is a famous composer."),
)


def alignment_pairs(
    harmful: Sequence[Sequence[str]],
    n_harmful: int,
    n_benign: int,
    seed: int = 0,
    benign: Sequence[Sequence[tuple[str, str]]] = (),
) -> list[dict[str, str]]:
    """``n_harmful`` (prompt, composed refusal) and ``n_benign`` (benign prompt, answer) pairs, shuffled.

    ``harmful`` holds one prompt list per source and ``benign`` one ``(question, answer)`` list per source; each
    kind is drawn round-robin over its sources (so a small source such as the look-alikes is not drowned by a large
    one), cycling a source when it runs out (a cycled harmful prompt gets a freshly composed refusal).
    :data:`BENIGN_QA` is always one of the benign sources. Rows: ``{"prompt", "completion", "kind"}``.
    """
    harmful = [list(source) for source in harmful if source]
    benign_sources = [list(BENIGN_QA)] + [list(source) for source in benign if source]
    if n_harmful and not harmful:
        raise ValueError("alignment needs harmful prompts (the protocol's 'align' parts)")
    rng = random.Random(seed)
    rows = []
    for i in range(n_harmful):
        source = harmful[i % len(harmful)]
        rows.append({"prompt": source[(i // len(harmful)) % len(source)], "completion": compose_refusal(rng), "kind": "refusal"})
    for i in range(n_benign):
        source = benign_sources[i % len(benign_sources)]
        question, answer = source[(i // len(benign_sources)) % len(source)]
        rows.append({"prompt": question, "completion": answer, "kind": "benign"})
    rng.shuffle(rows)
    return rows


def conversational(rows: Sequence[dict[str, str]]) -> list[dict[str, list[dict[str, str]]]]:
    """TRL conversational prompt-completion rows (completion-only loss under the chat template)."""
    return [
        {"prompt": [{"role": "user", "content": r["prompt"]}], "completion": [{"role": "assistant", "content": r["completion"]}]}
        for r in rows
    ]
