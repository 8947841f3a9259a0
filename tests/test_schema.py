"""metrics.json validation (jsonschema): a tiny run's metrics (schema 2, the protocol's layout) validate, malformed
copies fail naming the path. ``tests/data/metrics_tiny.json`` is a `demo --size tiny` run's metrics.json cut to three
models (regenerate it with the demo after a schema change)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
from jsonschema.validators import validator_for

from trl_safedistill.experiments.schema import SchemaError, load_schema, validate, validate_file

COMMITTED = Path(__file__).resolve().parent / "data" / "metrics_tiny.json"


@pytest.fixture(scope="module")
def metrics():
    return json.loads(COMMITTED.read_text(encoding="utf-8"))


def test_schema_is_a_valid_schema_of_its_declared_draft():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert validator_for(schema) is jsonschema.Draft202012Validator
    jsonschema.Draft202012Validator.check_schema(schema)


def test_committed_default_run_validates(metrics):
    assert validate_file(COMMITTED) == metrics
    validate(metrics)


@pytest.mark.parametrize(
    ("edit", "path", "reason"),
    [
        (lambda m: m["models"][1]["safety"].pop("refusal"), r"^\$\.models\[1\]\.safety: ",
         "'refusal' is a required property"),
        (lambda m: m["models"][1]["metrics"].pop("ood_mc_acc"), None, None),  # not required: not measured at every size
        (lambda m: m.pop("gate"), r"^\$: ", "'gate' is a required property"),
        (lambda m: m["models"][1].pop("items"), r"^\$\.models\[1\]: ", "'items' is a required property"),
        (lambda m: m["models"][0]["curve"][0].__setitem__("refusal", 1.5),
         r"^\$\.models\[0\]\.curve\[0\]\.refusal: ", "greater than the maximum of 1"),
        (lambda m: m["models"][2].__setitem__("format", "cot"), r"^\$\.models\[2\]\.format: ", "is not one of"),
        (lambda m: m.pop("judge"), r"^\$: ", "'judge' is a required property"),
        (lambda m: m["models"][1]["safety"]["refusal"].__setitem__("value", 1.5),
         r"^\$\.models\[1\]\.safety\.refusal\.value: ", "greater than the maximum of 1"),
        (lambda m: m.__setitem__("extra", 1), r"^\$: ", "'extra' was unexpected"),
        (lambda m: m["run"].__setitem__("peft", "yes"), r"^\$\.run\.peft: ", "is not of type 'boolean'"),
        (lambda m: m["data"].__setitem__("train_records", -1), r"^\$\.data\.train_records: ", "less than the minimum"),
    ],
)
def test_malformed_metrics_name_the_json_path(metrics, edit, path, reason):
    broken = copy.deepcopy(metrics)
    edit(broken)
    if path is None:
        validate(broken)  # the schema lets a model miss an optional metric
        return
    with pytest.raises(SchemaError, match=path) as raised:
        validate(broken)
    assert any(part in str(raised.value) for part in reason.split("|")), str(raised.value)


def test_several_errors_report_one_and_count_the_rest(metrics):
    broken = copy.deepcopy(metrics)
    broken["run"]["peft"] = "yes"
    broken["data"]["train_records"] = -1
    with pytest.raises(SchemaError, match=r"\(and 1 more schema errors\)$"):
        validate(broken)


def test_validate_file_names_the_file_and_the_line(tmp_path, metrics):
    bad = tmp_path / "metrics.json"
    bad.write_text('{\n  "schema_version": 1,\n  "run": ,\n}\n')
    with pytest.raises(SchemaError, match=rf"^{bad}:3: not valid JSON"):
        validate_file(bad)
    broken = copy.deepcopy(metrics)
    del broken["evidence"]
    bad.write_text(json.dumps(broken))
    with pytest.raises(SchemaError, match=rf"^{bad}: \$: 'evidence' is a required property"):
        validate_file(bad)
