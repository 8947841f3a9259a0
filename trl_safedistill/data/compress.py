"""``trl-safedistill compress``: TokenSkip-style rationale compression (Xia et al., arXiv 2502.12067).

Every rationale token gets an importance score; the most important ones are kept until a fraction
``g`` of the rationale's tokens is reached, in their original order. Scorers:

* ``self-info`` (default, offline): the self-information of each token under a causal LM,
  ``I(x_t) = -log p(x_t | c, x_<t)``, where ``c`` is the question (``Q: {question}\\nA:``) and the
  LM is by default the student itself (Selective Context, Li et al. 2023; TokenSkip's offline
  alternative). A surprising token carries information; a predictable one can be dropped.
* ``llmlingua2``: LLMLingua-2's token classifier (Pan et al. 2024, TokenSkip's choice), the
  probability of the "preserve" label, when the ``llmlingua`` package and its model are available.

Units (this project's choice): ``word`` (default) keeps or drops whole whitespace-separated words,
scored by the mean importance of their tokens (as LLMLingua-2 averages over a word's sub-tokens), so
the result stays readable; ``token`` keeps or drops single tokens. The budget is
``B = round(g * N)`` of the rationale's ``N`` tokens (the scorer's tokenizer); units are taken by
descending importance while they fit in ``B``. Protected units are always kept, even past the
budget: anything containing a digit or an operator (``+ - * / = < > × ÷ ^ %``), single capital letters
(variables, option letters), and words of the final answer. The answer sentence itself is never part of the compressed text.

Output: one JSONL line per record, the record plus ``compressed`` ({``"0.5"``: text, ...}) and
``tokens`` (re-tokenized length at each ratio, ``"1"`` = original), read by
:func:`trl_safedistill.formats.compressed.load_compressed` for the ``compressed`` training format. A
report is printed and written to ``OUT.report.json`` (read by ``trl-safedistill eval
--compression-stats``): ``records``; ``tokenizer`` (the scorer's, which every count below uses);
``ratios`` (requested); ``tokens_per_rationale`` (key ``ratio_key(g)``, ``"1"`` = before compression):
``T_g = (1/n) sum_i N_i(g)``, with ``N_i(g)`` the re-tokenized length of record ``i``'s rationale at
ratio ``g``; ``keep_ratio``, the realised ratio of the token totals ``T_g / T_1``; and
``mean_keep_ratio``, the mean of the per-record ratios ``(1/n) sum_i N_i(g) / N_i(1)`` (records
with an empty rationale left out).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..formats.compressed import DEFAULT_RATIOS, dump_compressed_row, ratio_key
from ..records import RationaleRecord, RecordError, load_jsonl

PROTECTED_CHARS = re.compile(r"[0-9+\-*/=<>×÷^%]")
_WORD = re.compile(r"\S+")
_STRIP = re.compile(r"^[^\w]+|[^\w]+$")


@dataclass(frozen=True)
class TokenScore:
    """One rationale token: its character span in the rationale and its importance (higher = keep)."""

    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Unit:
    """A unit kept or dropped as a whole: a word (or a token) with its span, token count and score."""

    start: int
    end: int
    tokens: int
    score: float
    protected: bool


@dataclass(frozen=True)
class Compression:
    """The compressed text and the selection's token counts (kept may exceed the budget by protected units)."""

    text: str
    kept_tokens: int
    total_tokens: int
    budget: int


# ----------------------------------------------------------------------------- scorers


class SelfInformationScorer:
    """``-log p(x_t | question, x_<t)`` under a causal LM (default: the embedded student)."""

    name = "self-info"

    def __init__(self, model: str = "embedded-default", batch_size: int = 8, max_length: int = 1024, model_obj: Any = None, tokenizer: Any = None):
        from ..models import load_tokenizer, resolve_model_path

        self.tokenizer = tokenizer or load_tokenizer(model)
        if model_obj is None:
            from transformers import AutoModelForCausalLM

            model_obj = AutoModelForCausalLM.from_pretrained(resolve_model_path(model))
        self.model = model_obj.eval()
        self.batch_size, self.max_length = batch_size, max_length

    def _encode(self, record: RationaleRecord) -> tuple[list[int], list[tuple[int, int]], int]:
        context = f"Q: {record.question}\nA:"
        prefix = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        if bos is not None:
            prefix = [bos] + prefix
        encoding = self.tokenizer(" " + record.rationale, add_special_tokens=False, return_offsets_mapping=True)
        offsets = [(max(0, s - 1), max(0, e - 1)) for s, e in encoding["offset_mapping"]]
        ids = list(encoding["input_ids"])
        room = self.max_length - len(ids)
        if room < 1:
            raise ValueError(f"record '{record.id}': rationale has {len(ids)} tokens, more than max_length {self.max_length}")
        prefix = prefix[-room:]
        return prefix + ids, offsets, len(prefix)

    def score(self, records: Sequence[RationaleRecord]) -> list[list[TokenScore]]:
        """Per record, the rationale tokens with their self-information in nats."""
        import torch

        results: list[list[TokenScore]] = []
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for start in range(0, len(records), self.batch_size):
            batch = [self._encode(r) for r in records[start : start + self.batch_size]]
            width = max(len(ids) for ids, _, _ in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, _, _) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                mask[row, : len(ids)] = 1
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
                logp = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            for row, (ids, offsets, prefix_len) in enumerate(batch):
                info = (-logp[row, prefix_len - 1 : len(ids) - 1]).tolist()
                results.append([TokenScore(s, e, v) for (s, e), v in zip(offsets, info)])
        return results


class LLMLingua2Scorer:
    """LLMLingua-2's "preserve" probability per token (needs ``pip install llmlingua`` and its model).

    Not exercised by the offline tests: the classifier is a hub model.
    """

    name = "llmlingua2"

    def __init__(self, model: str = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank", device: str = "cpu"):
        try:
            from llmlingua import PromptCompressor
        except ImportError:
            raise ImportError("the llmlingua2 scorer needs the 'llmlingua' package: pip install llmlingua") from None
        compressor = PromptCompressor(model_name=model, use_llmlingua2=True, device_map=device)
        self.model, self.tokenizer = compressor.model.eval(), compressor.tokenizer

    def score(self, records: Sequence[RationaleRecord]) -> list[list[TokenScore]]:
        import torch

        results = []
        for record in records:
            encoding = self.tokenizer(record.rationale, return_offsets_mapping=True, return_tensors="pt", truncation=True)
            offsets = encoding.pop("offset_mapping")[0].tolist()
            with torch.no_grad():
                probs = torch.softmax(self.model(**encoding).logits[0].float(), dim=-1)[:, 1].tolist()
            results.append([TokenScore(s, e, p) for (s, e), p in zip(offsets, probs) if e > s])
        return results


def make_scorer(name: str, model: str, batch_size: int = 8, max_length: int = 1024):
    if name == "self-info":
        return SelfInformationScorer(model, batch_size=batch_size, max_length=max_length)
    if name == "llmlingua2":
        return LLMLingua2Scorer() if model in ("embedded-default", "") else LLMLingua2Scorer(model)
    raise ValueError(f"unknown scorer '{name}'; choose self-info or llmlingua2")


# ----------------------------------------------------------------------------- selection


def answer_words(answer: str) -> set[str]:
    """Normalised words of the answer, protected wherever they occur in the rationale."""
    return {w for w in (_STRIP.sub("", word).lower() for word in answer.split()) if w}


def is_protected(word: str, protected_words: set[str]) -> bool:
    """Digits, operators, single capital letters (variables such as ``A = ...``, option letters) and
    answer words are never dropped."""
    core = _STRIP.sub("", word)
    return bool(PROTECTED_CHARS.search(word)) or core.lower() in protected_words or (len(core) == 1 and core.isupper())


def build_units(text: str, tokens: Sequence[TokenScore], unit: str, protected_words: set[str]) -> list[Unit]:
    """Group tokens into units. A token belongs to the word holding its first non-space character
    (whitespace-only tokens to the next word); a word's score is the mean of its tokens' scores."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    owner: list[int] = []
    w = 0
    for token in tokens:
        position = token.start
        while position < token.end and text[position].isspace():
            position += 1
        while w < len(words) and words[w][1] <= position:
            w += 1
        owner.append(min(w, len(words) - 1))
    if unit == "token":
        return [
            Unit(t.start, t.end, 1, t.score, is_protected(text[slice(*words[o])], protected_words))
            for t, o in zip(tokens, owner)
        ]
    if unit != "word":
        raise ValueError(f"unit must be 'word' or 'token', got '{unit}'")
    grouped: dict[int, list[TokenScore]] = {}
    for token, o in zip(tokens, owner):
        grouped.setdefault(o, []).append(token)
    return [
        Unit(words[o][0], words[o][1], len(ts), sum(t.score for t in ts) / len(ts), is_protected(text[slice(*words[o])], protected_words))
        for o, ts in sorted(grouped.items())
    ]


def select(units: Sequence[Unit], g: float) -> tuple[set[int], int]:
    """Indices of the units kept at ratio ``g``: protected ones, then by score while they fit the budget."""
    total = sum(u.tokens for u in units)
    budget = round(g * total)
    kept = {i for i, u in enumerate(units) if u.protected}
    used = sum(units[i].tokens for i in kept)
    for i in sorted(range(len(units)), key=lambda i: (-units[i].score, i)):
        if i not in kept and used + units[i].tokens <= budget:
            kept.add(i)
            used += units[i].tokens
    return kept, budget


def render(text: str, units: Sequence[Unit], kept: Iterable[int]) -> str:
    """The kept units in order; adjacent kept units keep their original spacing, a gap left by dropped
    units becomes a newline if it held one, else a space (none inside a word split into tokens)."""
    pieces: list[str] = []
    previous: int | None = None
    last_end = 0
    for i in sorted(kept):
        unit = units[i]
        if previous is not None:
            gap = text[last_end : unit.start]
            if previous == i - 1:
                pieces.append(gap)
            elif "\n" in gap:
                pieces.append("\n")
            elif any(c.isspace() for c in gap) and not text[unit.start].isspace():
                pieces.append(" ")
        pieces.append(text[unit.start : unit.end])
        previous, last_end = i, unit.end
    return "".join(pieces).strip()


def compress_rationale(record: RationaleRecord, tokens: Sequence[TokenScore], g: float, unit: str = "word") -> Compression:
    """Compress one rationale to ratio ``g`` given its token scores."""
    if not 0 < g <= 1:
        raise ValueError(f"ratio must lie in (0, 1], got {g}")
    units = build_units(record.rationale, tokens, unit, answer_words(record.answer))
    total = sum(u.tokens for u in units)
    if g >= 1:
        return Compression(record.rationale, total, total, total)
    kept, budget = select(units, g)
    return Compression(render(record.rationale, units, kept), sum(units[i].tokens for i in kept), total, budget)


# ----------------------------------------------------------------------------- the command


def compress_records(
    records: Sequence[RationaleRecord],
    scorer: Any,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    unit: str = "word",
    count_tokens: Callable[[str], int] | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[tuple[RationaleRecord, dict[str, str], dict[str, int]]], dict[str, Any]]:
    """Score and compress every record at every ratio; returns the rows and a report."""
    count_tokens = count_tokens or (lambda text: len(scorer.tokenizer(text, add_special_tokens=False)["input_ids"]))
    rows = []
    scored_tokens, seconds = 0, 0.0
    sums = {ratio_key(g): 0 for g in (*ratios, 1.0)}
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        began = time.perf_counter()
        scores = scorer.score(batch)
        seconds += time.perf_counter() - began
        for record, tokens in zip(batch, scores):
            scored_tokens += len(tokens)
            texts, counts = {}, {"1": count_tokens(record.rationale)}
            for g in ratios:
                if g < 1:
                    result = compress_rationale(record, tokens, g, unit)
                    texts[ratio_key(g)] = result.text
                    counts[ratio_key(g)] = count_tokens(result.text)
            for key in sums:
                sums[key] += counts.get(key, counts["1"])
            rows.append((record, texts, counts))
        if on_batch:
            on_batch(len(batch))
    n = max(1, len(rows))
    tokens_per_rationale = {key: sums[key] / n for key in sorted(sums, key=float, reverse=True)}
    before = tokens_per_rationale["1"]
    per_record = [counts for _, _, counts in rows if counts["1"] > 0]
    report = {
        "records": len(rows),
        "scorer": getattr(scorer, "name", type(scorer).__name__),
        "tokenizer": str(getattr(getattr(scorer, "tokenizer", None), "name_or_path", "")) or None,
        "unit": unit,
        "ratios": [float(g) for g in ratios],
        "tokens_per_rationale": tokens_per_rationale,
        "keep_ratio": {key: value / before if before else None for key, value in tokens_per_rationale.items()},
        "mean_keep_ratio": {
            key: sum(c.get(key, c["1"]) / c["1"] for c in per_record) / len(per_record) if per_record else None
            for key in tokens_per_rationale
        },
        "scored_tokens": scored_tokens,
        "scoring_seconds": seconds,
        "tokens_scored_per_second": scored_tokens / seconds if seconds else None,
    }
    return rows, report


def format_report(report: dict[str, Any]) -> str:
    before = report["tokens_per_rationale"]["1"]
    lines = [f"{report['records']} rationales, scorer {report['scorer']}, unit {report['unit']}", "ratio  tokens/rationale  vs original"]
    for key, value in report["tokens_per_rationale"].items():
        lines.append(f"{key:>5}  {value:16.1f}  {value / before if before else 0:10.1%}")
    if report["tokens_scored_per_second"]:
        lines.append(f"scored {report['scored_tokens']} tokens at {report['tokens_scored_per_second']:.0f} tokens/s")
    return "\n".join(lines)


def parse_ratios(text: str) -> tuple[float, ...]:
    try:
        ratios = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--ratios must be comma-separated numbers, got '{text}'") from None
    if not ratios or any(not 0 < g <= 1 for g in ratios):
        raise ValueError(f"--ratios must lie in (0, 1], got '{text}'")
    return ratios


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trl-safedistill compress", description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True, help="rationale records JSONL")
    parser.add_argument("--out", required=True, help="output JSONL (records with 'compressed' and 'tokens')")
    parser.add_argument("--model", default="embedded-default", help="causal LM for self-information (the student)")
    parser.add_argument("--scorer", choices=("self-info", "llmlingua2"), default="self-info")
    parser.add_argument("--ratios", default=",".join(ratio_key(g) for g in DEFAULT_RATIOS))
    parser.add_argument("--unit", choices=("word", "token"), default="word")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        ratios = parse_ratios(args.ratios)
        records = load_jsonl(args.input)[: args.limit]
    except (RecordError, ValueError) as error:
        print(f"trl-safedistill compress: {error}", file=sys.stderr)
        return 2
    scorer = make_scorer(args.scorer, args.model, args.batch_size, args.max_length)
    from tqdm.auto import tqdm

    with tqdm(total=len(records), unit="rationale", desc="compress", file=sys.stderr, disable=args.no_progress) as bar:
        rows, report = compress_records(records, scorer, ratios, args.unit, batch_size=args.batch_size, on_batch=bar.update)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record, texts, counts in rows:
            handle.write(dump_compressed_row(record, texts, counts) + "\n")
    partial.replace(out)
    Path(f"{out}.report.json").write_text(json.dumps(report, indent=2))
    print(format_report(report), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
