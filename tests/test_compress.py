"""Rationale compression: requested fraction, protected tokens, self-information, the ``compressed`` format."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
import torch

from trl_safedistill.data.compress import (
    PROTECTED_CHARS,
    SelfInformationScorer,
    compress_rationale,
    main,
)
from trl_safedistill.data.synthetic import generate
from trl_safedistill.formats.base import Segment, tokenize_sequence
from trl_safedistill.formats.compressed import CompressedFormat, choose_ratio, load_compressed, ratio_key
from trl_safedistill.records import RationaleRecord, write_records

RATIOS = (0.5, 0.6, 0.7, 0.8, 0.9)

PLAIN = RationaleRecord(
    id="plain",
    question="Which colour is the sky on a clear day?",
    rationale=(
        "On a clear day sunlight is scattered by the air, and the short blue waves are scattered the most, "
        "so when we look up we mostly see that scattered light coming from every direction of the sky."
    ),
    answer="blue",
)


@pytest.fixture
def scorer(tiny_tokenizer, tiny_model):
    return SelfInformationScorer(model_obj=tiny_model, tokenizer=tiny_tokenizer, batch_size=4)


def protected_words(record: RationaleRecord) -> list[str]:
    answer = {w.strip(".,()").lower() for w in record.answer.split()}
    return [
        w
        for w in record.rationale.split()
        if PROTECTED_CHARS.search(w) or w.strip(".,()\"'").lower() in answer or re.fullmatch(r"\W*[A-Z]\W*", w)
    ]


def test_token_unit_keeps_exactly_the_requested_fraction(scorer):
    (tokens,) = scorer.score([PLAIN])
    total = len(tokens)
    for g in RATIOS:
        result = compress_rationale(PLAIN, tokens, g, unit="token")
        protected = sum(1 for w in PLAIN.rationale.split() if w.strip(".,").lower() == "blue")
        assert result.total_tokens == total
        assert result.kept_tokens == max(round(g * total), protected), g
    assert compress_rationale(PLAIN, tokens, 1.0).text == PLAIN.rationale


def test_word_unit_keeps_the_fraction_within_one_word(scorer, tiny_tokenizer):
    (tokens,) = scorer.score([PLAIN])
    longest = max(len(tiny_tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in PLAIN.rationale.split())
    for g in RATIOS:
        result = compress_rationale(PLAIN, tokens, g, unit="word")
        assert result.budget - longest < result.kept_tokens <= result.budget, g
        retokenized = len(tiny_tokenizer(result.text, add_special_tokens=False)["input_ids"])
        assert abs(retokenized - result.kept_tokens) <= 0.1 * result.total_tokens + 2
        words = result.text.split()
        original = PLAIN.rationale.split()
        position = 0
        for word in words:  # kept words appear in their original order
            position = original.index(word, position) + 1


@pytest.mark.parametrize("unit", ["word", "token"])
def test_digits_operators_and_the_answer_are_never_dropped(scorer, unit):
    records = [*generate("multistep_arithmetic", 4, seed=1), *generate("date_arithmetic", 3, seed=1), *generate("object_tracking", 2, seed=1)]
    records.append(PLAIN)
    records.append(RationaleRecord("vars", "q", "Let A be the left part and B the right part, so A and B give the total.", "A"))
    for record, tokens in zip(records, scorer.score(records)):
        for g in (0.5, 0.7):
            text = compress_rationale(record, tokens, g, unit=unit).text
            if unit == "word":
                assert Counter(protected_words(record)) <= Counter(text.split()), record.id
            digits_before = re.findall(r"[0-9+\-*/=<>]", record.rationale)
            assert re.findall(r"[0-9+\-*/=<>]", text) == digits_before, record.id
            if record.answer == "blue":
                assert text.lower().count("blue") == record.rationale.lower().count("blue")


def test_self_information_matches_a_direct_forward_pass(scorer, tiny_tokenizer):
    (tokens,) = scorer.score([PLAIN])
    prefix = [tiny_tokenizer.bos_token_id] + tiny_tokenizer(f"Q: {PLAIN.question}\nA:", add_special_tokens=False)["input_ids"]
    ids = tiny_tokenizer(" " + PLAIN.rationale, add_special_tokens=False)["input_ids"]
    full = torch.tensor([prefix + ids])
    with torch.no_grad():
        logp = torch.log_softmax(scorer.model(full).logits[0, :-1].float(), -1)
    expected = [-logp[len(prefix) - 1 + i, t].item() for i, t in enumerate(ids)]
    assert [round(t.score, 4) for t in tokens] == [round(v, 4) for v in expected]
    assert "".join(PLAIN.rationale[t.start : t.end] for t in tokens).strip() == PLAIN.rationale


def test_compressed_format_states_g_and_targets_the_compressed_rationale(tmp_path, tiny_tokenizer, tiny_model_dir):
    records = [*generate("boolean_expressions", 6, seed=2), PLAIN]
    source = tmp_path / "records.jsonl"
    write_records(source, records)
    out = tmp_path / "compressed.jsonl"
    assert main(["--input", str(source), "--out", str(out), "--model", str(tiny_model_dir), "--ratios", "0.5,0.7,1", "--no-progress"]) == 0
    report = json.loads((tmp_path / "compressed.jsonl.report.json").read_text())
    assert report["tokens_per_rationale"]["0.5"] < report["tokens_per_rationale"]["0.7"] < report["tokens_per_rationale"]["1"]
    loaded = load_compressed(out)
    assert [r.id for r in loaded] == [r.id for r in records]
    assert set(loaded[0].compressed) == {"0.5", "0.7"}

    fmt = CompressedFormat(ratios=(0.5, 0.7, 1.0), compressions=out)
    chosen = Counter()
    for record in records:  # plain records: compressions come from the output file
        g = choose_ratio(record.id, fmt.ratios)
        assert g == choose_ratio(record.id, fmt.ratios)  # deterministic per id
        chosen[g] += 1
        (sequence,) = fmt.sequences(record)
        assert sequence.user_text.endswith(f"Compression ratio: {ratio_key(g)}")
        rationale, answer = sequence.targets
        expected = record.rationale if g == 1.0 else fmt.compressions[record.id][ratio_key(g)]
        assert rationale.text == expected and rationale.segment == Segment.RATIONALE
        assert answer.text == f"\nTherefore, the answer is {record.answer}." and answer.segment == Segment.ANSWER
        tokenized = tokenize_sequence(tiny_tokenizer, sequence)
        assert Segment.ANSWER in tokenized["segment_ids"]
    assert len(chosen) >= 2
    assert CompressedFormat(ratios=(0.5, 0.7, 1.0)).sequences(loaded[0])  # records loaded with their compressions work alone
    with pytest.raises(ValueError, match="no rationale compressed at ratio"):
        missing = next(r for r in records if choose_ratio(r.id, (0.5, 0.9)) == 0.9)
        CompressedFormat(ratios=(0.5, 0.9), compressions=out).sequences(missing)


def test_compress_cli_rejects_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "question": "Q?", "rationale": "r", "answer": "1"}\n{"id": "b", "question": "Q?"}\n')
    assert main(["--input", str(bad), "--out", str(tmp_path / "o.jsonl"), "--no-progress"]) == 2
    assert f"{bad}:2: field 'rationale'" in capsys.readouterr().err
    assert main(["--input", str(bad), "--out", str(tmp_path / "o.jsonl"), "--ratios", "0,1.5"]) == 2


def test_compress_stats_match_token_counts_computed_here(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    records = [*generate("multistep_arithmetic", 3, seed=3), PLAIN]
    source = tmp_path / "records.jsonl"
    write_records(source, records)
    out = tmp_path / "c.jsonl"
    assert main(["--input", str(source), "--out", str(out), "--model", str(tiny_model_dir), "--ratios", "0.5,0.8", "--no-progress"]) == 0
    stats = json.loads((tmp_path / "c.jsonl.report.json").read_text())

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the scorer's tokenizer, loaded independently
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {r.id: r for r in records}
    counts = {key: [] for key in ("1", "0.8", "0.5")}
    for row in rows:
        assert row["rationale"] == by_id[row["id"]].rationale
        counts["1"].append(len(tokenizer(row["rationale"], add_special_tokens=False)["input_ids"]))
        for key in ("0.8", "0.5"):
            counts[key].append(len(tokenizer(row["compressed"][key], add_special_tokens=False)["input_ids"]))
    n = len(records)
    assert stats["records"] == n and stats["ratios"] == [0.5, 0.8]
    assert stats["tokenizer"] == str(tiny_model_dir)
    for key, values in counts.items():
        assert stats["tokens_per_rationale"][key] == pytest.approx(sum(values) / n), key
        assert stats["keep_ratio"][key] == pytest.approx(sum(values) / sum(counts["1"])), key
        per_record = [v / b for v, b in zip(values, counts["1"])]
        assert stats["mean_keep_ratio"][key] == pytest.approx(sum(per_record) / n), key
    assert stats["keep_ratio"]["1"] == 1.0
    assert stats["keep_ratio"]["0.5"] < stats["keep_ratio"]["0.8"] < 1.0


def test_compressed_prompt_at_inference_states_the_configured_ratio(tiny_model, tiny_tokenizer):
    from lm_eval.api.instance import Instance

    from trl_safedistill.evaluation.lm import SafeDistillLM
    from trl_safedistill.formats.base import render_prompt, user_text

    doc = {"question": PLAIN.question, "description": "Answer briefly.", "prompt_style": "format"}
    request = Instance("generate_until", doc, (user_text(doc["question"], doc["description"]), {"until": [], "max_gen_toks": 1}),
                       0, ("safedistill_bbh_mix", 0, 1))
    seen = []
    real_generate = tiny_model.generate

    def spy(**kwargs):
        seen.append(tiny_tokenizer.decode(kwargs["input_ids"][0]))
        return real_generate(**kwargs)

    tiny_model.generate = spy
    record = RationaleRecord("r", PLAIN.question, PLAIN.rationale, PLAIN.answer, description="Answer briefly.")
    # the prompt the student saw in training for a record drawn at g = 0.6
    (training,) = CompressedFormat(ratios=(0.6,), compressions={"r": {"0.6": "x"}}).sequences(record)
    for model_arg, expected in (("0.6", "0.6"), (None, "1")):
        lm = SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="compressed", compression_ratio=model_arg)
        assert lm.fmt.inference_ratio == float(expected)
        lm.generate_until([request])
        prompt = seen[-1]
        assert f"\nCompression ratio: {expected}" in prompt
        if expected == "0.6":
            assert prompt == render_prompt(tiny_tokenizer, training.user_text, training.assistant_prefix)
        else:
            assert "Compression ratio: 0.6" not in prompt
    with pytest.raises(ValueError, match="compressed format only"):
        SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="standard", compression_ratio=0.6)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SafeDistillLM(pretrained=tiny_model, tokenizer=tiny_tokenizer, format="compressed", compression_ratio=1.5)
