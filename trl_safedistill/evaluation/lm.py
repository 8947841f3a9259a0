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
  ``fmt.stop_after_answer`` (the ``answer_first_marker`` model_arg, default ``"\\nExplanation:"``, as trained),
  saving the rationale's tokens.
* ``compressed`` (TokenSkip, arXiv 2502.12067): one generation from a prompt ending with
  ``Compression ratio: {g}``, ``g`` the ``compression_ratio`` model_arg (default 1, the uncompressed
  rationale; any other format rejects it), e.g. ``--model_args pretrained=PATH,format=compressed,compression_ratio=0.6``.
* ``adaptive`` (adaptive thinking, arXiv 2404.09170): the student's soft-prompt router (``router=DIR`` model_arg;
  default the ``router/`` folder beside ``adapter`` or in ``pretrained``) picks each question's mode, then one
  generation per mode (:func:`.scoring.routed_generate`) from the user turn and that mode's tag; answer-first
  questions stop at the marker with ``stop_early``. The token log records each question's ``mode``. ``router`` may
  also be a loaded router (in process); ``adaptive_mode=standard|answer_first`` forces that mode on every question
  instead of routing (the same student's always-think-first / always-answer-first baselines,
  :mod:`.adaptive`).
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

from ..answers import DEFAULT_ANSWER_PHRASE
from ..formats import (
    MODES,
    AdaptiveFormat,
    CascadeFormat,
    end_of_turn_text,
    get_format,
    is_chat_tokenizer,
    render_prompt,
)
from .scoring import continuation_loglikelihoods, greedy_generate, routed_generate, scoring_context


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
        answer_first_marker: str | None = None,
        router: Any = None,
        adaptive_mode: str | None = None,
        device: str | None = None,
        **kwargs: Any,
    ) -> None:
        try:  # checked before the model loads
            fmt = get_format(format, answer_phrase, marker=answer_first_marker or None,
                             inference_ratio=None if compression_ratio in (None, "") else float(compression_ratio))
        except ValueError as error:
            raise ValueError(f"safedistill-hf: {error}") from None
        loaded_router = router if router is not None and not isinstance(router, (str, Path)) else None
        router_dir = None if loaded_router is not None else _router_dir(fmt, router, adapter, pretrained)
        if adaptive_mode not in (None, "", "adaptive") and (adaptive_mode not in MODES or not isinstance(fmt, AdaptiveFormat)):
            raise ValueError(f"safedistill-hf: adaptive_mode must be 'adaptive' (routed) or one of {list(MODES)}, with "
                             f"format=adaptive; got {adaptive_mode!r} with format={fmt.name}")
        #: the mode forced on every question (``None``: the router decides)
        self.adaptive_mode = adaptive_mode if adaptive_mode in MODES else None
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
        self.router = loaded_router
        if router_dir is not None:
            from ..formats.router import SoftPromptRouter

            self.router = SoftPromptRouter.from_pretrained(router_dir, device=self.model.get_input_embeddings().weight.device)

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
        if isinstance(doc.get("question"), str):
            return scoring_context(self.tokenizer, doc["question"], doc.get("description"), self.fmt.answer_phrase, self.chat)
        return render_prompt(self.tokenizer, context, "", self.chat) + self.fmt.answer_phrase

    # ------------------------------------------------------------------------------- generation

    def generate_texts(self, prompts: list[str], stops: list[str], max_new_tokens: int) -> list[tuple[str, int]]:
        """One batched greedy ``generate`` call (:func:`.scoring.greedy_generate`): ``(text, tokens)`` per prompt."""
        self.generate_calls += 1
        return greedy_generate(self.model, self.tokenizer, prompts, stops, max_new_tokens, self.chat)

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
        routed = None
        if isinstance(self.fmt, AdaptiveFormat) and not plain and all(isinstance(d.get("question"), str) for d in docs):
            routed = routed_generate(self.model, self.tokenizer, self.router, self.fmt,
                                     [(d["question"], d.get("description")) for d in docs], self._stops(until), max_new,
                                     self.chat, self.stop_early,
                                     modes=[self.adaptive_mode] * len(docs) if self.adaptive_mode else None)
            self.generate_calls += len({mode for _, _, mode in routed})
            texts, counts, passes = [t for t, _, _ in routed], [n for _, n, _ in routed], 1
        elif isinstance(self.fmt, CascadeFormat) and not plain:
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
            if routed is not None:
                entry["mode"] = routed[positions.index(position)][2]
            self.generation_log.append(entry)
            if self.token_log is not None:
                self.token_log.parent.mkdir(parents=True, exist_ok=True)
                with self.token_log.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(entry) + "\n")

    # ------------------------------------------------------------------------- multiple choice

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation tokens | context), greedy?)`` per request, lm-eval's definition.

        Requests are grouped by their scoring context, and each group is scored by
        :func:`.scoring.continuation_loglikelihoods` (the context once, the options in one batch over its KV
        cache), the same function the demo's curve probes call. Trailing whitespace of a context moves to the
        continuation, as lm-eval does.
        """
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        groups: dict[str, list[tuple[int, str]]] = {}
        for index, request in enumerate(requests):
            context = self.scoring_context(request.args[0], request.doc)
            continuation = request.args[1]
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            groups.setdefault(context, []).append((index, continuation))
        for context, members in groups.items():
            scored = continuation_loglikelihoods(self.model, self.tokenizer, context, [c for _, c in members], self.chat)
            for (index, _), result in zip(members, scored):
                results[index] = result
        return [r for r in results if r is not None]


def _router_dir(fmt, router: str | None, adapter: str | None, pretrained: Any) -> Path | None:
    """The saved router an ``adaptive`` student is evaluated with: ``router``, else ``router/`` beside the adapter or
    in the model folder; ``None`` for other formats. A missing router is an error, never a silent think-first."""
    from ..formats.router import ROUTER_DIR

    if not isinstance(fmt, AdaptiveFormat):
        if router:
            raise ValueError(f"safedistill-hf: a router applies to format=adaptive only, not '{fmt.name}'")
        return None
    candidates = [Path(router)] if router else [Path(p) / ROUTER_DIR for p in (adapter, pretrained) if isinstance(p, str) and p]
    for candidate in candidates:
        if (candidate / "router.safetensors").is_file():
            return candidate
    where = ", ".join(str(c) for c in candidates) or "nowhere (no adapter or model folder given)"
    raise ValueError(f"safedistill-hf: format=adaptive needs the student's router; looked in {where}: pass router=DIR")
