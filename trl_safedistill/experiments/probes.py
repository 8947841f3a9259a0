"""Fast measurements taken at fixed checkpoints during training (the curves) and at step 0.

The same scorers and prompts as the evaluation suite, without lm-eval's per-call overhead:

* ``refusal``: greedy generation on held-out AdvBench prompts (the first ``n`` of the suite's
  ``safety/advbench.jsonl``), each sent as one plain chat turn, scored by
  :func:`trl_safedistill.evaluation.refusal.is_refusal` (GCG prefixes). Responses go to a JSONL sample
  log, never to the console.
* ``ind_mc_acc``: log-likelihood multiple choice on held-out bbh-cot items, scored as the suite's
  ``safedistill-hf`` model does: each option ``" " + text`` after ``render(user turn) + answer phrase``,
  the highest summed log-probability wins (lm-eval's ``acc``).
* ``heldout_loss``: mean token NLL of held-out bbh-cot teacher rationales and answers in the
  ``standard`` format (the same text for every method, so the values are comparable).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..dataset import tokenize_records
from ..evaluation.refusal import is_refusal
from ..formats.base import render_prompt, user_text
from ..records import RationaleRecord

ANSWER_PHRASE = "Therefore, the answer is"


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions of plain chat prompts (left padding, batched)."""
    texts = [render_prompt(tokenizer, p, "") for p in prompts]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    chat = bool(getattr(tokenizer, "chat_template", None))
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=not chat)
            enc = {k: v.to(_device(model)) for k, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return outputs


def refusal_rate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int, log: Path | None) -> float:
    """Share of ``prompts`` refused (GCG rule); responses appended to ``log`` only."""
    responses = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            for prompt, response in zip(prompts, responses):
                handle.write(json.dumps({"prompt": prompt, "response": response, "refusal": is_refusal(response)}) + "\n")
    return sum(is_refusal(r) for r in responses) / max(len(responses), 1)


@torch.no_grad()
def option_scores(model, tokenizer, doc: dict, answer_phrase: str = ANSWER_PHRASE) -> list[float]:
    """Summed log-probability of each option ``" " + text`` after the scoring context (lm-eval's loglikelihood).

    The context (rendered user turn + answer phrase) is run once; its KV cache is then repeated across the options
    and every option's remaining tokens are scored in one right-padded batch (padding comes after the real tokens,
    so no real position attends to it). An item thus costs one context forward plus one small batched forward,
    instead of one full forward per option. Tokens are split where lm-eval splits them: the continuation is what
    ``tokenize(context + option)`` adds after its longest common prefix with ``tokenize(context)``.
    """
    context = render_prompt(tokenizer, user_text(doc["question"], doc.get("description")), "") + answer_phrase
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    device = _device(model)
    splits = []
    for option in doc["options"]:
        full = tokenizer(context + " " + option, add_special_tokens=False)["input_ids"]
        shared = min(_common_prefix(context_ids, full), len(full) - 1)
        splits.append((full[:shared], full[shared:]))
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (prefix, _) in enumerate(splits):
        groups.setdefault(tuple(prefix), []).append(index)
    scores = [0.0] * len(splits)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for prefix, members in groups.items():
        out = model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        for index in members:
            scores[index] = float(first[splits[index][1][0]])
        longer = [index for index in members if len(splits[index][1]) > 1]
        if not longer:
            continue
        width = max(len(splits[index][1]) - 1 for index in longer)
        input_ids = torch.full((len(longer), width), pad, dtype=torch.long)
        attention = torch.zeros((len(longer), len(prefix) + width), dtype=torch.long)
        attention[:, : len(prefix)] = 1
        for row, index in enumerate(longer):
            tokens = splits[index][1][:-1]
            input_ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, len(prefix) : len(prefix) + len(tokens)] = 1
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(longer))
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), past_key_values=cache,
                       use_cache=True).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, index in enumerate(longer):
            targets = splits[index][1][1:]
            positions = torch.arange(len(targets), device=device)
            scores[index] += float(logprobs[row, positions, torch.tensor(targets, device=device)].sum())
    return scores


def mc_correct(model, tokenizer, docs: Sequence[dict], answer_phrase: str = ANSWER_PHRASE) -> list[float]:
    """Per-item 0/1: the option with the highest log-likelihood is the gold one (lm-eval's ``acc``)."""
    flags = []
    for doc in docs:
        scores = option_scores(model, tokenizer, doc, answer_phrase)
        flags.append(float(max(range(len(scores)), key=scores.__getitem__) == int(doc["gold_index"])))
    return flags


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@torch.no_grad()
def heldout_loss(model, tokenizer, records: Sequence[RationaleRecord], max_length: int) -> float:
    """Mean token NLL of ``records`` rendered in the ``standard`` format (teacher rationale + answer).

    One record per forward, and the LM head runs only at the positions that predict a target token
    (``logits_to_keep`` as an index tensor): no padding, and no ``[T, vocab]`` logits for the question's positions.
    """
    dataset = tokenize_records(records, tokenizer, "standard", max_length=max_length)
    total, count = 0.0, 0
    device = _device(model)
    for ids, labels in zip(dataset["input_ids"], dataset["labels"]):
        targets = torch.tensor(labels[1:], device=device)
        positions = targets.ne(-100).nonzero().squeeze(-1)  # position t predicts token t + 1
        if positions.numel() == 0:
            continue
        logits = model(input_ids=torch.tensor([ids], device=device), logits_to_keep=positions).logits[0].float()
        total += float(torch.nn.functional.cross_entropy(logits, targets[positions], reduction="sum"))
        count += int(positions.numel())
    return total / max(count, 1)


class Prober:
    """One curve point: refusal, IND MC accuracy and held-out loss of a model, in eval mode."""

    def __init__(self, tokenizer, harmful: Sequence[str], mc_docs: Sequence[dict], loss_records: Sequence[RationaleRecord],
                 gen_tokens: int, batch_size: int, max_length: int, answer_phrase: str = ANSWER_PHRASE):
        self.tokenizer = tokenizer
        self.harmful = list(harmful)
        self.mc_docs = list(mc_docs)
        self.loss_records = list(loss_records)
        self.gen_tokens = gen_tokens
        self.batch_size = batch_size
        self.max_length = max_length
        self.answer_phrase = answer_phrase

    @classmethod
    def for_run(cls, tokenizer, size, data_dir: Path, advbench: Path | str) -> Prober:
        """The demo's prober: the first ``curve_n_*`` held-out AdvBench prompts, IND MC items of the run's
        ``ind_mc.jsonl`` and its held-out rationales (``size`` is a :class:`~.sizes.RunSize`)."""
        from .inputs import harmful_prompts, load_records, read_jsonl

        return cls(tokenizer, harmful_prompts(advbench, size.curve_n_harmful),
                   read_jsonl(Path(data_dir) / "ind_mc.jsonl")[: size.curve_n_ind],
                   load_records(Path(data_dir) / "heldout_records.jsonl")[: size.curve_n_loss],
                   size.safety_gen_tokens, size.eval_batch, size.max_length)

    def __call__(self, model, log: Path | None = None, refusal: float | None = None,
                 ind_flags: Sequence[float] | None = None) -> dict[str, Any]:
        """The point; ``refusal`` (of :attr:`harmful`) and ``ind_flags`` (of :attr:`mc_docs`, in order), when already
        measured, are used instead of being measured again."""
        was_training = model.training
        model.eval()
        try:
            if refusal is None:
                refusal = refusal_rate(model, self.tokenizer, self.harmful, self.gen_tokens, self.batch_size, log)
            if ind_flags is None:
                ind_flags = mc_correct(model, self.tokenizer, self.mc_docs, self.answer_phrase)
            return {
                "refusal": refusal,
                "ind_mc_acc": sum(ind_flags) / max(len(ind_flags), 1),
                "heldout_loss": heldout_loss(model, self.tokenizer, self.loss_records, self.max_length),
                "n_harmful": len(self.harmful),
                "n_ind": len(self.mc_docs),
                "n_loss": len(self.loss_records),
            }
        finally:
            model.train(was_training)
