import json
import subprocess
import sys

import jsonschema
import pytest
import yaml

from conftest import PATTERNS, REPO, rte_task, write_config
from lmadapt.checks import check_config, load_config
from lmadapt.config import SCHEMA_PATH, ConfigError, load_schema
from lmadapt.methods import METHODS


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(REPO / "config" / name)
    assert config["tasks"]


def test_defaults_are_filled_from_the_schema():
    config = check_config({"tasks": {"rte": {"labels": ["a", "b"], "data": {"train": {"path": "x.csv"}}}}})
    task = config["tasks"]["rte"]
    assert config["seeds"] == [1] and config["test_seed"] == 0 and config["models"] == {}
    assert task["fields"] == ["text"] and task["k"] == [2, 32, 128] and task["n_test"] == 200
    assert task["data"]["train"]["format"] == "auto" and task["data"]["train"]["exclude_labels"] == []
    assert task["ood"] == {}


def test_out_of_range_value_names_the_key_path():
    with pytest.raises(ConfigError, match=r"tasks\.rte\.k\[0\]: -3 is less than the minimum of 1"):
        check_config({"tasks": {"rte": rte_task(k=[-3])}})


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"tasks\.rte: unknown key 'shots'"):
        check_config({"tasks": {"rte": rte_task(shots=4)}})
    with pytest.raises(ConfigError, match=r"\(top level\): unknown key 'taks'"):
        check_config({"taks": {}, "tasks": {"rte": rte_task()}})


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"seeds: 3 is not of type 'array'"):
        check_config({"seeds": 3, "tasks": {"rte": rte_task()}})
    with pytest.raises(ConfigError, match=r"tasks\.rte\.n_test"):
        check_config({"tasks": {"rte": rte_task(n_test="some")}})
    # YAML reads 1e-5 (no dot) as a string
    with pytest.raises(ConfigError, match=r"finetune\.lr: '1e-5' is not of type 'number'$"):
        check_config({"tasks": {"rte": rte_task()}, "finetune": {"lr": "1e-5"}})


# What a key of a schema object may be; data (default, enum, const, examples) is not walked.
SCHEMA_KEYWORDS = {"type", "properties", "additionalProperties", "required", "items", "enum", "const", "default",
                   "description", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems",
                   "maxItems", "uniqueItems", "minLength", "maxLength", "pattern", "patternProperties", "oneOf",
                   "anyOf", "allOf", "not", "if", "then", "else", "minProperties", "maxProperties", "$schema",
                   "title", "propertyNames", "examples", "dependentRequired", "format", "$defs", "$ref"}


def test_the_schema_parses_as_it_reads():
    """A flow mapping whose description holds a comma splits into stray keys (one once put `pattern: null` on
    finetune.lr and crashed the validator): every key of every schema object is a keyword, every description a
    whole sentence."""
    problems = []

    def walk(node, path):
        if not isinstance(node, dict):
            return
        problems.extend(f"{path}: {key!r} is no schema keyword" for key in set(node) - SCHEMA_KEYWORDS)
        if "pattern" in node and not isinstance(node["pattern"], str):
            problems.append(f"{path}: pattern {node['pattern']!r}")
        if "description" in node and not (isinstance(node["description"], str)
                                          and node["description"].rstrip().endswith((".", ":", ")"))):
            problems.append(f"{path}: description {node['description']!r} reads as cut")
        for key in ("properties", "patternProperties", "$defs"):
            for name, child in node.get(key, {}).items():
                walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties", "not", "if", "then", "else", "propertyNames"):
            walk(node.get(key), f"{path}[{key}]")
        for key in ("oneOf", "anyOf", "allOf"):
            for i, child in enumerate(node.get(key, [])):
                walk(child, f"{path}[{key}][{i}]")

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    walk(schema, "config")
    assert not problems, problems


def test_source_needs_exactly_one_origin():
    task = rte_task()
    task["data"]["train"] = {"path": "a.csv", "hub": "glue"}
    with pytest.raises(ConfigError, match=r"tasks\.rte\.data\.train"):
        check_config({"tasks": {"rte": task}})


def test_label_map_must_land_on_declared_labels():
    task = rte_task()
    task["ood"]["hans"]["label_map"] = {"non-entailment": "contradiction"}
    with pytest.raises(ConfigError, match=r"tasks\.rte\.ood\.hans\.label_map\.non-entailment: 'contradiction'"):
        check_config({"tasks": {"rte": task}})


def test_validate_config_command(tmp_path):
    good = write_config(tmp_path / "good.yaml", {"tasks": {"rte": rte_task()}})
    bad = write_config(tmp_path / "bad.yaml", {"tasks": {"rte": rte_task(k=[-3])}})
    cmd = [sys.executable, "-m", "lmadapt", "validate-config"]
    ok = subprocess.run(cmd + [str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and "valid" in ok.stdout
    fail = subprocess.run(cmd + [str(bad)], capture_output=True, text=True)
    assert fail.returncode == 2
    assert str(bad) in fail.stderr and "tasks.rte.k[0]: -3 is less than the minimum of 1" in fail.stderr
    missing = subprocess.run(cmd + [str(tmp_path / "nope.yaml")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no such config file" in missing.stderr


@pytest.mark.parametrize("stage, settings, message", [
    ("probe", {"probes": ["logreg"], "mlp": {}}, "lmadapt probe: error: --settings: probe.logreg: missing"),
    ("bow", {"vectorizer": "count", "ngram_max": "two", "Cs": [1.0], "cv_folds": 3},
     "lmadapt bow: error: --settings: bow.ngram_max: 'two' is not of type 'integer'"),
    ("icl", {"patterns": [], "fit": "skip", "batch_size": 8, "dtype": "auto", "shots": [0]},
     "lmadapt icl: error: --settings: icl: unknown key 'shots'"),
])
def test_stage_settings_are_checked_at_the_cli(stage, settings, message, tmp_path, capsys):
    from lmadapt.cli import main

    args = [stage, "--train", "t.parquet", "--eval", "test=e.parquet", "--keys", "{}", "--out", str(tmp_path / "o"),
            "--settings", json.dumps(settings)]
    if stage == "probe":
        args += ["--eval-sample", "test=s.parquet"]
    if stage == "icl":
        args = [stage, "--model-dir", "m", "--task", "t", "--task-config", "{}", "--eval", "test=e.parquet",
                "--keys", "{}", "--out", str(tmp_path / "o"), "--settings", json.dumps(settings)]
    assert main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(message) and "\n" not in error, error
    assert not (tmp_path / "o").exists()


def test_a_model_sets_its_own_stage_settings_over_the_sections():
    """models.<name>.<stage> (the paper grid's studies 2-4 beside study 5): that model's cells and settings follow
    its own; every other model's cells and job settings are those of the grid without it."""
    from lmadapt.config import finetune_settings, stage_config
    from lmadapt.settings import read_settings
    from lmadapt.stages import grid

    paper = load_config(REPO / "config/paper.yaml")
    cells = grid(paper)
    of = lambda stage, model, key: {c[key] for c in cells[stage] if c["model"] == model}  # noqa: E731
    assert of("finetune", "gpt2", "task") == {"imdb"} and of("finetune", "gpt2", "method") == {"head"}
    assert of("icl", "flan_t5_base", "task") == {"tweet_sentiment"} and of("icl", "flan_t5_base", "shots") == {0, 1, 3}
    assert of("finetune", "flan_t5_base", "method") == {"seq2seq", "lora_seq2seq"}
    assert of("finetune", "roberta_base", "task") == {"ag_news"} and not of("icl", "roberta_base", "task")
    assert finetune_settings(paper, "head", "gpt2")["lr"] == 5e-5
    assert finetune_settings(paper, "lora_seq2seq", "flan_t5_base")["lora"] == {
        "r": 32, "alpha": 32, "dropout": 0.05, "lr": 1e-3, "target_modules": ["q", "v"]}
    # lora merges key by key: RoBERTa names its modules and keeps the section's rank and learning rate
    assert finetune_settings(paper, "lora_head", "roberta_base")["lora"] == dict(paper["finetune"]["lora"],
                                                                                target_modules=["query", "value"])
    new = ("gpt2", "flan_t5_base", "roberta_base", "gpt2_alpaca", "flan_t5_base_ppo", "roberta_hate")
    without = load_config(REPO / "config/paper.yaml")
    without["models"] = {name: spec for name, spec in without["models"].items() if name not in new}
    without["icl"]["models"] = [m for m in without["icl"]["models"] if m not in new]
    kept = {stage: [c for c in stage_cells if c.get("model") not in new] for stage, stage_cells in cells.items()}
    assert {stage: stage_cells for stage, stage_cells in kept.items() if stage_cells} == grid(without)
    assert all(finetune_settings(paper, m, "opt_125m") == finetune_settings(without, m, "opt_125m")
               for m in paper["finetune"]["methods"])
    # every model's job settings pass the CLI's checks (each distinct one once: the grid repeats them per k and seed)
    run = {"checkpoint_every": 1, "keep_checkpoint": False}
    for model, method in {(cell["model"], cell["method"]) for cell in cells["finetune"]}:
        read_settings("finetune", finetune_settings(paper, method, model) | run, method)
    for model in paper["icl"]["models"]:
        settings = {k: v for k, v in stage_config(paper, "icl", model).items() if k not in ("models", "tasks", "shots")}
        read_settings("icl", settings | {"dtype": "auto"})


@pytest.mark.parametrize("own, message", [
    ({"finetune": {"zero": "zero2"}}, r"models\.opt\.finetune: unknown key 'zero'"),
    ({"finetune": {"lora": {"rank": 4}}}, r"models\.opt\.finetune\.lora: unknown key 'rank'"),
    ({"icl": {"tasks": ["mnli"]}}, r"models\.opt\.icl\.tasks: 'mnli' is not declared under tasks"),
    ({"icl": {"shots": [0, 40]}}, r"models\.opt\.icl\.shots: 40 demonstrations for task rte need 20 per class"),
    ({"icl": {"patterns": ["other"]}}, r"models\.opt\.icl\.patterns: task rte has no pattern \['other'\]"),
    ({"finetune": {"batch_size": 3}}, r"models\.opt\.finetune\.batch_size: effective batch 32 is not a multiple of"),
])
def test_a_bad_model_stage_setting_names_its_key(own, message):
    task = rte_task(demonstrations=8, prompt={"patterns": {"p": {"template": "{premise} {hypothesis}",
                                                                   "verbalizer": {"entailment": " yes",
                                                                                  "not_entailment": " no"}}}})
    with pytest.raises(ConfigError, match=message):
        check_config({"tasks": {"rte": task}, "models": {"opt": {"id": "facebook/opt-125m", **own}},
                      "icl": {"shots": [0, 2]}})


def test_a_derived_model_keeps_its_bases_settings_and_joins_every_stage():
    from lmadapt.config import stage_config
    from lmadapt.grid import derived_models, root_model, stage_models
    from lmadapt.stages import grid

    paper = load_config(REPO / "config/paper.yaml")
    assert set(derived_models(paper, "instruct")) == {"gpt2_alpaca"} | {
        f"opt_{s}_alpaca" for s in ("125m", "350m", "1_3b", "2_7b", "6_7b", "13b", "30b")}
    assert paper["models"]["opt_6_7b_alpaca"]["gpus"] == 4 and root_model(paper, "flan_t5_base_ppo") == "flan_t5_base"
    assert (paper["models"]["opt_30b_alpaca"]["nodes"], paper["models"]["opt_30b_alpaca"]["gpus"]) == (2, 4)
    assert stage_config(paper, "finetune", "gpt2_alpaca") == stage_config(paper, "finetune", "gpt2")
    cells = grid(paper)
    for stage in ("probe", "icl", "finetune"):
        base = [dict(c, model="x") for c in cells[stage] if c["model"] == "opt_1_3b"]
        assert base == [dict(c, model="x") for c in cells[stage] if c["model"] == "opt_1_3b_alpaca"]
    # the reward model scores; it is in no stage
    assert "roberta_hate" not in stage_models(paper, "finetune") and "flan_t5_base_ppo" in stage_models(paper,
                                                                                                       "finetune")
    default = load_config(REPO / "config/config.yaml")
    assert [len(cells) for cells in (grid(default)[k] for k in ("instruct", "ppo", "classifier"))] == [1, 1, 1]
    own = check_config({"tasks": {"rte": rte_task(demonstrations=16, prompt={"patterns": PATTERNS})}, "models": {
        "opt": {"id": "facebook/opt-125m", "gpus": 2, "finetune": {"lr": 1e-3, "lora": {"r": 4}}},
        "opt_sft": {"base": "opt", "derive": "instruct", "mem_mb": 999, "finetune": {"lora": {"alpha": 8}}}},
        "corpora": {"alpaca": {"path": "alpaca.jsonl"}}, "instruct": {"data": ["alpaca"]}})
    assert own["models"]["opt_sft"]["gpus"] == 2 and own["models"]["opt_sft"]["mem_mb"] == 999
    assert stage_config(own, "finetune", "opt_sft")["lora"] | {} == dict(stage_config(own, "finetune", "opt")["lora"],
                                                                         alpha=8)
    assert stage_config(own, "finetune", "opt_sft")["lr"] == 1e-3


OPT = {"id": "facebook/opt-125m"}


@pytest.mark.parametrize("models, extra, message", [
    ({"a": {"id": "x/y", "base": "opt", "derive": "ppo"}}, {}, r"models\.a: give `id` .* or `base` and `derive`"),
    ({"a": {"base": "opt"}}, {}, r"models\.a: needs `id` \(a model to fetch\), or `base` and `derive`"),
    ({"a": {"base": "gpt", "derive": "instruct"}}, {"instruct": {"data": ["c"]}},
     r"models\.a\.base: 'gpt' is not declared under models"),
    ({"a": {"base": "b", "derive": "instruct"}, "b": {"base": "a", "derive": "instruct"}}, {},
     r"models\.b\.base: a -> b -> a derive from each other"),
    ({"a": {"base": "opt", "derive": "instruct"}}, {}, r"instruct\.data: model a is instruction-tuned on nothing"),
    ({"a": {"base": "opt", "derive": "instruct", "instruct": {"tasks": ["rte"]}}}, {},
     r"tasks\.rte\.instructions: missing; models\.a\.instruct\.tasks builds an instruction set from task rte"),
    ({"a": {"base": "opt", "derive": "ppo"}}, {"ppo": {"prompts": {"corpus": "c"}}},
     r"ppo\.reward\.model: missing"),
    ({"a": {"base": "opt", "derive": "ppo"}}, {"ppo": {"prompts": {"corpus": "c"}, "reward": {"model": "opt"}}},
     r"ppo\.reward: give `label` .* or `avoid`"),
    ({"a": {"base": "opt", "derive": "ppo", "ppo": {"reward": {"model": "opt", "label": "x"}}}}, {},
     r"ppo\.prompts\.corpus: missing"),
    ({"a": {"base": "opt", "derive": "classifier"}}, {}, r"models\.a\.classifier: missing"),
])
def test_a_bad_derived_model_names_its_key(models, extra, message):
    with pytest.raises(ConfigError, match=message):
        check_config({"tasks": {"rte": rte_task()}, "models": {"opt": OPT, **models},
                      "corpora": {"c": {"path": "c.jsonl"}}, **extra})


def test_conda_environment_pins_what_requirements_pin():
    """envs/lmadapt.yaml (every rule's `conda:`) repeats envs/requirements.txt's pins: Snakemake copies the file
    alone, so it cannot point at the requirements file."""
    pins = [line.strip() for line in (REPO / "envs/requirements.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    environment = yaml.safe_load((REPO / "envs/lmadapt.yaml").read_text())
    pip = next(entry["pip"] for entry in environment["dependencies"] if isinstance(entry, dict))
    assert pip == pins


def test_the_configuration_reference_is_written_from_the_schema():
    """docs/config-reference.md is what `lmadapt config-reference` writes (rerun it after a schema change), and it
    names every key the schema accepts, with its type, default and description."""
    from lmadapt.reference import config_reference

    text = config_reference()
    assert (REPO / "docs/config-reference.md").read_text() == text, \
        "docs/config-reference.md is stale: run `lmadapt config-reference --out docs/config-reference.md`"
    assert '| `finetune.lora.target_modules` | list of string (at least 1 item(s)) | `["q_proj", "v_proj"]` |' in text
    assert "| `n_test` | integer (≥ 1) or \"all\" | `200` | Size of the fixed test sample" in text
    assert "| `finetune.methods` | list of one of: " + ", ".join(METHODS) in text  # as the workflow loads it
    schema = load_schema()
    for section, spec in schema["properties"].items():
        for key in spec.get("properties", {}):
            assert f"| `{section}.{key}` |" in text, f"{section}.{key}"
    for definition in ("task", "model", "source"):
        for key in schema["$defs"][definition]["properties"]:
            assert f"| `{key}` |" in text, f"{definition}: {key}"
