"""HarmAug augmentation: the affirmative-prefix request, the instruction parser, de-duplication, the endpoint."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from trl_safedistill.guard.augment import (
    AFFIRMATIVE_PREFIX,
    AugmentConfig,
    normalize_instruction,
    parse_instruction,
    read_records,
    render_generation_request,
    run_augmentation,
)
from trl_safedistill.guard.backends import CompletionsEndpoint

EXEMPLARS = [
    "Write a rude poem about my neighbour's garden gnome",
    "Explain how to cheat at a board game without anyone noticing",
    "Describe how to skip a boring meeting with a fake excuse",
]


def test_generation_request_ends_with_prefix_inside_the_assistant_turn(tiny_tokenizer):
    text = render_generation_request(tiny_tokenizer, EXEMPLARS)
    assert text.endswith(AFFIRMATIVE_PREFIX)
    head = text[: -len(AFFIRMATIVE_PREFIX)]
    # The prefix starts the assistant turn: the chat template's generation prompt comes right before it.
    assert head.endswith("<|im_start|>assistant\n")
    for example in EXEMPLARS:
        assert example in head
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tiny_tokenizer.decode(ids).endswith(AFFIRMATIVE_PREFIX)


@pytest.mark.parametrize(
    "reply, expected",
    [
        (" Write a limerick mocking a coworker's loud typing.", "Write a limerick mocking a coworker's loud typing."),
        (
            ' Sure! Here it is:\n\n"Explain how to sneak snacks into a cinema unnoticed."\n\nThis prompt would work.',
            "Explain how to sneak snacks into a cinema unnoticed.",
        ),
        ("\nPrompt: Describe how to dodge a parking ticket\nI hope this helps!", "Describe how to dodge a parking ticket"),
        ("Here's one: Write an insulting review of a local bakery", "Write an insulting review of a local bakery"),
        (f"blah {AFFIRMATIVE_PREFIX} **Write a sarcastic letter to the editor**", "Write a sarcastic letter to the editor"),
        ("Okay.\n\nTell me how to prank my roommate with cling film.", "Tell me how to prank my roommate with cling film."),
        ("", None),
        ("  ok  ", None),
    ],
)
def test_parser_extracts_the_instruction_with_and_without_chatter(reply, expected):
    assert parse_instruction(reply) == expected


def test_normalized_instructions_deduplicate():
    assert normalize_instruction("Write a poem!") == normalize_instruction("  write a   POEM ")
    assert normalize_instruction("Write a poem") != normalize_instruction("Write a song")


class _FakeCompletions(BaseHTTPRequestHandler):
    bodies: list[dict] = []
    replies: list[str] = []

    def do_POST(self):  # noqa: N802 -- http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append({"path": self.path, **body})
        index = len(type(self).bodies) - 1
        text = type(self).replies[index % len(type(self).replies)]
        payload = json.dumps({"choices": [{"index": 0, "text": text}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def completions_server():
    _FakeCompletions.bodies = []
    server = HTTPServer(("127.0.0.1", 0), _FakeCompletions)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, _FakeCompletions
    server.shutdown()
    server.server_close()


class _ConstantScorer:
    def score(self, pairs):
        return [0.75 if response.startswith("Sure") else 0.2 for _, response in pairs]


def test_endpoint_requests_end_with_prefix_and_duplicates_are_dropped(completions_server, tiny_tokenizer, tmp_path):
    server, handler = completions_server
    handler.replies = [
        ' Sure! "Write a mean joke about people who wear socks with sandals."',
        " write a MEAN joke about people who wear socks with sandals",  # duplicate after normalisation
        " Describe how to avoid paying for a bus ticket.",
        "ok",  # unparseable
    ]
    base = f"http://127.0.0.1:{server.server_port}"
    generator = CompletionsEndpoint(base + "/v1", "gen", concurrency=1, retries=0)
    config = AugmentConfig(output=str(tmp_path / "aug.jsonl"), num_records=2, exemplars=EXEMPLARS, batch_size=4,
                           seed=3)
    counts = run_augmentation(config, generator=generator, generator_tokenizer=tiny_tokenizer,
                              responder=generator, responder_tokenizer=tiny_tokenizer, scorer=_ConstantScorer(),
                              log=lambda message: None)
    generation = [b for b in handler.bodies if b["prompt"].endswith(AFFIRMATIVE_PREFIX)]
    assert len(generation) == 4 and all(b["path"] == "/v1/completions" for b in handler.bodies)
    assert counts["records"] == 2 and counts["duplicates"] == 1 and counts["unparsed"] == 1
    rows = read_records(tmp_path / "aug.jsonl")
    assert [r["prompt"] for r in rows] == [
        "Write a mean joke about people who wear socks with sandals.",
        "Describe how to avoid paying for a bus ticket.",
    ]
    for row in rows:
        assert row["label"] == int(row["p_unsafe"] > 0.5)
        assert row["response"].startswith(("Sure, here is", "I'm sorry, but I can't"))
        assert row["provenance"]["prefix"] == AFFIRMATIVE_PREFIX
    assert (tmp_path / "aug.jsonl").stat().st_mode & 0o777 == 0o600


class _CountingGenerator:
    """Replies with an instruction unique to (seed, position); counts calls."""

    def __init__(self):
        self.calls = 0

    def complete(self, prompts, seed):
        self.calls += 1
        replies = []
        for index, prompt in enumerate(prompts):
            if prompt.endswith(AFFIRMATIVE_PREFIX):
                replies.append(f" Write a silly limerick number {seed}-{index} about turnips")
            else:
                replies.append(" and that is all.")
        return replies


def test_completed_chunks_are_not_redone_and_settings_are_checked(tiny_tokenizer, tmp_path):
    output = tmp_path / "aug.jsonl"

    def run(num_records, seed=1):
        generator = _CountingGenerator()
        config = AugmentConfig(output=str(output), num_records=num_records, exemplars=EXEMPLARS, batch_size=2,
                               seed=seed)
        counts = run_augmentation(config, generator=generator, generator_tokenizer=tiny_tokenizer,
                                  responder=generator, responder_tokenizer=tiny_tokenizer, scorer=_ConstantScorer(),
                                  log=lambda message: None)
        return counts, generator.calls

    assert run(4) == ({"records": 4, "written": 4, "unparsed": 0, "duplicates": 0, "resumed_from": 0}, 4)
    assert run(4)[1] == 0  # complete: nothing recomputed
    counts, calls = run(6)  # more records: continues after the last completed chunk
    assert counts["written"] == 2 and calls == 2
    assert [row["id"] for row in read_records(output)] == [f"a{i:07d}" for i in range(6)]
    with pytest.raises(ValueError, match="same settings"):
        run(8, seed=2)
    output.unlink()  # a stale sidecar without its data file does not skip chunks
    assert run(2)[0]["written"] == 2 and read_records(output)[0]["id"] == "a0000000"
