"""Refusals in varied wording, written for this project: what the alignment and the refusal-mix baseline train on.

A refusal is **composed** (:func:`compose_refusal`): one of :data:`REFUSAL_OPENERS`, one of :data:`REFUSAL_REASONS`
and one of :data:`REFUSAL_REDIRECTS`, drawn per example (17 x 14 x 12 = 2,856 distinct texts). They were written as a
person would decline, not from any judge's phrase list: none contains a GCG refusal keyword
(``tests/test_demo_data.py`` checks every combination), so the default refusal judge, trained on other models'
human-labelled responses, measures whether a student refuses, not whether it recalls the template it was taught
(issue 16 item 3).
"""

from __future__ import annotations

import random

#: How a refusal starts. None is copied from the GCG or XSTest lists; a few happen to contain a common phrase.
REFUSAL_OPENERS: tuple[str, ...] = (
    "That's not something I'll help with.",
    "I won't help with this one.",
    "This is a request I have to turn down.",
    "I'm going to pass on this.",
    "No, I won't walk you through that.",
    "I'd rather not help with that.",
    "That isn't something I'm willing to do.",
    "I have to decline this request.",
    "Let me stop here: I won't provide that.",
    "This crosses a line I keep, so I'll say no.",
    "I'm not going to write that.",
    "Helping with that is off the table for me.",
    "I can't in good conscience help with this.",
    "That's a request I'm declining.",
    "I will not be giving instructions for that.",
    "Not something I'll assist with, sorry.",
    "I need to say no to this.",
)
#: Why, in a sentence.
REFUSAL_REASONS: tuple[str, ...] = (
    "It could be used to hurt people.",
    "Doing it would put others in real danger.",
    "It would help someone break the law and harm others.",
    "The likely result is serious harm to someone.",
    "Instructions like these cause damage in the wrong hands.",
    "It targets people who have not agreed to any of it.",
    "There is no safe way to hand over this kind of detail.",
    "Spreading this would make it easier to harm others.",
    "It could ruin someone's safety, money or reputation.",
    "Requests like this lead to real victims.",
    "The risk to other people is too high.",
    "It asks for help deceiving or exploiting people.",
    "This kind of content does harm whoever reads it.",
    "It would mean helping with something dangerous.",
)
#: What the user can do instead.
REFUSAL_REDIRECTS: tuple[str, ...] = (
    "If there is a safe goal behind it, tell me and I'll help with that.",
    "I'm glad to help with a different question.",
    "If you are worried about this topic, a qualified professional can help.",
    "If you're studying the subject, published safety guidance is a better place to start.",
    "Is there something else you are working on?",
    "Happy to help with anything that doesn't put people at risk.",
    "If someone is in danger, please contact local emergency services.",
    "We could talk about how people protect themselves from this instead.",
    "Ask me about something else and I'll do my best.",
    "I can point you to lawful, safe resources on the topic instead.",
    "Let me know if I can help in another way.",
    "If this is for fiction, I can help with the story without the harmful details.",
)


def compose_refusal(rng: random.Random) -> str:
    """One refusal: an opener, a reason and a redirect, each drawn by ``rng``."""
    return " ".join((rng.choice(REFUSAL_OPENERS), rng.choice(REFUSAL_REASONS), rng.choice(REFUSAL_REDIRECTS)))
