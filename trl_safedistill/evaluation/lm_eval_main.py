"""``python -m trl_safedistill.evaluation.lm_eval_main run ...``: lm-eval's own CLI with ``safedistill-hf`` registered.

lm-eval has no plugin entry points, so a model class registers only once its module is imported; this
module imports :mod:`.lm` and then hands over to ``lm_eval``'s CLI unchanged, e.g.::

    python -m trl_safedistill.evaluation.lm_eval_main run --model safedistill-hf \\
        --model_args pretrained=embedded-default,format=cascade --include_path eval_tasks \\
        --tasks safedistill_safety,safedistill_ind --limit 8 --output_path out --log_samples

Plain ``lm_eval --model hf --include_path eval_tasks --tasks ...`` also works (no format rendering).
"""

from __future__ import annotations

from . import lm  # noqa: F401  (registers "safedistill-hf")


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
