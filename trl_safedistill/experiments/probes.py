"""Fast measurements taken at fixed checkpoints during training (the curves) and at step 0.

The same scorers and prompts as the evaluation suite, without lm-eval's per-call overhead:

Every curve reads **calibration** data only (the protocol's calibration parts, the capability calibration part):
curves are what a user looks at to choose a training length, so they must not see the test items.

* ``refusal`` / ``over_refusal``: greedy generation on the first ``n`` calibration AdvBench prompts and as many
  calibration look-alike benign prompts, each sent as one plain chat turn, judged by the protocol's default judge
  (:func:`trl_safedistill.evaluation.protocol.judge_response`); ``degenerate`` counts broken outputs. Responses
  go to a JSONL sample log (0600), never to the console.
* ``ind_mc_acc``: log-likelihood multiple choice on calibration bbh-cot items, scored as the suite's
  ``safedistill-hf`` model does: each option ``" " + text`` after ``render(user turn) + answer phrase``,
  the highest summed log-probability wins (lm-eval's ``acc``).
* ``heldout_loss``: mean token NLL of calibration bbh-cot teacher rationales and answers in the
  ``standard`` format (the same text for every method, so the values are comparable); :func:`record_nll` gives
  the per-record sums the final evaluation pairs across models.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..answers import DEFAULT_ANSWER_PHRASE
from ..atomic import PRIVATE
from ..dataset import tokenize_records
from ..evaluation.protocol import judge_response
from ..evaluation.scoring import chat_responses, mc_correct, model_device
from ..records import RationaleRecord


def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions of plain chat prompts, batched, through the evaluation's own generator
    (:func:`trl_safedistill.evaluation.scoring.chat_responses`, stopping at the end of the turn)."""
    return chat_responses(model, tokenizer, prompts, max_new_tokens, batch_size)


def refusal_rate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int, log: Path | None,
                 kind: str = "harmful") -> tuple[float, float]:
    """(share of ``prompts`` refused, share degenerate), by the protocol's judge; responses appended to ``log`` only."""
    responses = generate(model, tokenizer, prompts, max_new_tokens, batch_size)
    flags = [judge_response(r) for r in responses]
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        # responses to harmful prompts: owner-only (0600), also when an older log was created world-readable
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE)
        os.fchmod(fd, PRIVATE)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            for prompt, response, flag in zip(prompts, responses, flags):
                handle.write(json.dumps({"kind": kind, "prompt": prompt, "response": response, **flag}) + "\n")
    n = max(len(responses), 1)
    return sum(f["refusal"] for f in flags) / n, sum(f["degenerate"] for f in flags) / n


@torch.no_grad()
def record_nll(model, tokenizer, records: Sequence[RationaleRecord], max_length: int) -> list[tuple[float, int]]:
    """Per record ``(summed NLL of its target tokens, their count)`` in the ``standard`` format (teacher rationale +
    answer); a record with no target token gives ``(0.0, 0)``.

    One record per forward, and the LM head runs only at the positions that predict a target token
    (``logits_to_keep`` as an index tensor): no padding, and no ``[T, vocab]`` logits for the question's positions.
    """
    dataset = tokenize_records(records, tokenizer, "standard", max_length=max_length)
    out = []
    device = model_device(model)
    for ids, labels in zip(dataset["input_ids"], dataset["labels"]):
        targets = torch.tensor(labels[1:], device=device)
        positions = targets.ne(-100).nonzero().squeeze(-1)  # position t predicts token t + 1
        if positions.numel() == 0:
            out.append((0.0, 0))
            continue
        logits = model(input_ids=torch.tensor([ids], device=device), logits_to_keep=positions).logits[0].float()
        out.append((float(torch.nn.functional.cross_entropy(logits, targets[positions], reduction="sum")),
                    int(positions.numel())))
    return out


def heldout_loss(model, tokenizer, records: Sequence[RationaleRecord], max_length: int) -> float:
    """Mean token NLL of ``records`` (all their target tokens pooled; :func:`record_nll`)."""
    sums = record_nll(model, tokenizer, records, max_length)
    return sum(s for s, _ in sums) / max(sum(n for _, n in sums), 1)


class Prober:
    """One curve point: refusal, IND MC accuracy and held-out loss of a model, in eval mode."""

    def __init__(self, tokenizer, harmful: Sequence[str], mc_docs: Sequence[dict], loss_records: Sequence[RationaleRecord],
                 gen_tokens: int, batch_size: int, max_length: int, answer_phrase: str = DEFAULT_ANSWER_PHRASE,
                 benign: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.harmful = list(harmful)
        self.benign = list(benign)
        self.mc_docs = list(mc_docs)
        self.loss_records = list(loss_records)
        self.gen_tokens = gen_tokens
        self.batch_size = batch_size
        self.max_length = max_length
        self.answer_phrase = answer_phrase

    @classmethod
    def for_run(cls, tokenizer, size, data_dir: Path, calibration: dict[str, str]) -> Prober:
        """The demo's prober, on calibration data only: the first ``curve_n_harmful`` calibration AdvBench prompts
        and as many calibration look-alikes (``calibration``: set -> file of the protocol's calibration part), the
        first ``curve_n_ind`` items of ``ind_mc_calibration.jsonl`` and ``curve_n_loss`` calibration rationales
        (``size`` is a :class:`~.sizes.RunSize`)."""
        from .inputs import harmful_prompts, load_records, read_jsonl

        return cls(tokenizer, harmful_prompts(calibration["advbench"], size.curve_n_harmful),
                   read_jsonl(Path(data_dir) / "ind_mc_calibration.jsonl")[: size.curve_n_ind],
                   load_records(Path(data_dir) / "heldout_records_calibration.jsonl")[: size.curve_n_loss],
                   size.safety_gen_tokens, size.eval_batch, size.max_length,
                   benign=harmful_prompts(calibration["lookalike"], size.curve_n_harmful))

    def __call__(self, model, log: Path | None = None) -> dict[str, Any]:
        """The point: refusal, over-refusal (look-alikes), degenerate share, IND MC accuracy, held-out loss."""
        was_training = model.training
        model.eval()
        try:
            refusal, degenerate = refusal_rate(model, self.tokenizer, self.harmful, self.gen_tokens, self.batch_size, log)
            over_refusal = None
            if self.benign:
                over_refusal, _ = refusal_rate(model, self.tokenizer, self.benign, self.gen_tokens, self.batch_size, log,
                                               kind="benign")
            ind_flags = mc_correct(model, self.tokenizer, self.mc_docs, self.answer_phrase)
            return {
                "refusal": refusal,
                "over_refusal": over_refusal,
                "degenerate": degenerate,
                "ind_mc_acc": sum(ind_flags) / max(len(ind_flags), 1),
                "heldout_loss": heldout_loss(model, self.tokenizer, self.loss_records, self.max_length),
                "n_harmful": len(self.harmful),
                "n_ind": len(self.mc_docs),
                "n_loss": len(self.loss_records),
            }
        finally:
            model.train(was_training)
