"""quiet_console's filter on loggers that reset their own level when imported (DeepSpeed writes its warnings to
stdout, which must hold only the demo's report path)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import logging, sys
    from trl_safedistill.experiments.console import quiet_console
    if sys.argv[1] == "quiet":
        quiet_console()
    # what DeepSpeed's LoggerFactory.create_logger does when it is imported
    logger = logging.getLogger("DeepSpeed")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream=sys.stdout))
    logger.warning("Setting accelerator to CPU.")
    logger.error("a real error")
""")


def _stdout(mode: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_a_logger_that_resets_its_level_and_writes_to_stdout_keeps_errors_only():
    assert _stdout("quiet") == ["a real error"]


def test_without_quiet_console_the_same_logger_prints_its_warning():  # the filter, not the set-up, silences it
    assert _stdout("verbose") == ["Setting accelerator to CPU.", "a real error"]


@pytest.mark.parametrize("module", ["trl_safedistill.cli", "trl_safedistill.experiments.demo",
                                    "trl_safedistill.experiments.sweep", "trl_safedistill.experiments.evidence",
                                    "trl_safedistill.experiments.align_calibration"])
def test_a_command_module_loads_no_progress_bar_library_before_quiet_console(module):
    """tqdm reads TQDM_DISABLE once, when it is imported: a command whose module imports it (through transformers)
    before its main() calls quiet_console draws lm-eval's bars anyway (the equal-effort sweep did, at every gate)."""
    script = f"import importlib, sys; importlib.import_module({module!r}); print(sorted(m for m in ('tqdm', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
