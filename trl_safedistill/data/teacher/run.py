"""The teach run loop: requests in a bounded pool, the answer filter, resumable output, summary, fail-fast.

Each question gets up to ``n`` samples (sample ``k`` sends ``seed + k``): with ``keep="first"`` samples
are drawn one after another until one is correct; with ``keep="all"`` all ``n`` are drawn and every
correct one is kept (record ids ``{id}#{k}``). A completion is split at the answer phrase into rationale
and answer (:func:`~trl_safedistill.answers.split_completion`) and kept only when the answer matches
the gold one, CasCoD's answer-consistency filter (arXiv 2405.19842).

Requests run in a thread pool of ``concurrency`` workers (the bound on requests in flight) through one
:class:`~trl_safedistill.data.openai_client.TeacherClient` (the ``openai`` SDK: timeouts, retries,
``Retry-After``). Every finished attempt is written and flushed at once
(:mod:`~trl_safedistill.data.ledger`), so a run killed at any point and started again loses and
duplicates nothing.

A dead server must not cost hours: before the first request one ``GET /models`` without retries checks
that something answers at the base URL, and after ``max_consecutive_failures`` requests in a row have
failed (each after all its retries) no new request is sent; the requests in flight finish and are
written, then :class:`TeacherStopped` says what failed and how much is done. Either way everything
written stays, and the same command resumes.
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...answers import DEFAULT_ANSWER_PHRASE, answers_match, split_completion
from ...records import RationaleRecord, RecordError
from ..ledger import STATUSES, Ledger
from ..openai_client import ClientConfig, RequestFailed, TeacherClient
from ..questions import Question
from .prompts import COMPLETION_STOP, build_messages, build_prompt, shots_for


@dataclass
class TeacherConfig:
    """Everything a teach run needs besides the questions and the output path."""

    base_url: str = "http://127.0.0.1:8000/v1"
    model: str | None = None
    api_key: str | None = None
    endpoint: str = "chat"  # "chat" -> /v1/chat/completions, "completions" -> /v1/completions
    answer_phrase: str = DEFAULT_ANSWER_PHRASE
    shots: int = 3
    n: int = 1
    keep: str = "first"  # "first" correct sample, or "all" correct samples
    temperature: float | None = None  # None: 0 when n == 1, else 0.7
    top_p: float | None = None
    max_tokens: int = 512
    seed: int = 0
    concurrency: int = 8
    timeout: float = 120.0
    retries: int = 5
    #: stop after this many requests in a row failed (after their retries); 0 never stops
    max_consecutive_failures: int = 5
    retry_failed: bool = True
    progress: bool = True
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.endpoint not in ("chat", "completions"):
            raise ValueError(f"endpoint must be 'chat' or 'completions', got '{self.endpoint}'")
        if self.keep not in ("first", "all"):
            raise ValueError(f"keep must be 'first' or 'all', got '{self.keep}'")
        if self.n < 1 or self.concurrency < 1 or self.shots < 0 or self.max_tokens < 1:
            raise ValueError("n, concurrency and max_tokens must be >= 1 and shots >= 0")
        if self.retries < 0 or self.max_consecutive_failures < 0:
            raise ValueError("retries and max_consecutive_failures must be >= 0")

    @property
    def sampling_temperature(self) -> float:
        return self.temperature if self.temperature is not None else (0.0 if self.n == 1 else 0.7)

    def client_config(self) -> ClientConfig:
        return ClientConfig(self.base_url, self.model, self.api_key, self.timeout, self.retries)


class TeacherStopped(RuntimeError):
    """The run stopped early because the teacher is unreachable or keeps failing; the message is one line
    (server, what failed, how much is done) and everything written so far is kept and resumable."""


# ----------------------------------------------------------------------------- one attempt


@dataclass(frozen=True)
class Attempt:
    """The outcome of one (question, sample) request."""

    question: Question
    sample: int
    status: str
    record: RationaleRecord | None = None
    error: str | None = None


def judge(question: Question, sample: int, completion: str, config: TeacherConfig) -> Attempt:
    """Apply the answer-consistency filter to one completion."""
    split = split_completion(completion, config.answer_phrase)
    if split is None or not split[0].strip():
        return Attempt(question, sample, "unparseable")
    rationale, answer = split
    if not answers_match(answer, question.gold, question.choices):
        return Attempt(question, sample, "wrong")
    record_id = question.id if config.keep == "first" or config.n == 1 else f"{question.id}#{sample}"
    record = RationaleRecord(
        id=record_id,
        question=question.question,
        rationale=rationale.strip(),
        answer=answer,
        task=question.task,
        choices=question.choices,
        description=question.description,
    )
    return Attempt(question, sample, "kept", record)


def ask(client: TeacherClient, question: Question, sample: int, shots: Sequence[RationaleRecord], config: TeacherConfig) -> Attempt:
    """Send one request (the client retries) and judge it; a request that keeps failing is a ``failed`` attempt."""
    params: dict[str, Any] = {
        "max_tokens": config.max_tokens,
        "temperature": config.sampling_temperature,
        "seed": config.seed + sample,
    }
    if config.top_p is not None:
        params["top_p"] = config.top_p
    if config.extra_body:
        params["extra_body"] = dict(config.extra_body)
    try:
        if config.endpoint == "chat":
            text = client.chat(build_messages(question, shots, config.answer_phrase), **params)
        else:
            text = client.complete(build_prompt(question, shots, config.answer_phrase), stop=COMPLETION_STOP, **params)
    except RequestFailed as error:
        return Attempt(question, sample, "failed", error=str(error))
    return judge(question, sample, text, config)


# ----------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    """What a run did: per-task final status counts (over all runs on this output) and this run's work."""

    summary: dict[str, Counter]
    requests: int
    errors: Counter

    @property
    def totals(self) -> Counter:
        total: Counter = Counter()
        for counts in self.summary.values():
            total.update(counts)
        return total


def _next_sample(ledger: Ledger, question: Question, config: TeacherConfig, after: int = -1) -> int | None:
    for sample in range(after + 1, config.n):
        if not ledger.done((question.id, sample), retry_failed=config.retry_failed):
            return sample
    return None


def _has_kept(ledger: Ledger, question: Question, config: TeacherConfig) -> bool:
    return any(ledger.status.get((question.id, k)) == "kept" for k in range(config.n))


def _question_done(ledger: Ledger, question: Question, config: TeacherConfig) -> bool:
    """Whether a question needs no further request (what a resumed run would skip)."""
    if config.keep == "first":
        return _has_kept(ledger, question, config) or _next_sample(ledger, question, config) is None
    return all(ledger.done((question.id, k), retry_failed=config.retry_failed) for k in range(config.n))


def _reason(error: str) -> str:
    """A failure without its URL prefix (``http://h/v1/chat/completions: HTTP 503 ...`` -> ``HTTP 503 ...``)."""
    return error.split(": ", 1)[-1]


def _stopped(what: str, ledger: Ledger, questions: Sequence[Question], config: TeacherConfig) -> TeacherStopped:
    done = sum(_question_done(ledger, q, config) for q in questions)
    kept = sum(1 for status in ledger.status.values() if status == "kept")
    return TeacherStopped(
        f"{what}; {done} of {len(questions)} questions done, {kept} record{'' if kept == 1 else 's'} kept in {ledger.out_path}; "
        "run the same command again to resume once the server answers"
    )


def served_model(client: TeacherClient) -> str:
    """The one model the server lists, for a run given no model; ``ValueError`` when it lists none or several."""
    try:
        models = client.list_models()
    except RequestFailed as error:
        raise ValueError(f"no model given and listing the server's models failed: {error}") from None
    if len(models) != 1:
        raise ValueError(f"no model given and the server lists {len(models)} models {models[:5]}; name one (--model)")
    return models[0]


def run_teacher(
    questions: Sequence[Question],
    out_path: str | Path,
    config: TeacherConfig,
    fewshot: Mapping[str, list[RationaleRecord]] | None = None,
    *,
    client: TeacherClient | None = None,
    resume: bool = True,
) -> RunResult:
    """Generate, filter and write rationales for ``questions`` into ``out_path`` (resuming by default).

    With no model in ``config`` or ``client``, the server's only model is used (:func:`served_model`).
    Raises :class:`TeacherStopped` when the server is unreachable or ``config.max_consecutive_failures``
    requests in a row failed; what was written stays.
    """
    fewshot = fewshot or {}
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise RecordError("questions", None, "id", f"duplicate question id '{duplicate}'")
    own_client = client is None
    client = client or TeacherClient(config.client_config())
    try:
        with Ledger.open(out_path, resume=resume) as ledger:
            return _run(questions, ledger, config, fewshot, client)
    finally:
        if own_client:
            client.close()


def _run(
    questions: Sequence[Question],
    ledger: Ledger,
    config: TeacherConfig,
    fewshot: Mapping[str, list[RationaleRecord]],
    client: TeacherClient,
) -> RunResult:
    jobs: deque[tuple[Question, int]] = deque()
    for question in questions:
        if config.keep == "first":
            if not _has_kept(ledger, question, config):
                sample = _next_sample(ledger, question, config)
                if sample is not None:
                    jobs.append((question, sample))
        else:
            jobs.extend((question, k) for k in range(config.n) if not ledger.done((question.id, k), retry_failed=config.retry_failed))
    if jobs:
        try:
            client.check_reachable()
        except RequestFailed as error:
            raise _stopped(f"no server answers at {client.base_url} ({_reason(str(error))})", ledger, questions, config) from None
        if not client.config.model:
            client.config.model = served_model(client)
    unit_total = len({q.id for q, _ in jobs}) if config.keep == "first" else len(jobs)
    bar = _progress(unit_total, "question" if config.keep == "first" else "request", config.progress)
    requests, errors = 0, Counter()
    kept = sum(1 for status in ledger.status.values() if status == "kept")
    consecutive_failures, last_error = 0, ""
    stopping = False
    in_flight: dict[Future, tuple[Question, int]] = {}
    pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="teach")
    try:
        while (jobs and not stopping) or in_flight:
            while jobs and not stopping and len(in_flight) < config.concurrency:
                question, sample = jobs.popleft()
                shots = shots_for(question, fewshot, config.shots)
                in_flight[pool.submit(ask, client, question, sample, shots, config)] = (question, sample)
            finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
            for future in finished:
                question, sample = in_flight.pop(future)
                attempt = future.result()
                requests += 1
                if attempt.error:
                    errors[_reason(attempt.error)] += 1
                    consecutive_failures, last_error = consecutive_failures + 1, attempt.error
                    stopping = stopping or 0 < config.max_consecutive_failures <= consecutive_failures
                else:
                    consecutive_failures = 0
                ledger.record((question.id, sample), question.task, attempt.status, attempt.record.to_dict() if attempt.record else None)
                follow = None
                if config.keep == "first" and attempt.status != "kept":
                    follow = _next_sample(ledger, question, config, after=sample)
                if follow is not None:
                    jobs.appendleft((question, follow))
                else:
                    bar.update(1)
                kept += attempt.status == "kept"
                bar.set_postfix(kept=kept, failed=sum(errors.values()), refresh=False)
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        bar.close()
        raise
    pool.shutdown(wait=True)
    bar.close()
    if stopping:
        what = f"stopped after {consecutive_failures} requests in a row failed at {client.base_url} (last: {_reason(last_error)})"
        raise _stopped(what, ledger, questions, config)
    return RunResult(ledger.summary(), requests, errors)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, unit: str, enabled: bool):
    """A tqdm bar on stderr (rate and ETA), or a no-op."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc="teach", file=sys.stderr, dynamic_ncols=True)


def format_summary(summary: Mapping[str, Counter]) -> str:
    """The per-task table: kept / wrong / unparseable / failed attempts."""
    width = max([len("task"), *(len(t) for t in summary)]) + 2
    lines = [f"{'task':<{width}}" + "".join(f"{s:>13}" for s in STATUSES)]
    total: Counter = Counter()
    for task in sorted(summary):
        total.update(summary[task])
        lines.append(f"{task:<{width}}" + "".join(f"{summary[task][s]:>13}" for s in STATUSES))
    lines.append(f"{'total':<{width}}" + "".join(f"{total[s]:>13}" for s in STATUSES))
    return "\n".join(lines)
