"""``safedistill-hf``: an lm-eval model (subclass of ``HFLM``) that prompts a student in its training format.

Usage: ``lm_eval --model safedistill-hf --model_args pretrained=PATH,format=cascade,adapter=DIR
--include_path eval_tasks --tasks safedistill_ind`` after ``import trl_safedistill.evaluation.lm`` (lm-eval
has no entry points; ``trl-safedistill eval`` imports it for you).

* Prompts: documents carrying ``question``/``description`` are rendered with
  ``fmt.inference_prompt(tokenizer, question, description)``, exactly the prompt of training; plain
  (safety) documents are sent as one chat turn, unless ``safety_format=format``.
* ``standard``: one generation until the end of turn.
* ``cascade`` (CasCoD, arXiv 2405.19842): two generations per question. Pass 1 generates the
  rationale from ``P + "Rationale:"`` (stopping at the end of turn or the answer phrase); pass 2
  generates the answer from ``fmt.second_pass_prompt(prompt, rationale)``, which ends with the answer
  phrase. The returned text is ``rationale + "\\n" + answer phrase + answer``.
* ``answer_first`` (arXiv 2404.09170): one generation; with ``stop_early`` (default) it stops at
  ``fmt.stop_after_answer`` (``"\\nExplanation:"``), saving the rationale's tokens.
* ``compressed`` (TokenSkip, arXiv 2502.12067): one generation from a prompt ending with
  ``Compression ratio: {g}``, ``g`` the ``compression_ratio`` model_arg (default 1, the uncompressed
  rationale; any other format rejects it), e.g. ``--model_args pretrained=PATH,format=compressed,compression_ratio=0.6``.
* Multiple choice (``loglikelihood``): each option is scored as the continuation of
  ``render(user text) + answer phrase`` (no rationale): the answer-first reading for every format, this
  project's choice, the same for all students so scores are comparable.

Every question's generated tokens (both passes for cascade, counting the stop token) are appended to
:attr:`SafeDistillLM.generation_log`; ``token_log=PATH`` also writes them as JSONL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences
from lm_eval.models.utils_hf import stop_sequences_criteria

from ..formats import (
    CascadeFormat,
    CompressedFormat,
    end_of_turn_text,
    get_format,
    is_chat_tokenizer,
    render_prompt,
    user_text,
)
from .answers import DEFAULT_ANSWER_PHRASE


def _as_bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in {"1", "true", "yes", "on"}


@register_model("safedistill-hf")
class SafeDistillLM(HFLM):
    """HFLM that renders prompts in a distillation format and generates per the format's inference rule."""

    def __init__(
        self,
        pretrained: Any,
        format: str = "standard",  # noqa: A002 - the model_args key users write
        adapter: str | None = None,
        answer_phrase: str = DEFAULT_ANSWER_PHRASE,
        stop_early: bool | str = True,
        safety_format: str = "plain",
        answer_max_gen_toks: int = 32,
        max_gen_toks_cap: int | None = None,
        token_log: str | None = None,
        compression_ratio: float | str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        fmt = get_format(format, answer_phrase)
        if compression_ratio not in (None, ""):  # checked before the model loads
            if not isinstance(fmt, CompressedFormat):
                raise ValueError(f"safedistill-hf: compression_ratio applies to format=compressed only, not {format!r}")
            fmt = CompressedFormat(answer_phrase=answer_phrase, inference_ratio=float(compression_ratio))
        if isinstance(pretrained, str):
            from ..models import resolve_model_path

            pretrained = resolve_model_path(pretrained)
            if kwargs.get("tokenizer") is None:
                from ..models import load_tokenizer

                kwargs["tokenizer"] = load_tokenizer(pretrained)
        elif adapter:
            from peft import PeftModel

            pretrained = PeftModel.from_pretrained(pretrained, adapter)
            adapter = None
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs.setdefault("dtype", "float32" if device == "cpu" else "auto")
        super().__init__(pretrained=pretrained, peft=adapter, device=device, **kwargs)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if safety_format not in {"plain", "format"}:
            raise ValueError(f"safedistill-hf: safety_format must be 'plain' or 'format', got {safety_format!r}")
        self.fmt = fmt
        self.stop_early = _as_bool(stop_early)
        self.safety_format = safety_format
        self.answer_max_gen_toks = int(answer_max_gen_toks)
        self.max_gen_toks_cap = int(max_gen_toks_cap) if max_gen_toks_cap else None
        self.chat = is_chat_tokenizer(self.tokenizer)
        self.end_of_turn = end_of_turn_text(self.tokenizer, self.chat)
        self.generation_log: list[dict[str, Any]] = []
        self.generate_calls = 0
        self.token_log = Path(token_log) if token_log else None

    # ---------------------------------------------------------------------------------- prompts

    def is_plain(self, doc: dict | None) -> bool:
        return bool(doc) and doc.get("prompt_style") == "plain" and self.safety_format == "plain"

    def generation_prompt(self, context: str, doc: dict | None) -> str:
        """The rendered prompt of the first (or only) generation for one request."""
        doc = doc or {}
        if self.is_plain(doc):
            return render_prompt(self.tokenizer, doc.get("question", context), "", self.chat)
        if isinstance(doc.get("question"), str):
            return self.fmt.inference_prompt(self.tokenizer, doc["question"], doc.get("description"), chat=self.chat)
        return render_prompt(self.tokenizer, context, self.fmt.assistant_prefix, self.chat)

    def scoring_context(self, context: str, doc: dict | None) -> str:
        """The context a multiple-choice option is scored after: rendered user turn + answer phrase."""
        doc = doc or {}
        text = user_text(doc["question"], doc.get("description")) if isinstance(doc.get("question"), str) else context
        return render_prompt(self.tokenizer, text, "", self.chat) + self.fmt.answer_phrase

    # ------------------------------------------------------------------------------- generation

    def generate_texts(self, prompts: list[str], stops: list[str], max_new_tokens: int) -> list[tuple[str, int]]:
        """One batched greedy ``generate`` call: ``(text cut at the first stop, tokens generated)`` per prompt."""
        self.generate_calls += 1
        tokenizer = self.tokenizer
        side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            encoded = tokenizer(prompts, add_special_tokens=not self.chat, padding=True, return_tensors="pt")
        finally:
            tokenizer.padding_side = side
        input_ids = encoded["input_ids"].to(self.device)
        attention_mask = encoded["attention_mask"].to(self.device)
        width = input_ids.shape[1]
        criteria = stop_sequences_criteria(tokenizer, stops, width, input_ids.shape[0]) if stops else None
        with torch.no_grad():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                stopping_criteria=criteria,
                pad_token_id=tokenizer.pad_token_id,
            )
        eos = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
        results = []
        for row in output[:, width:].tolist():
            ended = next((i for i, token in enumerate(row) if token in eos), None)
            kept_ids = row if ended is None else row[:ended]
            text = tokenizer.decode(kept_ids, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s and s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
                count = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
            else:
                count = len(kept_ids) + (0 if ended is None else 1)
            results.append((text, min(count, max_new_tokens)))
        return results

    def _stops(self, until: list[str], *extra: str | None) -> list[str]:
        stops = list(until) + [self.end_of_turn] + [s for s in extra if s]
        return list(dict.fromkeys(s for s in stops if s))

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        outputs: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            key = json.dumps([request.args[1], self.is_plain(request.doc)], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)  # a chunk is all plain or all formatted
        batch = max(1, int(self.batch_size)) if str(self.batch_size).isdigit() else 1
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = handle_stop_sequences(kwargs.get("until"), eos=None)
            max_new = int(kwargs.get("max_gen_toks") or kwargs.get("max_new_tokens") or self.max_gen_toks)
            if self.max_gen_toks_cap:
                max_new = min(max_new, self.max_gen_toks_cap)
            for start in range(0, len(indices), batch):
                chunk = indices[start : start + batch]
                self._generate_chunk([requests[i] for i in chunk], until, max_new, outputs, chunk)
        return [o if o is not None else "" for o in outputs]

    def _generate_chunk(self, chunk: list, until: list[str], max_new: int, outputs: list, positions: list[int]) -> None:
        docs = [request.doc for request in chunk]
        prompts = [self.generation_prompt(request.args[0], request.doc) for request in chunk]
        plain = any(self.is_plain(doc) for doc in docs)
        if isinstance(self.fmt, CascadeFormat) and not plain:
            first = self.generate_texts(prompts, self._stops(until, self.fmt.answer_phrase), max_new)
            second_prompts = [self.fmt.second_pass_prompt(p, text) for p, (text, _) in zip(prompts, first)]
            answer_max = min(self.answer_max_gen_toks, self.max_gen_toks_cap or self.answer_max_gen_toks)
            second = self.generate_texts(second_prompts, self._stops(until, "\n"), answer_max)
            texts = [f"{r.strip()}\n{self.fmt.answer_phrase}{a}" for (r, _), (a, _) in zip(first, second)]
            counts = [n1 + n2 for (_, n1), (_, n2) in zip(first, second)]
            passes = 2
        else:
            stop_after = self.fmt.stop_after_answer if (self.stop_early and not plain) else None
            single = self.generate_texts(prompts, self._stops(until, stop_after), max_new)
            texts, counts, passes = [t for t, _ in single], [n for _, n in single], 1
        for position, request, text, count in zip(positions, chunk, texts, counts):
            outputs[position] = text
            entry = {
                "task": request.task_name,
                "doc_id": request.doc_id,
                "format": self.fmt.name,
                "passes": passes,
                "tokens": count,
            }
            self.generation_log.append(entry)
            if self.token_log is not None:
                self.token_log.parent.mkdir(parents=True, exist_ok=True)
                with self.token_log.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")

    # ------------------------------------------------------------------------- multiple choice

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: trailing spaces of the context go to the continuation; the pair is encoded whole."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        special = not self.chat
        whole = self.tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
        context_ids = self.tokenizer(context, add_special_tokens=special)["input_ids"]
        return whole[: len(context_ids)], whole[len(context_ids) :]

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation tokens | context), greedy?)`` per request, lm-eval's definition.

        Logits are computed only at the continuation's positions (``logits_to_keep``), never over the
        prompt: with a 49k vocabulary this is most of the cost of a multiple-choice item on a CPU.
        """
        results = []
        for request in requests:
            context = self.scoring_context(request.args[0], request.doc)
            context_ids, continuation_ids = self.encode_pair(context, request.args[1])
            if not continuation_ids:
                results.append((0.0, True))
                continue
            ids = (context_ids + continuation_ids)[-(self.max_length + 1) :][:-1]
            input_ids = torch.tensor([ids], device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, logits_to_keep=len(continuation_ids)).logits[0]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            target = torch.tensor(continuation_ids, device=log_probs.device)
            total = float(log_probs.gather(1, target[:, None]).sum())
            greedy = bool((log_probs.argmax(dim=-1) == target).all())
            results.append((total, greedy))
        return results
