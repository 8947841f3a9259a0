"""The one scorer behind every measurement: greedy generation and option log-likelihoods.

The lm-eval model :class:`~.lm.SafeDistillLM` (``trl-safedistill eval``, the demo's final evaluation and the
align gate) and the demo's curve probes (:mod:`trl_safedistill.experiments.probes`) both call these functions,
so a curve point, the gate and the final evaluation score a model the same way:

* :func:`greedy_generate`: batched greedy decoding of rendered prompts (left padding), each text cut at its
  first end-of-sequence/padding token and at the first stop string; returns the text and the number of
  generated tokens (the stop token counted, as lm-eval counts it).
* :func:`continuation_loglikelihoods`: ``log p(continuation | context)`` summed over the continuation's tokens
  (lm-eval's ``loglikelihood``) and whether it is the greedy continuation, for several continuations of one
  context. The context runs once; its KV cache is repeated over the continuations, whose remaining tokens are
  scored in one right-padded batch (padding comes after the real tokens, so no real position attends to it).
  Tokens are split where lm-eval splits them in spirit: the continuation is what ``tokenize(context +
  continuation)`` adds after its longest common prefix with ``tokenize(context)``.
* :func:`mc_correct`: per-item 0/1 of log-likelihood multiple choice (lm-eval's ``acc``: the option with the
  highest summed log-probability, the first on ties) after :func:`scoring_context`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..answers import DEFAULT_ANSWER_PHRASE
from ..formats import end_of_turn_text, is_chat_tokenizer, render_prompt, user_text
from ..formats.base import common_prefix_length


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def greedy_generate(model, tokenizer, prompts: Sequence[str], stops: Sequence[str], max_new_tokens: int,
                    chat: bool) -> list[tuple[str, int]]:
    """One batched greedy ``generate`` call: ``(text cut at the first stop, tokens generated)`` per prompt.

    ``prompts`` are already rendered (chat template applied when ``chat``); special tokens are added by the
    tokenizer only for plain (non-chat) prompts.
    """
    from lm_eval.models.utils_hf import stop_sequences_criteria

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(list(prompts), add_special_tokens=not chat, padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = side
    device = model_device(model)
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded["attention_mask"].to(device)
    width = input_ids.shape[1]
    stops = [s for s in stops if s]
    criteria = stop_sequences_criteria(tokenizer, stops, width, input_ids.shape[0]) if stops else None
    output = model.generate(
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
        cut = min((text.find(s) for s in stops if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
            count = len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
        else:
            count = len(kept_ids) + (0 if ended is None else 1)
        results.append((text, min(count, max_new_tokens)))
    return results


def chat_responses(model, tokenizer, questions: Sequence[str], max_new_tokens: int, batch_size: int = 32) -> list[str]:
    """Greedy responses to plain chat turns (no reasoning format), ``batch_size`` prompts per :func:`greedy_generate`
    call, each stopped at the end of the assistant turn: what the safety probes, the align gate's base-model answers
    and the safety monitor generate."""
    chat = is_chat_tokenizer(tokenizer)
    stops = [end_of_turn_text(tokenizer, chat)]
    texts = [render_prompt(tokenizer, q, "", chat) for q in questions]
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        out += [text for text, _ in greedy_generate(model, tokenizer, texts[start : start + batch_size], stops,
                                                     max_new_tokens, chat)]
    return out


@torch.no_grad()
def continuation_loglikelihoods(model, tokenizer, context: str, continuations: Sequence[str],
                                chat: bool | None = None) -> list[tuple[float, bool]]:
    """``(sum log p(continuation tokens | context), greedy?)`` for each continuation of one ``context``.

    Special tokens (a BOS) are added only for a plain, non-chat ``context``, as in :func:`greedy_generate`.
    """
    special = not (is_chat_tokenizer(tokenizer) if chat is None else chat)
    context_ids = tokenizer(context, add_special_tokens=special)["input_ids"]
    device = model_device(model)
    splits = []
    for continuation in continuations:
        full = tokenizer(context + continuation, add_special_tokens=special)["input_ids"]
        shared = min(common_prefix_length(context_ids, full), len(full) - 1)
        splits.append((full[:shared], full[shared:]))
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, (prefix, _) in enumerate(splits):
        groups.setdefault(tuple(prefix), []).append(index)
    scores = [0.0] * len(splits)
    greedy = [True] * len(splits)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for prefix, members in groups.items():
        out = model(input_ids=torch.tensor([list(prefix)], device=device), use_cache=True, logits_to_keep=1)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        best_first = int(first.argmax())
        for index in members:
            scores[index] = float(first[splits[index][1][0]])
            greedy[index] = best_first == splits[index][1][0]
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
            targets = torch.tensor(splits[index][1][1:], device=device)
            positions = torch.arange(len(targets), device=device)
            scores[index] += float(logprobs[row, positions, targets].sum())
            greedy[index] = greedy[index] and bool((logprobs[row, positions].argmax(dim=-1) == targets).all())
    return list(zip(scores, greedy))


def scoring_context(tokenizer, question: str, description: str | None = None,
                    answer_phrase: str = DEFAULT_ANSWER_PHRASE, chat: bool | None = None) -> str:
    """The context a multiple-choice option is scored after: the rendered user turn, then the answer phrase.

    No rationale: the answer-first reading for every format, the same for all students so scores compare.
    """
    return render_prompt(tokenizer, user_text(question, description), "", chat) + answer_phrase


def option_scores(model, tokenizer, doc: dict, answer_phrase: str = DEFAULT_ANSWER_PHRASE) -> list[float]:
    """Summed log-probability of each option ``" " + text`` of an item after :func:`scoring_context`."""
    context = scoring_context(tokenizer, doc["question"], doc.get("description"), answer_phrase)
    return [score for score, _ in continuation_loglikelihoods(model, tokenizer, context, [" " + o for o in doc["options"]])]


def mc_correct(model, tokenizer, docs: Sequence[dict], answer_phrase: str = DEFAULT_ANSWER_PHRASE) -> list[float]:
    """Per-item 0/1: the option with the highest log-likelihood is the gold one (lm-eval's ``acc``)."""
    flags = []
    for doc in docs:
        scores = option_scores(model, tokenizer, doc, answer_phrase)
        flags.append(float(max(range(len(scores)), key=scores.__getitem__) == int(doc["gold_index"])))
    return flags


def routed_generate(model, tokenizer, router, fmt, questions: Sequence[tuple[str, str | None]], stops: Sequence[str],
                    max_new_tokens: int, chat: bool, stop_early: bool = True,
                    modes: Sequence[str] | None = None) -> list[tuple[str, int, str]]:
    """Adaptive thinking: ``(text, tokens generated, mode)`` per ``(question, description)``.

    ``router`` (:class:`~trl_safedistill.formats.router.SoftPromptRouter`) reads each question's user turn and picks
    its mode, unless ``modes`` forces them (one per question: the always-think-first / always-answer-first baselines
    of the same student). Each mode's questions then go through one :func:`greedy_generate` call with the prompt the
    ``adaptive`` format (``fmt``) trained that mode with (user turn, then the mode's tag); answer-first questions also
    stop at the answer-first marker when ``stop_early``, right after the answer.
    """
    from ..formats.router import router_prompt

    if modes is None:
        modes = router.decide(model, tokenizer, [router_prompt(tokenizer, q, d, chat) for q, d in questions], chat)
    elif len(modes) != len(questions):
        raise ValueError(f"routed_generate: {len(modes)} forced modes for {len(questions)} questions")
    results: list[tuple[str, int, str] | None] = [None] * len(questions)
    for mode in dict.fromkeys(modes):
        indices = [index for index, chosen in enumerate(modes) if chosen == mode]
        prompts = [fmt.mode_prompt(tokenizer, *questions[index], mode, chat) for index in indices]
        stop = fmt.stop_for(mode) if stop_early else None
        mode_stops = list(stops) + ([stop] if stop else [])
        for index, (text, count) in zip(indices, greedy_generate(model, tokenizer, prompts, mode_stops, max_new_tokens, chat)):
            results[index] = (text, count, mode)
    return [result for result in results if result is not None]
