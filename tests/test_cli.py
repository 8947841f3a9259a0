"""The ``trl-safedistill`` dispatcher: ``--help`` of every command, one-line user errors, ``--debug``."""

from __future__ import annotations

import pytest

from trl_safedistill.cli import COMMANDS, main
from trl_safedistill.errors import EXIT_USER_ERROR, UserError

SUBCOMMANDS = [["guard", "augment"], ["guard", "distill"], ["guard", "eval"], ["data", "prepare"]]


@pytest.mark.parametrize("command", [[name] for name in COMMANDS] + SUBCOMMANDS, ids=" ".join)
def test_help_of_every_command_and_subcommand(command, capsys):
    """``--help`` prints the command's options and exits 0 (``train --help`` crashed on a '%' in a help string)."""
    try:
        status = main([*command, "--help"])
    except SystemExit as exit_:
        status = exit_.code
    assert status in (0, None)
    out = capsys.readouterr().out
    assert out.strip() and "usage" in out.lower()


def test_top_level_help_names_every_command_and_the_debug_flag(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "--debug" in out


def recipe(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


BASE = "model_name_or_path: embedded-default\noutput_dir: {out}\n"

# (recipe body after the two base lines, text the one line must hold); the bad key is on line 3
TRAIN_MISTAKES = [
    ("learning_rate: abc\n", "{path}:3: learning_rate: invalid float value: 'abc'"),
    ("distill_format: bogus\n", "{path}:3: distill_format must be one of"),
    ("cascade_alpha: 3\n", "{path}:3: cascade_alpha must lie in [0, 1]"),
    ("bogus_key: 1\n", "{path}:3: unknown key 'bogus_key'"),
    ("overlong: sometimes\n", "{path}:3: overlong must be one of error, skip, truncate_rationale, truncate"),
    ("dataset_name: missing.jsonl\n", "dataset_name: missing.jsonl: file not found"),
    ("column_map: '{{x'\n", "column_map: not valid JSON"),
    ("learning_rate: [1\n", "{path}:4: not valid YAML"),
]


def one_error_line(err: str, command: str) -> str:
    """The single line a user error prints; nothing else of ours, no traceback and no usage dump."""
    lines = [line for line in err.splitlines() if line.startswith(f"trl-safedistill {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "usage:" not in err
    return lines[0]


@pytest.mark.parametrize(("body", "expected"), TRAIN_MISTAKES, ids=[m[0].split(":")[0] for m in TRAIN_MISTAKES])
def test_train_config_mistakes_are_one_line_naming_file_line_and_key(tmp_path, capsys, body, expected):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "out") + body)
    assert main(["train", "--config", path]) == EXIT_USER_ERROR
    assert expected.format(path=path) in one_error_line(capsys.readouterr().err, "train")


def test_flag_mistakes_name_the_flag(tmp_path, capsys):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "out"))
    assert main(["train", "--config", path, "--learning-rate", "fast"]) == EXIT_USER_ERROR
    assert "--learning_rate: invalid float value: 'fast'" in one_error_line(capsys.readouterr().err, "train")
    assert main(["train", "--config", path, "--no_such_flag", "1"]) == EXIT_USER_ERROR
    assert "unknown flag --no_such_flag" in one_error_line(capsys.readouterr().err, "train")


def test_missing_recipe_file_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "nope.yaml")
    assert main(["train", "--config", missing]) == EXIT_USER_ERROR
    assert f"{missing}: config file not found" in one_error_line(capsys.readouterr().err, "train")


def test_align_config_mistakes_are_one_line(tmp_path, capsys):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "out") + "n_harmful: many\n")
    assert main(["align", "--config", path]) == EXIT_USER_ERROR
    assert f"{path}:3: n_harmful: invalid int value: 'many'" in one_error_line(capsys.readouterr().err, "align")


def test_invalid_record_in_train_is_one_line_with_file_line_and_field(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"id": "a", "question": "q?", "rationale": "r", "answer": "1"}\n{"id": "b", "question": "q?"}\n')
    path = recipe(tmp_path, BASE.format(out=tmp_path / "out") + f"dataset_name: {data}\n")
    assert main(["train", "--config", path]) == EXIT_USER_ERROR
    assert f"{data}:2: field 'rationale'" in one_error_line(capsys.readouterr().err, "train")


@pytest.mark.parametrize("argv", [["--debug", "train"], ["train", "--debug"]], ids=["before", "after"])
def test_debug_anywhere_keeps_the_traceback(tmp_path, argv):
    path = recipe(tmp_path, BASE.format(out=tmp_path / "out") + "learning_rate: abc\n")
    with pytest.raises(UserError, match="learning_rate: invalid float value"):
        main([*argv, "--config", path])


@pytest.mark.parametrize(("model", "expected"), [
    ("/no/such/model", "model_name_or_path: /no/such/model: no such model folder"),
    ("nobody/no-such-model", "model_name_or_path: 'nobody/no-such-model' is not a local folder and not in the Hugging Face cache"),
])
def test_a_model_that_cannot_load_is_one_line_before_anything_loads(tmp_path, capsys, monkeypatch, model, expected):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = recipe(tmp_path, f"model_name_or_path: {model}\noutput_dir: {tmp_path / 'out'}\ndataset_name: mini\n")
    assert main(["train", "--config", path]) == EXIT_USER_ERROR
    assert expected in one_error_line(capsys.readouterr().err, "train")
