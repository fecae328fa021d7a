"""Typed stage settings (lmadapt.settings): each stage's --settings is a frozen dataclass whose fields, defaults and
docs are its slice of the config schema, and every job of config/config.yaml and config/paper.yaml reads the
settings its rule writes (the job layer's params) into it, each value as the JSON gave it."""
import dataclasses
import json
import shlex

import pytest

from conftest import REPO
from lmadapt.checks import load_config
from lmadapt.config import ConfigError, finetune_settings
from lmadapt.jobs import Jobs
from lmadapt.settings import STAGE_SETTINGS, read_settings, section_settings, settings_class, stage_settings_schema

STAGE_OF_RULE = {"extract": "extract", "probe": "probe", "bow": "bow", "icl": "icl", "teacher": "teacher",
                 "finetune": "finetune", "classifier": "finetune", "instruct": "instruct", "ppo": "ppo"}


def test_a_stage_s_fields_defaults_and_docs_are_its_schema_s():
    for stage in STAGE_SETTINGS:
        schema = stage_settings_schema(stage)
        fields = {f.name: f for f in dataclasses.fields(settings_class(stage)) if f.name != "raw"}
        assert list(fields) == list(schema["properties"]), stage
        for key, prop in schema["properties"].items():
            if "$ref" in prop:
                prop = schema["$defs"][prop["$ref"].rsplit("/", 1)[1]] | prop
            assert fields[key].metadata["default"] == prop.get("default"), (stage, key)
            assert fields[key].metadata["doc"] == prop.get("description", ""), (stage, key)
    # a nested object is a settings class of its own, filled with its schema's defaults
    mlp = stage_settings_schema("probe")["properties"]["mlp"]["properties"]
    settings = section_settings("probe", {"mlp": {"epochs": 3}})
    assert settings.mlp.epochs == 3 and settings.mlp.hidden == mlp["hidden"]["default"]
    assert settings.probes == ["logreg", "mlp"] and settings.raw == {"mlp": {"epochs": 3}}
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.probes = ["mlp"]
    changed = settings.updated(probes=["mlp"])
    assert changed.probes == ["mlp"] and changed.raw == {"mlp": {"epochs": 3}, "probes": ["mlp"]}
    # a key the section has but the stage does not compute with (a selection) is left out
    assert section_settings("icl", {"models": ["tiny"], "fit": "error"}).raw == {"fit": "error"}


def job_settings(config: dict) -> dict[tuple, dict]:
    """Every distinct --settings (with --run-settings where the rule passes them) of a config's jobs, by (stage,
    method): what each job's CLI reads."""
    jobs, out = Jobs(config), {}
    for rule, cells in jobs.cells().items():
        for cell in cells if rule in STAGE_OF_RULE else []:
            raw = json.loads(shlex.split(jobs.params(rule, cell)["settings"])[0]) | jobs.run_settings(rule, cell)
            method = "head" if rule == "classifier" else cell.get("method")
            out[(STAGE_OF_RULE[rule], method, json.dumps(raw, sort_keys=True))] = raw
    return out


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_every_job_reads_its_settings_with_each_value_as_given(name):
    config = load_config(REPO / "config" / name)
    seen = job_settings(config)
    assert {stage for stage, _, _ in seen} == set(STAGE_SETTINGS)  # every stage has jobs in both configs
    for (stage, method, _), raw in seen.items():
        settings = read_settings(stage, raw, method)
        assert settings.raw == raw
        for key, value in raw.items():
            got = getattr(settings, key)
            assert (got.raw if dataclasses.is_dataclass(got) else got) == value, (stage, key)


def test_a_missing_unknown_or_bad_setting_is_named():
    config = load_config(REPO / "config/config.yaml")
    run = {"checkpoint_every": 1, "keep_checkpoint": False}
    with pytest.raises(ConfigError, match="method lora_head needs finetune.lora"):
        read_settings("finetune", finetune_settings(config, "head") | run, "lora_head")
    bow = {"vectorizer": "count", "ngram_max": 1, "Cs": [1.0], "cv_folds": 2}
    with pytest.raises(ConfigError, match=r"^--settings: bow: unknown key 'nope' \(allowed: "):
        read_settings("bow", bow | {"nope": 1})
    with pytest.raises(ConfigError, match=r"^--settings: bow\.cv_folds: missing$"):
        read_settings("bow", {key: value for key, value in bow.items() if key != "cv_folds"})
    with pytest.raises(ConfigError, match=r"^--settings: bow\.ngram_max: 'two' is not of type 'integer'$"):
        read_settings("bow", bow | {"ngram_max": "two"})
