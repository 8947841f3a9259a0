"""Which Trainer checkpoint a run may resume from: only a complete one, and the newest such.

transformers' ``get_last_checkpoint`` returns the ``checkpoint-N`` folder with the largest N, whatever it
holds, so a process killed while writing a checkpoint leaves a folder that blocks every later resume
("Can't find a valid checkpoint at ..."). transformers 5.24 writes a checkpoint in place, in this order
(``Trainer._save_checkpoint``, then the callbacks' ``on_save``):

0. with :class:`~trl_safedistill.trainer.SafeDistillTrainer` and slow tuning on: the anchor
   ``slow_tuning_anchor.safetensors`` and then ``slow_tuning_state.json``
   (:mod:`trl_safedistill.methods.slow_tuning`; the trainer's ``_save_checkpoint`` writes them first),
1. the weights (``save_model``: ``model.safetensors`` or its shard index, or ``adapter_model.safetensors``
   for PEFT, with the config and tokenizer files),
2. ``optimizer.pt``, ``scheduler.pt``, the scaler and ``rng_state*.pth`` (unless ``save_only_model``),
3. ``trainer_state.json``, then rotation of older checkpoints (``save_total_limit``),
4. what callbacks add in ``on_save`` (slow tuning's callback used with a plain ``SFTTrainer`` writes its two files
   here, after rotation).

transformers offers no write-to-temporary-then-rename for checkpoints, so completeness is read from what
is there: a folder is complete when it has weights, a ``trainer_state.json`` that parses and names the
folder's own step, and every file the run's callbacks add (:func:`callback_files`), the JSON ones parsing.
Each of these is written after everything before it, so a kill at any point leaves a folder this rejects.

:func:`resolve_resume` turns a run's settings (``resume_from_checkpoint``, an ``overwrite_output_dir`` flag)
into the checkpoint to pass to ``Trainer.train`` and a one-line message saying what was decided.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import (
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from .errors import UserError

#: Written by ``Trainer._save_checkpoint`` after the weights, optimizer, scheduler and RNG states.
TRAINER_STATE_NAME = "trainer_state.json"
#: Any one of these is the checkpoint's weights (full model, sharded full model, or a PEFT adapter).
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME,
                ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME)
#: ``--resume_from_checkpoint`` values meaning "the newest complete checkpoint in output_dir".
TRUE_WORDS = frozenset({"true", "yes", "1"})
#: ``--resume_from_checkpoint`` values meaning "do not resume" (as ``Trainer.train(resume_from_checkpoint=False)``).
FALSE_WORDS = frozenset({"false", "no", "0"})

_STEP = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class CheckpointError(UserError):
    """A requested resume cannot be done; the message is one line naming the folder and the fix."""


def checkpoint_step(path: str | Path) -> int | None:
    """N of a ``checkpoint-N`` folder name (``None`` for any other name)."""
    match = _STEP.match(Path(path).name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``output_dir``, oldest step first (empty when there is no such folder)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def callback_files(args: Any) -> tuple[str, ...]:
    """Files this project's callbacks write into every checkpoint under training arguments ``args``.

    Slow tuning (``slow_tuning_rule`` other than ``off``) adds its anchor and, last, its state; without them a
    resumed run cannot restore the anchor W0, so a checkpoint lacking them is not one to resume from.
    """
    if getattr(args, "slow_tuning_rule", "off") in (None, "off"):
        return ()
    from .methods.slow_tuning import ANCHOR_FILE, STATE_FILE

    return (ANCHOR_FILE, STATE_FILE)


def missing_part(path: str | Path, extra_files: Iterable[str] = ()) -> str | None:
    """Why ``path`` is not a complete checkpoint (a short phrase), or ``None`` when it is complete.

    ``extra_files``: files the run's callbacks add (:func:`callback_files`); ``.json`` ones must parse.
    """
    folder = Path(path)
    if not folder.is_dir():
        return "no such folder"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return "no model weights"
    state_path = folder / TRAINER_STATE_NAME
    if not state_path.is_file():
        return f"no {TRAINER_STATE_NAME}"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{TRAINER_STATE_NAME} is cut short"
    step = checkpoint_step(folder)
    if step is not None and state.get("global_step") != step:
        return f"{TRAINER_STATE_NAME} is of step {state.get('global_step')}"
    for name in extra_files:
        extra = folder / name
        if not extra.is_file():
            return f"no {name}"
        if name.endswith(".json"):
            try:
                json.loads(extra.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return f"{name} is cut short"
    return None


def is_complete_checkpoint(path: str | Path, extra_files: Iterable[str] = ()) -> bool:
    """Whether ``path`` is a checkpoint whose every part was written (see the module docstring)."""
    return missing_part(path, extra_files) is None


@dataclass(frozen=True)
class CheckpointScan:
    """The newest complete checkpoint of a folder, and the incomplete ones newer than it (with why)."""

    newest: Path | None
    skipped: tuple[tuple[Path, str], ...] = ()

    def skipped_text(self) -> str:
        """``checkpoint-20 (no trainer_state.json), ...`` for a one-line message ("" when none was skipped)."""
        return ", ".join(f"{path.name} ({why})" for path, why in self.skipped)


def newest_complete_checkpoint(output_dir: str | Path, extra_files: Iterable[str] = ()) -> CheckpointScan:
    """The newest complete ``checkpoint-N`` in ``output_dir`` and the incomplete newer ones it skipped."""
    extra_files = tuple(extra_files)
    skipped: list[tuple[Path, str]] = []
    for path in reversed(list_checkpoints(output_dir)):
        why = missing_part(path, extra_files)
        if why is None:
            return CheckpointScan(path, tuple(skipped))
        skipped.append((path, why))
    return CheckpointScan(None, tuple(skipped))


@dataclass(frozen=True)
class ResumeDecision:
    """What a run does with ``output_dir``: resume from ``checkpoint`` (``None``: from step 0).

    ``message``: one line saying so (``None`` when there is nothing to say: a fresh folder). ``remove``: folders of
    a previous run to delete before training (``overwrite_output_dir``), on the main process only.
    """

    checkpoint: str | None
    message: str | None = None
    remove: tuple[Path, ...] = field(default=())


def resolve_resume(output_dir: str | Path, resume_from_checkpoint: str | bool | None, *, overwrite: bool = False,
                   extra_files: Iterable[str] = ()) -> ResumeDecision:
    """The checkpoint a run resumes from, by the rules of ``trl-safedistill train``.

    * ``resume_from_checkpoint`` unset: resume from the newest complete checkpoint in ``output_dir`` if there is
      one, else start from step 0 (incomplete checkpoints are skipped and named in the message);
    * ``true`` (or ``True``): the same, but finding no complete checkpoint is an error;
    * a path: used as given if it is a complete checkpoint, else an error;
    * ``false``: start from step 0, allowed only where there are no checkpoints (else use ``overwrite``);
    * ``overwrite``: start from step 0 and remove the ``checkpoint-N`` folders of the previous run (they would
      otherwise be taken for this run's by a later resume, or mixed with it).

    Raises :class:`CheckpointError` (one line) for a request that cannot be met.
    """
    extra_files = tuple(extra_files)
    requested = resume_from_checkpoint
    if isinstance(requested, str) and requested.strip().lower() in TRUE_WORDS:
        requested = True
    if isinstance(requested, str) and not requested.strip():
        requested = None
    if requested is False or (isinstance(requested, str) and requested.strip().lower() in FALSE_WORDS):
        if list_checkpoints(output_dir) and not overwrite:
            raise CheckpointError(f"--resume_from_checkpoint {resume_from_checkpoint}: {output_dir} holds checkpoints; "
                                  "pass --overwrite_output_dir to start from step 0 (and remove them)")
        requested = None
    if overwrite:
        if requested is not None:
            raise CheckpointError(
                f"--overwrite_output_dir and --resume_from_checkpoint {resume_from_checkpoint} contradict each other: "
                "drop one of them"
            )
        old = tuple(list_checkpoints(output_dir))
        message = (f"--overwrite_output_dir: starting from step 0, removing {len(old)} checkpoint(s) of the previous run "
                   f"in {output_dir}") if old else None
        return ResumeDecision(None, message, old)
    if requested is None or requested is True:
        scan = newest_complete_checkpoint(output_dir, extra_files)
        skipped = f" (skipped incomplete {scan.skipped_text()})" if scan.skipped else ""
        if scan.newest is not None:
            return ResumeDecision(str(scan.newest), f"resuming from {scan.newest}{skipped}; --overwrite_output_dir "
                                                    "starts from step 0 instead")
        if requested is True:
            raise CheckpointError(f"--resume_from_checkpoint true: no complete checkpoint in {output_dir}{skipped}; "
                                  "drop the flag to start from step 0")
        return ResumeDecision(None, f"no complete checkpoint in {output_dir}{skipped}: starting from step 0"
                              if skipped else None)
    path = Path(str(requested)).expanduser()
    why = missing_part(path, extra_files)
    if why is not None:
        raise CheckpointError(f"--resume_from_checkpoint {requested}: not a complete checkpoint ({why}); pass a "
                              f"complete checkpoint-N folder, or true for the newest complete one in output_dir")
    return ResumeDecision(str(path), f"resuming from {path}")
