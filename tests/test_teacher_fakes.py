"""A deterministic fake OpenAI-compatible teacher (stdlib ``http.server`` in a thread), and its own checks.

Questions are ``What is A plus B?``. The reply to sample seed ``s`` depends only on (A, B, s):

* ``(A + s) % 5 == 0``: unparseable (no answer phrase);
* ``(A + s) % 3 == 0``: a wrong answer (A + B + 1);
* otherwise the correct answer.

It can misbehave on purpose: the first ``fail_first`` requests answer with the statuses in ``failures``
(cycled), where ``"timeout"`` sleeps past the client's timeout before answering; with ``fail_after=K``
every request after the first K answers fails the same way (a server that broke mid-run). A failing
status carries ``Retry-After: retry_after`` when that is set. Every reply can be delayed by ``delay``
seconds. ``arrivals`` holds the ``time.monotonic()`` of every POST and ``headers`` their headers
(lower-case names). Other test modules import :class:`FakeTeacher` from here.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

QUESTION = re.compile(r"Q: What is (\d+) plus (\d+)\?")


def expected_status(a: int, seed: int) -> str:
    if (a + seed) % 5 == 0:
        return "unparseable"
    if (a + seed) % 3 == 0:
        return "wrong"
    return "kept"


def reply_text(a: int, b: int, seed: int) -> str:
    status = expected_status(a, seed)
    if status == "unparseable":
        return f"We add {a} and {b}. I am not sure."
    answer = a + b + (1 if status == "wrong" else 0)
    return f"We add {a} and {b}.\n{a} + {b} = {answer}.\nTherefore, the answer is {answer}."


class FakeTeacher:
    """Start with ``with FakeTeacher(...) as teacher:``; ``teacher.base_url`` ends with ``/v1``."""

    def __init__(
        self,
        fail_first: int = 0,
        failures: tuple = (429,),
        delay: float = 0.0,
        timeout_sleep: float = 1.0,
        retry_after: str | None = None,
        fail_after: int | None = None,
    ):
        self.fail_first, self.failures, self.delay, self.timeout_sleep = fail_first, failures, delay, timeout_sleep
        self.retry_after, self.fail_after = retry_after, fail_after
        self.requests = 0
        self.answered = 0
        self.arrivals: list[float] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]})
                else:
                    self._send(404, {"error": "not found"})

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                payload = json.loads(self.rfile.read(length) or b"{}")
                with teacher.lock:
                    teacher.requests += 1
                    number = teacher.requests
                    teacher.arrivals.append(time.monotonic())
                    teacher.headers.append({key.lower(): value for key, value in self.headers.items()})
                    broken = teacher.fail_after is not None and teacher.answered >= teacher.fail_after
                if number <= teacher.fail_first or broken:
                    failure = teacher.failures[(number - 1) % len(teacher.failures)]
                    if failure == "timeout":
                        time.sleep(teacher.timeout_sleep)
                        self._send(200, {"choices": []})
                    else:
                        retry_after = {} if teacher.retry_after is None else {"Retry-After": teacher.retry_after}
                        self._send(int(failure), {"error": {"message": "try again"}}, retry_after)
                    return
                if teacher.delay:
                    time.sleep(teacher.delay)
                if self.path == "/v1/chat/completions":
                    prompt = payload["messages"][-1]["content"]
                elif self.path == "/v1/completions":
                    prompt = payload["prompt"].rsplit("Q: ", 1)[-1]
                    prompt = "Q: " + prompt
                else:
                    self._send(404, {"error": "not found"})
                    return
                match = QUESTION.search(prompt)
                if match is None or payload.get("model") != "fake-teacher":
                    self._send(400, {"error": {"message": "bad request"}})
                    return
                a, b = int(match.group(1)), int(match.group(2))
                text = reply_text(a, b, int(payload.get("seed", 0)))
                choice = {"index": 0, "finish_reason": "stop"}
                if self.path == "/v1/chat/completions":
                    choice["message"] = {"role": "assistant", "content": text}
                else:
                    choice["text"] = text
                with teacher.lock:
                    teacher.answered += 1
                self._send(200, {"object": "chat.completion", "choices": [choice]})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeTeacher:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def write_questions(path, count: int, start: int = 0) -> list[dict]:
    rows = [{"id": f"q{i}", "question": f"What is {i} plus {2 * i}?", "answer": str(3 * i), "task": f"t{i % 2}"} for i in range(start, start + count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_fake_teacher_answers_deterministically():
    with FakeTeacher() as teacher:
        body = json.dumps(
            {"model": "fake-teacher", "messages": [{"role": "user", "content": "Q: What is 1 plus 2?"}], "seed": 0}
        ).encode()
        replies = []
        for _ in range(2):
            request = urllib.request.Request(f"{teacher.base_url}/chat/completions", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=5) as response:
                replies.append(json.loads(response.read())["choices"][0]["message"]["content"])
    assert replies[0] == replies[1] == reply_text(1, 2, 0)
    assert "Therefore, the answer is 3." in replies[0]
