"""The demo's console: its progress lines and nothing else, unless ``--verbose``.

The libraries the demo drives each talk on their own: the Trainer prints every log dict (``PrinterCallback``),
transformers and datasets draw progress bars while loading, saving and tokenizing, lm-eval draws a tqdm bar per task
and logs INFO lines, bitsandbytes warns at import that an optional CPU kernel package is missing, and deprecation
notices of one library about another (``FutureWarning``) repeat at every stage. :func:`quiet_console` turns these off
at their source: the environment variables each library reads (set before ``tqdm``, transformers or bitsandbytes is
first imported, and inherited by the spawned evaluation workers), their loggers' levels, the runtime switches of
their progress bars, and a warnings filter for library deprecation notices. The Trainer's printer is removed from
each training stage's trainer (:func:`~.training.quiet_trainer`); what it printed stays in ``log_history`` and in
every checkpoint's ``trainer_state.json``. Generated text never reaches the console either way.

This module imports only the standard library, so that :func:`quiet_console` can run before anything else loads.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: environment switches read by the libraries (most when first imported): tqdm's default ``disable``, the Hugging Face
#: progress bars (transformers' loading/saving bars, datasets' map bars), transformers' and lm-eval's log levels
QUIET_ENVIRONMENT = {
    "TQDM_DISABLE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "LMEVAL_LOG_LEVEL": "ERROR",
}

#: loggers kept to errors: libraries that log INFO/WARNING lines meant for their developers
#: (``kernels``: transformers >= 5.25 loads bitsandbytes' hub kernel through it, which warns on every load in offline
#: mode that it skips the publisher trust check)
QUIET_LOGGERS = ("transformers", "datasets", "huggingface_hub", "lm_eval", "lm-eval", "bitsandbytes", "peft", "trl",
                 "accelerate", "torch", "kernels")

#: loggers that set their own level and handler when imported, so a level set beforehand does not hold: DeepSpeed's
#: ``LoggerFactory.create_logger`` calls ``setLevel(WARNING)`` and adds a handler that writes to *stdout* (its import
#: warns "Setting accelerator to CPU" on a CPU machine). A filter on the logger survives both.
FILTERED_LOGGERS = ("DeepSpeed",)

_quiet = False


class _ErrorsOnly(logging.Filter):
    """Let through records at ERROR and above."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def quiet_console() -> None:
    """Silence library output in this process and in the processes it spawns later (see the module doc).

    Call it first, before transformers, datasets or lm-eval is imported: tqdm reads ``TQDM_DISABLE`` once, at import.
    Values the user set in the environment are kept.
    """
    global _quiet
    _quiet = True
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in FILTERED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _ErrorsOnly) for f in logger.filters):
            logger.addFilter(_ErrorsOnly())
    # Deprecation notices between libraries (e.g. transformers about its own renamed arguments, read by TRL and PEFT):
    # nothing the demo's user can act on
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    if "transformers" in sys.modules:  # already imported (an in-process caller): switch its bars off at runtime too
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()


def is_quiet() -> bool:
    """Whether :func:`quiet_console` ran in this process (a spawned worker is told through its initializer)."""
    return _quiet
