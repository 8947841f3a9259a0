"""The adaptive-thinking router: a soft-prompt perception module that picks think-first or answer-first per question.

Adaptive thinking (Chen et al., arXiv 2404.09170, later versions) lets a perception module based on soft-prompt
tuning choose, per question, between pre-thinking (rationale, then answer) and post-thinking (answer first, which
may stop right after the answer). The paper publishes no code; this module is this project's reading:

* **Perception** (:class:`SoftPromptRouter`): PEFT prompt tuning's :class:`~peft.PromptEmbedding`
  (``num_virtual_tokens`` trainable embeddings, configured by a :class:`~peft.PromptTuningConfig` and initialised
  from sampled vocabulary embeddings) is put before the question's rendered user turn; the student runs frozen
  over ``[soft prompt; question]`` and a 2-way linear head reads its last hidden state (parameter-free layer norm
  first, so the head sees the same scale on every model). Class 0 is think-first (``standard``), class 1
  answer-first. The head starts at zero, so an untrained router ties and picks think-first: the plain CoT student.
  Only the soft prompt and the head train; the student's own weights (LoRA included) are frozen meanwhile.
* **Labels without annotation** (:func:`label_records`, ``router_label_rule``), from the *starting* student (before
  distillation), on the training records:

  - ``answer_correct`` (default): answer-first when the student's greedy continuation of ``{user turn}{answer
    phrase}`` is exactly the gold answer, i.e. it answers the item right with no rationale; else think-first;
  - ``answer_loss``: answer-first when the rationale does not lower the answer's loss by more than
    ``margin`` nats per answer token: ``nll(answer | q) - nll(answer | q, rationale) <= margin``; else think-first.

* **Training** (:func:`train_router`): cross-entropy on those labels, class-balanced (each mode weighs half, so
  a router cannot score well by always picking the majority mode), AdamW, mini-batches drawn by a private
  generator (the global RNG is untouched).

It lives beside the ``adaptive`` format (not in :mod:`trl_safedistill.methods`): it renders that format's prompts,
and the layer contract keeps formats and methods independent. Torch and PEFT are imported here only, never by
``trl_safedistill.formats`` itself. The router is saved beside the student adapter in ``router/`` (:data:`ROUTER_DIR`): PEFT's ``adapter_config.json``
(the prompt-tuning config), ``router.safetensors`` (soft prompt and head) and ``router.json`` (label rule, modes).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from peft import PromptEmbedding, PromptTuningConfig

from ..records import RationaleRecord
from .adaptive import ANSWER_FIRST, LABEL_RULES, MODES, THINK_FIRST
from .base import common_prefix_length, is_chat_tokenizer, render_prompt, user_text

#: The sub-folder of a saved student that holds its router.
ROUTER_DIR = "router"
WEIGHTS_FILE = "router.safetensors"
SETTINGS_FILE = "router.json"


def router_prompt(tokenizer: Any, question: str, description: str | None = None, chat: bool | None = None) -> str:
    """What the router reads: the question's rendered user turn, no assistant prefix (the same for both modes)."""
    return render_prompt(tokenizer, user_text(question, description), "", chat)


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode with every parameter frozen; both restored on exit."""
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    training = model.training
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for parameter, flag in flags:
            parameter.requires_grad_(flag)
        model.train(training)


class SoftPromptRouter(torch.nn.Module):
    """PEFT prompt-tuning embeddings plus a 2-way head over the frozen student: think-first or answer-first."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: torch.nn.Module | None = None,
                 label_rule: str = "answer_correct"):
        super().__init__()
        if label_rule not in LABEL_RULES:
            raise ValueError(f"router_label_rule must be one of {', '.join(LABEL_RULES)}, got '{label_rule}'")
        self.config = config
        self.label_rule = label_rule
        self.prompt = PromptEmbedding(config, word_embeddings)
        self.head = torch.nn.Linear(config.token_dim, len(MODES))
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def for_model(cls, model: Any, num_virtual_tokens: int = 8, seed: int = 0,
                  label_rule: str = "answer_correct") -> SoftPromptRouter:
        """A fresh router for ``model``: soft prompt sampled from its vocabulary embeddings (seeded), zero head."""
        embeddings = model.get_input_embeddings()
        config = PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=int(num_virtual_tokens),
            token_dim=embeddings.embedding_dim,
            num_transformer_submodules=1,
            prompt_tuning_init="SAMPLE_VOCAB",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            router = cls(config, embeddings, label_rule)
        return router.to(embeddings.weight.device)

    # ------------------------------------------------------------------------------------------- forward
    def encode(self, tokenizer: Any, prompts: Sequence[str], chat: bool | None = None) -> list[list[int]]:
        """Token ids of rendered router prompts (special tokens only for plain prompts, as in generation)."""
        special = not (is_chat_tokenizer(tokenizer) if chat is None else chat)
        return [list(tokenizer(prompt, add_special_tokens=special)["input_ids"]) for prompt in prompts]

    def logits_from_ids(self, model: Any, ids: Sequence[Sequence[int]], pad_id: int = 0) -> torch.Tensor:
        """``[batch, 2]`` mode logits: ``[soft prompt; question]`` right-padded through ``model``, head on the last token."""
        embeddings = model.get_input_embeddings()
        device = embeddings.weight.device
        virtual = self.config.num_virtual_tokens
        lengths = torch.tensor([len(row) for row in ids], device=device)
        width = int(lengths.max())
        input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long, device=device)
        attention = torch.zeros((len(ids), virtual + width), dtype=torch.long, device=device)
        attention[:, :virtual] = 1
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = torch.tensor(list(tokens), device=device)
            attention[row, virtual : virtual + len(tokens)] = 1
        tokens = embeddings(input_ids)
        soft = self.prompt(torch.arange(virtual, device=device)).to(tokens.dtype)
        inputs = torch.cat([soft.unsqueeze(0).expand(len(ids), -1, -1), tokens], dim=1)
        output = model(inputs_embeds=inputs, attention_mask=attention, output_hidden_states=True, use_cache=False,
                       logits_to_keep=1)
        last = output.hidden_states[-1][torch.arange(len(ids), device=device), virtual + lengths - 1].float()
        features = torch.nn.functional.layer_norm(last, (last.shape[-1],))
        return self.head(features.to(self.head.weight.device))

    @torch.no_grad()
    def decide(self, model: Any, tokenizer: Any, prompts: Sequence[str], chat: bool | None = None,
               batch_size: int = 8) -> list[str]:
        """The mode (``standard`` | ``answer_first``) for each rendered router prompt (:func:`router_prompt`)."""
        ids = self.encode(tokenizer, prompts, chat)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        modes: list[str] = []
        with frozen(model):
            for start in range(0, len(ids), batch_size):
                logits = self.logits_from_ids(model, ids[start : start + batch_size], pad)
                # argmax breaks a tie towards class 0, think-first
                modes.extend(MODES[int(index)] for index in logits.argmax(dim=-1).tolist())
        return modes

    # --------------------------------------------------------------------------------------- persistence
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``adapter_config.json`` (PEFT), ``router.safetensors`` and ``router.json`` into ``directory``."""
        from safetensors.torch import save

        from ..atomic import atomic_write, write_json

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(directory))
        tensors = {name: tensor.detach().float().cpu().contiguous() for name, tensor in self.state_dict().items()}
        atomic_write(directory / WEIGHTS_FILE, lambda handle: handle.buffer.write(save(tensors)))
        write_json(directory / SETTINGS_FILE, {"label_rule": self.label_rule, "modes": list(MODES)})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> SoftPromptRouter:
        """The router :meth:`save_pretrained` wrote into ``directory``."""
        from safetensors.torch import load_file

        directory = Path(directory)
        missing = [name for name in ("adapter_config.json", WEIGHTS_FILE, SETTINGS_FILE) if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a saved router (missing {', '.join(missing)})")
        config = PromptTuningConfig.from_pretrained(str(directory))
        config.inference_mode = True  # no vocabulary sampling: the weights come from the file
        settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        if tuple(settings.get("modes", ())) != MODES:
            raise ValueError(f"{directory}: router modes {settings.get('modes')} differ from this version's {list(MODES)}")
        router = cls(config, None, settings["label_rule"])
        router.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return router.to(device) if device is not None else router


# ------------------------------------------------------------------------------------------------ labels
@torch.no_grad()
def answer_scores(model: Any, tokenizer: Any, context: str, continuation: str,
                  chat: bool | None = None) -> tuple[float, bool]:
    """``(mean nll per continuation token, greedy?)`` of ``continuation`` after ``context``, teacher-forced.

    The continuation's tokens are what ``tokenize(context + continuation)`` adds after its common prefix with
    ``tokenize(context)`` (as the evaluation's scorer splits them); one forward, logits kept only for them.
    """
    special = not (is_chat_tokenizer(tokenizer) if chat is None else chat)
    context_ids = tokenizer(context, add_special_tokens=special)["input_ids"]
    full = list(tokenizer(context + continuation, add_special_tokens=special)["input_ids"])
    shared = max(1, min(common_prefix_length(context_ids, full), len(full) - 1))
    targets = full[shared:]
    device = model.get_input_embeddings().weight.device
    logits = model(input_ids=torch.tensor([full], device=device), use_cache=False,
                   logits_to_keep=len(targets) + 1).logits[0, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(targets, device=device)
    nll = -logprobs[torch.arange(len(targets), device=device), target]
    return float(nll.mean()), bool((logprobs.argmax(dim=-1) == target).all())


def label_records(model: Any, tokenizer: Any, records: Sequence[RationaleRecord], rule: str = "answer_correct", *,
                  answer_phrase: str = "Therefore, the answer is", margin: float = 0.0,
                  chat: bool | None = None) -> dict[str, str]:
    """Record id -> mode, the router's training labels under ``rule`` (module docstring), from ``model`` as it is."""
    if rule not in LABEL_RULES:
        raise ValueError(f"router_label_rule must be one of {', '.join(LABEL_RULES)}, got '{rule}'")
    chat = is_chat_tokenizer(tokenizer) if chat is None else chat
    labels: dict[str, str] = {}
    with frozen(model):
        for record in records:
            head = render_prompt(tokenizer, user_text(record.question, record.description), "", chat)
            continuation = f" {record.answer}"
            without, greedy = answer_scores(model, tokenizer, head + answer_phrase, continuation, chat)
            if rule == "answer_correct":
                answer_first = greedy
            else:
                with_rationale, _ = answer_scores(model, tokenizer, f"{head}{record.rationale}\n{answer_phrase}",
                                                  continuation, chat)
                answer_first = without - with_rationale <= margin
            labels[record.id] = ANSWER_FIRST if answer_first else THINK_FIRST
    return labels


def train_router(router: SoftPromptRouter, model: Any, tokenizer: Any, prompts: Sequence[str], labels: Sequence[str],
                 *, steps: int = 100, learning_rate: float = 1e-2, batch_size: int = 8, seed: int = 0,
                 chat: bool | None = None) -> dict[str, float]:
    """Fit ``router`` to ``labels`` (one mode per rendered router prompt); returns the final loss and accuracy.

    ``steps`` AdamW steps on mini-batches of ``batch_size`` prompts drawn without replacement within a step (a
    private generator seeded by ``seed``), class-balanced cross-entropy; ``model`` stays frozen.
    """
    if len(prompts) != len(labels) or not prompts:
        raise ValueError(f"train_router needs one label per prompt, got {len(prompts)} prompts and {len(labels)} labels")
    unknown = sorted(set(labels) - set(MODES))
    if unknown:
        raise ValueError(f"router labels must be modes {list(MODES)}, got {unknown}")
    ids = router.encode(tokenizer, prompts, chat)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = router.head.weight.device
    target = torch.tensor([MODES.index(label) for label in labels], device=device)
    counts = torch.bincount(target, minlength=len(MODES)).float()
    weight = torch.where(counts > 0, len(labels) / (len(MODES) * counts.clamp(min=1)), torch.zeros_like(counts))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(router.parameters(), lr=learning_rate, weight_decay=0.0)
    router.train()
    loss = torch.tensor(float("nan"))
    with frozen(model):
        for _ in range(steps):
            batch = torch.randperm(len(ids), generator=generator)[:batch_size].tolist()
            logits = router.logits_from_ids(model, [ids[i] for i in batch], pad)
            loss = torch.nn.functional.cross_entropy(logits, target[batch], weight=weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    router.eval()
    decided = router.decide(model, tokenizer, prompts, chat, batch_size)
    accuracy = sum(d == label for d, label in zip(decided, labels)) / len(labels)
    return {"loss": float(loss.detach()), "accuracy": accuracy,
            "answer_first_fraction": list(labels).count(ANSWER_FIRST) / len(labels)}


def mode_counts(modes: Mapping[str, str] | Sequence[str]) -> dict[str, int]:
    """How many of ``modes`` (a label mapping or a list) are each mode."""
    values = list(modes.values()) if isinstance(modes, Mapping) else list(modes)
    return {mode: values.count(mode) for mode in MODES}
