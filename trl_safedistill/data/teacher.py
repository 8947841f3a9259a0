"""``trl-safedistill teach``: rationales from an OpenAI-compatible teacher, filtered, resumable.

For each question a few-shot chain-of-thought prompt is sent (per task, exemplars from a records
file, the synthetic generator or the shipped ``bbh-cot`` rationales), ending with the instruction to
finish with the answer phrase (``Therefore, the answer is`` by default, CasCoD's). The completion is
split at the phrase into rationale and answer (:func:`~trl_safedistill.data.answers.extract_answer`)
and kept only when the answer matches the gold answer, CasCoD's answer-consistency filter
(arXiv 2405.19842). Each question gets up to ``n`` samples (sample ``k`` sends ``seed + k``): with
``--keep first`` samples are drawn one after another until one is correct; with ``--keep all`` all
``n`` are drawn and every correct one is kept (record ids ``{id}#{k}``).

Requests run in a thread pool of ``--concurrency`` workers (the bound on requests in flight); each has
a timeout and is retried on timeouts, 429 and 5xx (:mod:`~trl_safedistill.data.openai_client`).
Output is written and flushed record by record and is resumable (:mod:`~trl_safedistill.data.ledger`):
re-running the same command after a kill finishes the job with no record lost or duplicated.

Example (a local ``transformers serve`` teacher)::

    trl-safedistill teach --questions synthetic:all:20 --out rationales.jsonl \\
        --base-url http://127.0.0.1:8000/v1 --model my-teacher --concurrency 8 --n 4 --keep first

Base URL, model and key also come from ``OPENAI_BASE_URL``, ``OPENAI_MODEL`` and ``OPENAI_API_KEY``;
with no model given, a server that serves exactly one model is asked for its name.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..records import RationaleRecord, RecordError, load_jsonl
from .answers import answers_match, extract_answer
from .ledger import STATUSES, Ledger
from .openai_client import ClientConfig, OpenAIClient, RequestFailed
from .questions import Question, load_questions

DEFAULT_ANSWER_PHRASE = "Therefore, the answer is"
COMPLETION_STOP = ["\n\nQ:", "\nQ: "]


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
    backoff: float = 1.0
    max_backoff: float = 30.0
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

    @property
    def sampling_temperature(self) -> float:
        return self.temperature if self.temperature is not None else (0.0 if self.n == 1 else 0.7)


# ----------------------------------------------------------------------------- prompts


def _question_text(question: Question | RationaleRecord) -> str:
    text = question.question
    if question.choices and "(A)" not in text:
        text += "\nOptions:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(question.choices))
    return text


def _instruction(phrase: str) -> str:
    return f'Answer the question. Think step by step, then finish with "{phrase} <answer>."'


def build_messages(question: Question, shots: Sequence[RationaleRecord], answer_phrase: str) -> list[dict[str, str]]:
    """Chat prompt: instruction (and task description) in the first user turn, then one user/assistant
    pair per exemplar, then the question."""
    head = (f"{question.description}\n" if question.description else "") + _instruction(answer_phrase) + "\n\n"
    messages: list[dict[str, str]] = []
    for shot in shots:
        messages.append({"role": "user", "content": ("" if messages else head) + f"Q: {_question_text(shot)}"})
        messages.append({"role": "assistant", "content": f"{shot.rationale}\n{answer_phrase} {shot.answer}."})
    messages.append({"role": "user", "content": ("" if messages else head) + f"Q: {_question_text(question)}"})
    return messages


def build_prompt(question: Question, shots: Sequence[RationaleRecord], answer_phrase: str) -> str:
    """Completion prompt: ``Q: ...\\nA: Let's think step by step.\\n{r}\\n{phrase} {a}.`` per exemplar,
    then the question and ``A: Let's think step by step.``."""
    head = (f"{question.description}\n\n" if question.description else "") + _instruction(answer_phrase) + "\n\n"
    body = "".join(
        f"Q: {_question_text(s)}\nA: Let's think step by step.\n{s.rationale}\n{answer_phrase} {s.answer}.\n\n" for s in shots
    )
    return f"{head}{body}Q: {_question_text(question)}\nA: Let's think step by step.\n"


def load_fewshot(spec: str | None) -> dict[str, list[RationaleRecord]]:
    """Exemplars per task from ``none``, ``synthetic`` (seed 9999, apart from question sets), ``bbh-cot``
    (the shipped training split, correct rows) or a records JSONL file."""
    if spec in (None, "", "none"):
        return {}
    if spec == "synthetic":
        from .synthetic import FAMILIES, generate

        records = [r for family in FAMILIES for r in generate(family, 5, seed=9999)]
    elif spec == "bbh-cot":
        from .bbh_cot import load_bbh_cot

        records = load_bbh_cot("train")
    else:
        records = load_jsonl(spec)
    table: dict[str, list[RationaleRecord]] = {}
    for record in records:
        table.setdefault(record.task, []).append(record)
    return table


def shots_for(question: Question, fewshot: Mapping[str, list[RationaleRecord]], count: int) -> list[RationaleRecord]:
    """The first ``count`` exemplars of the question's task, never the question itself."""
    pool = [r for r in fewshot.get(question.task, []) if r.id != question.id and r.question != question.question]
    return pool[:count]


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
    split = extract_answer(completion, config.answer_phrase)
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


def ask(client: OpenAIClient, question: Question, sample: int, shots: Sequence[RationaleRecord], config: TeacherConfig) -> Attempt:
    """Send one request (with retries) and judge it; a request that keeps failing is a ``failed`` attempt."""
    params: dict[str, Any] = {
        "max_tokens": config.max_tokens,
        "temperature": config.sampling_temperature,
        "seed": config.seed + sample,
        **config.extra_body,
    }
    if config.top_p is not None:
        params["top_p"] = config.top_p
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


def run_teacher(
    questions: Sequence[Question],
    out_path: str | Path,
    config: TeacherConfig,
    fewshot: Mapping[str, list[RationaleRecord]] | None = None,
    *,
    client: OpenAIClient | None = None,
    resume: bool = True,
) -> RunResult:
    """Generate, filter and write rationales for ``questions`` into ``out_path`` (resuming by default)."""
    fewshot = fewshot or {}
    ids = [q.id for q in questions]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise RecordError("questions", None, "id", f"duplicate question id '{duplicate}'")
    client = client or OpenAIClient(
        ClientConfig(config.base_url, config.model, config.api_key, config.timeout, config.retries, config.backoff, config.max_backoff)
    )
    jobs: deque[tuple[Question, int]] = deque()
    with Ledger.open(out_path, resume=resume) as ledger:
        for question in questions:
            if config.keep == "first":
                if not _has_kept(ledger, question, config):
                    sample = _next_sample(ledger, question, config)
                    if sample is not None:
                        jobs.append((question, sample))
            else:
                jobs.extend((question, k) for k in range(config.n) if not ledger.done((question.id, k), retry_failed=config.retry_failed))
        unit_total = len({q.id for q, _ in jobs}) if config.keep == "first" else len(jobs)
        bar = _progress(unit_total, "question" if config.keep == "first" else "request", config.progress)
        requests, errors = 0, Counter()
        kept = sum(1 for status in ledger.status.values() if status == "kept")
        in_flight: dict[Future, tuple[Question, int]] = {}
        pool = ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="teach")
        try:
            while jobs or in_flight:
                while jobs and len(in_flight) < config.concurrency:
                    question, sample = jobs.popleft()
                    shots = shots_for(question, fewshot, config.shots)
                    in_flight[pool.submit(ask, client, question, sample, shots, config)] = (question, sample)
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in finished:
                    question, sample = in_flight.pop(future)
                    attempt = future.result()
                    requests += 1
                    if attempt.error:
                        errors[attempt.error.split(": ", 1)[-1]] += 1
                    ledger.record(
                        (question.id, sample), question.task, attempt.status, attempt.record.to_dict() if attempt.record else None
                    )
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


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-safedistill teach", description=__doc__.split("\n")[0])
    parser.add_argument("--questions", required=True, help="JSONL/JSON file, hub:NAME[:CONFIG[:SPLIT]], bigbench:TASK or synthetic:FAMILY[:N[:SEED]]")
    parser.add_argument("--out", required=True, help="output records JSONL (resumed when it exists)")
    parser.add_argument("--fewshot", default="synthetic", help="exemplars: none, synthetic, bbh-cot or a records JSONL")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--task", action="append", help="keep only this task (repeatable)")
    parser.add_argument("--limit", type=int, help="first N questions only")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"))
    parser.add_argument("--model", default=os.environ.get("OPENAI_MODEL"))
    parser.add_argument("--api-key", default=None, help="default: $OPENAI_API_KEY")
    parser.add_argument("--endpoint", choices=("chat", "completions"), default="chat")
    parser.add_argument("--answer-phrase", default=DEFAULT_ANSWER_PHRASE)
    parser.add_argument("--n", type=int, default=1, help="samples per question")
    parser.add_argument("--keep", choices=("first", "all"), default="first", help="keep the first correct sample or all")
    parser.add_argument("--temperature", type=float, help="default 0 with --n 1, else 0.7")
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0, help="sample k is requested with seed + k")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=5, help="retries per request (timeouts, 429, 5xx)")
    parser.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubled each retry")
    parser.add_argument("--no-retry-failed", action="store_true", help="on resume, do not retry failed attempts")
    parser.add_argument("--restart", action="store_true", help="discard existing output instead of resuming")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    config = TeacherConfig(
        base_url=args.base_url,
        model=args.model,
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY"),
        endpoint=args.endpoint,
        answer_phrase=args.answer_phrase,
        shots=args.shots,
        n=args.n,
        keep=args.keep,
        temperature=args.temperature,
        top_p=args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        retry_failed=not args.no_retry_failed,
        progress=not args.no_progress,
    )
    try:
        questions = load_questions(args.questions, limit=args.limit, tasks=args.task)
        fewshot = load_fewshot(args.fewshot)
    except (RecordError, ValueError) as error:
        print(f"trl-safedistill teach: {error}", file=sys.stderr)
        return 2
    client = OpenAIClient(
        ClientConfig(config.base_url, config.model, config.api_key, config.timeout, config.retries, config.backoff, config.max_backoff)
    )
    if not client.config.model:
        try:
            models = client.list_models()
        except RequestFailed as error:
            print(f"trl-safedistill teach: no --model given and listing models failed: {error}", file=sys.stderr)
            return 2
        if len(models) != 1:
            print(f"trl-safedistill teach: pass --model; the server lists {len(models)} models: {models[:5]}", file=sys.stderr)
            return 2
        client.config.model = config.model = models[0]
    try:
        result = run_teacher(questions, args.out, config, fewshot, client=client, resume=not args.restart)
    except KeyboardInterrupt:
        print("\ninterrupted; run the same command again to resume", file=sys.stderr)
        return 130
    print(format_summary(result.summary), file=sys.stderr)
    totals = result.totals
    print(f"{totals['kept']} records in {args.out} ({result.requests} requests this run)", file=sys.stderr)
    for reason, count in result.errors.most_common(3):
        print(f"  failed x{count}: {reason}", file=sys.stderr)
    return 0 if totals["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
