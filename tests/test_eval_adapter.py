"""``trl-safedistill eval --adapter DIR`` checks that DIR is a PEFT adapter before it loads anything.

Before the check, a folder that was not an adapter (a full model, a run's trainer folder) was found out only after
the base model row had been evaluated for minutes, with a 51-line traceback from PEFT.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture
def nothing_loads(monkeypatch):
    """Makes loading a model or tokenizer, or evaluating, fail the test: the command must stop before any of it."""
    import transformers

    import trl_safedistill.models
    from trl_safedistill.evaluation import run

    def forbidden(*args, **kwargs):
        raise AssertionError("loaded or evaluated a model before validating --adapter")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(trl_safedistill.models, "resolve_model_path", forbidden)
    monkeypatch.setattr(trl_safedistill.models, "load_tokenizer", forbidden)
    monkeypatch.setattr(run, "evaluate_model", forbidden)


def _eval(model, adapter, output):
    from trl_safedistill.cli import main

    return main(["eval", "--model", str(model), "--adapter", f"{adapter}@cascade", "--suites", "safety", "--limit", "1",
                 "--output", str(output)])


def test_a_full_model_folder_given_as_adapter_fails_before_loading(tiny_model_dir, tmp_path, capsys, nothing_loads):
    assert _eval(tiny_model_dir, tiny_model_dir, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    assert str(tiny_model_dir) in err and "not a PEFT adapter folder" in err
    assert "no adapter_config.json" in err and "adapter_model.safetensors" in err
    assert "pass that as --model" in err  # it holds config.json: the user meant --model
    assert not (tmp_path / "out").exists()


def test_an_adapter_without_weights_or_with_a_broken_config_is_named(tiny_model_dir, tmp_path, capsys, nothing_loads):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    assert _eval(tiny_model_dir, no_weights, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(no_weights) in err and "no adapter_model.safetensors or adapter_model.bin" in err
    assert "adapter_config.json" not in err.split("folder:", 1)[1]  # the config is fine: only the weights are named

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"peft_type": "LORA",')
    (broken / "adapter_model.safetensors").write_bytes(b"")
    assert _eval(tiny_model_dir, broken, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "adapter_config.json is not readable (JSONDecodeError" in err
    assert len(err.strip().splitlines()) == 1, err


def test_an_adapter_saved_by_peft_passes_the_check(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trl_safedistill.evaluation.cli import check_adapter

    adapter_dir = tmp_path / "adapter"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(adapter_dir)
    check_adapter(str(adapter_dir), f"--adapter {adapter_dir}")  # no error
    (adapter_dir / "adapter_model.safetensors").rename(adapter_dir / "adapter_model.bin")
    check_adapter(str(adapter_dir), f"--adapter {adapter_dir}")  # the legacy weights file is an adapter too
