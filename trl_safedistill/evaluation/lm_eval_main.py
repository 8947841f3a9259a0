"""``python -m trl_safedistill.evaluation.lm_eval_main run ...``: lm-eval's own CLI with ``safedistill-hf`` registered.

lm-eval has no plugin entry points, so a model class registers only once its module is imported; this
module imports :mod:`.lm` and then hands over to ``lm_eval``'s CLI unchanged, e.g.::

    python -m trl_safedistill.evaluation.lm_eval_main run --model safedistill-hf \\
        --model_args pretrained=embedded-default,format=cascade --include_path eval_tasks \\
        --tasks safedistill_safety,safedistill_ind --limit 8 --output_path out --log_samples

Plain ``lm_eval --model hf --include_path eval_tasks --tasks ...`` also works (no format rendering).
"""

from __future__ import annotations

import os

from . import lm  # noqa: F401  (registers "safedistill-hf")


def main() -> None:
    """Run lm-eval's CLI under umask 077: every file it creates is owner-only (0600), every folder 0700.

    ``--log_samples`` writes the model's responses to the harmful prompts of the safety tasks; lm-eval opens its
    files with plain ``open``, so the umask is the only way to keep them private. The caller's umask is restored.
    """
    from lm_eval.__main__ import cli_evaluate

    previous = os.umask(0o077)
    try:
        cli_evaluate()
    finally:
        os.umask(previous)


if __name__ == "__main__":
    main()
