"""Load and check the configuration against workflow/schemas/config.schema.yaml, filling in its defaults.

Errors name the key path (`tasks.rte.k[0]: -3 is less than the minimum of 1`) so a bad config stops before
any job runs, both in the workflow (common.smk) and in `lmadapt validate-config FILE`.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import re
import string
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError
from .methods import ENCODER, METHODS, folder_kind, kind_problems, stage_key, with_article

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    """The config schema, with the fine-tuning methods (enum, and T3's default) from the method registry."""
    with open(SCHEMA_PATH) as f:
        schema = yaml.safe_load(f)
    schema["properties"]["finetune"]["properties"]["methods"]["items"] = {"enum": list(METHODS)}
    schema["properties"]["aggregate"]["properties"]["tables"]["default"]["finetune"]["methods"] = list(METHODS)
    for stage in MODEL_STAGES + DERIVE_STAGES:
        section = schema["properties"][stage]
        schema["$defs"]["model"]["properties"][stage] = {
            "description": f"This model's own {stage} settings, over the {stage} section's (a key left out keeps the "
                           f"section's; lora and distill merge key by key).",
            "type": "object", "additionalProperties": False,
            "properties": {key: _without_defaults(value) for key, value in section["properties"].items()
                           if key not in GRID_WIDE}}
    return schema


# The stages a model can set its own settings for (models.<name>.<stage>): a study's grid beside another's, e.g.
# GPT-2 fine-tuned on IMDB at lr 5e-5 next to OPT on RTE at 1e-5. What stays grid-wide: which models a stage runs
# on, and how fine-tuning jobs run (the DeepSpeed config, checkpoint cadence).
MODEL_STAGES = ("extract", "icl", "finetune")
# Derived models (models.<name>: {base, derive}): trained from their base by the rule of their kind into
# DERIVED_DIR/<name>, a folder like a fetched one. instruct and ppo settings have a section (and a model's own
# over it); a classifier's are the finetune section's, with the task it learns in models.<name>.classifier.
DERIVE_KINDS = ("instruct", "ppo", "classifier")
DERIVE_STAGES = ("instruct", "ppo")
DERIVED_DIR = "results/models"
INHERITED = ("gpus", "mem_mb", "dtype") + MODEL_STAGES  # what a derived model takes from its base unless it sets it
FINETUNE_RUN_SETTINGS = ("checkpoint_every", "keep_checkpoint")  # how a job runs, never what it computes
GRID_WIDE = ("models", "zero") + FINETUNE_RUN_SETTINGS


def _without_defaults(schema):
    """A schema with no defaults: a model's override must leave unset what it does not set."""
    if isinstance(schema, dict):
        return {key: _without_defaults(value) for key, value in schema.items() if key != "default"}
    return [_without_defaults(value) for value in schema] if isinstance(schema, list) else schema


def stage_config(config: dict, stage: str, model: str | None = None) -> dict:
    """A stage's settings for one model's jobs: the stage section with the model's own settings over it."""
    return merge_settings(config[stage], config["models"][model].get(stage, {}) if model else {})


def merge_settings(base: dict, own: dict) -> dict:
    """A stage's settings with a model's own over them: each key replaced, a nested one (lora, distill) merged
    key by key."""
    out = copy.deepcopy(base)
    for key, value in own.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = {**out[key], **value} if both else copy.deepcopy(value)
    return out


def setting_key(config: dict, stage: str, model: str, *path: str) -> str:
    """The config key a model's stage setting comes from: models.<name>.<stage>.<path> where the model sets it."""
    own = config["models"][model].get(stage, {})
    for key in path:
        own = own.get(key, {}) if isinstance(own, dict) else {}
    where = f"models.{model}.{stage}" if own != {} else stage
    return ".".join((where,) + path)


def _with_defaults(validator_class):
    """A validator that writes each property's `default` into the instance before checking it."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if validator.is_type(instance, "object"):
            for name, subschema in properties.items():
                if "default" in subschema and name not in instance:
                    instance[name] = copy.deepcopy(subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def key_path(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    # For oneOf/anyOf the most useful message is the deepest one among the alternatives.
    if error.context:
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(error.absolute_path):
            return _describe(deepest)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - allowed)
        if unknown and error.schema.get("additionalProperties") is False:
            return (f"{key_path(error.absolute_path)}: unknown key {', '.join(map(repr, unknown))} "
                    f"(allowed: {', '.join(sorted(allowed))})")
    return f"{key_path(error.absolute_path)}: {error.message}"


def _raise_for(errors, origin: str, prefix: str = "") -> None:
    errors = sorted(errors, key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(prefix + _describe(e) for e in errors)
        raise ConfigError(f"{origin}: invalid configuration:\n  {lines}")


def check_task_slice(name: str, task: dict) -> dict:
    """Check the part of a task's config a stage was given (the CLI's --task-config); fill its defaults."""
    schema = load_schema()
    task_schema = dict(schema["$defs"]["task"], required=[], **{"$defs": schema["$defs"]})
    task = copy.deepcopy(task)
    _raise_for(_Validator(task_schema).iter_errors(task), f"task {name}", prefix=f"tasks.{name}.")
    return task


# Each stage's --settings: its config section less the selections (which name cells), and the keys a job may
# leave out. extract, icl and teacher also take the model dtype; teacher's settings come from finetune.distill.
SELECTIONS = ("models", "tasks", "prompts", "shots", "k", "methods")  # also what the rules leave out
STAGE_SETTINGS = {"extract": ("extract", {"shots", "max_length", "pattern"}), "icl": ("icl", {"max_length", "pattern"}),
                  "probe": ("probe", set()), "bow": ("bow", {"validation"}),
                  "teacher": ("finetune.distill", {"pattern"}),
                  "finetune": ("finetune", {"lora", "distill", "lr", "pattern", "validation"}),
                  "instruct": ("instruct", {"data"}), "ppo": ("ppo", {"lora"})}


def stage_settings_schema(stage: str, schema: dict | None = None) -> dict:
    """The JSON schema of `lmadapt <stage> --settings` (finetune: with its --run-settings merged in), a slice of
    the config schema (read here unless given)."""
    schema = schema or load_schema()
    section, optional = STAGE_SETTINGS[stage]
    if stage == "teacher":
        distill = schema["properties"]["finetune"]["properties"]["distill"]["properties"]
        properties = {"shots": distill["shots"], "batch_size": distill["batch_size"],
                      "pattern": schema["properties"]["finetune"]["properties"]["pattern"]}
    else:
        properties = {key: value for key, value in schema["properties"][section]["properties"].items()
                      if key not in SELECTIONS or (stage, key) in (("extract", "shots"), ("ppo", "prompts"))}
    if stage in ("extract", "icl", "teacher"):
        properties["dtype"] = schema["$defs"]["model"]["properties"]["dtype"]
    if stage == "bow":  # a full-training-set job gets full_train's validation share
        properties["validation"] = properties.pop("full_train")["properties"]["validation"]
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "required": sorted(set(properties) - optional), "$defs": schema["$defs"]}


def check_stage_settings(stage: str, settings: dict, method: str | None = None) -> dict:
    """A stage's --settings checked against its schema: a bad, unknown or missing setting is a ConfigError
    naming it. Nothing is filled in: the settings are the job's exactly as the rule wrote them."""
    section = STAGE_SETTINGS[stage][0]
    schema = stage_settings_schema(stage)
    problems = [f"{section}.{key}: missing" for key in schema["required"] if key not in settings]
    errors = jsonschema.Draft202012Validator(dict(schema, required=[])).iter_errors(settings)
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        text = _describe(error)
        problems.append(section + text.removeprefix("(top level)") if text.startswith("(top level)")
                        else f"{section}.{text}")
    if problems:
        raise ConfigError(f"--settings: {'; '.join(problems)}")
    if stage == "finetune" and method is not None:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}: one of {', '.join(METHODS)}")
        needed = ["lora"] if METHODS[method].lora else ["lr"]
        missing = [key for key in needed + (["distill"] if METHODS[method].teacher else []) if key not in settings]
        if missing:
            raise ConfigError(f"--settings: method {method} needs finetune.{', '.join(missing)}")
    return settings


def settings_help(stage: str, schema: dict) -> str:
    """The --settings fields of a stage, for --help (schema: the config schema)."""
    schema = stage_settings_schema(stage, schema)
    fields = ", ".join(key + ("" if key in schema["required"] else " (optional)") for key in schema["properties"])
    return (f"JSON object: the {STAGE_SETTINGS[stage][0]} config section the job computes with; fields: {fields} "
            f"(workflow/schemas/config.schema.yaml describes each)")


def check_config(config: dict, origin: str = "config") -> dict:
    """Return a copy of `config` with defaults filled in, or raise ConfigError naming every bad key."""
    config = copy.deepcopy(dict(config))
    _inherit_from_bases(config, origin)
    _raise_for(_Validator(load_schema()).iter_errors(config), origin)
    _check_cross_references(config, origin)
    return config


def _inherit_from_bases(config: dict, origin: str) -> None:
    """A derived model takes its base's resources, dtype and stage settings (before defaults are filled in, so
    that the base's, not the schema's, fill what it leaves out); its own stage settings merge over its base's."""
    models = config.get("models")
    if not isinstance(models, dict):
        return  # the schema names what is wrong

    def resolve(name: str, chain: tuple[str, ...]) -> dict:
        spec = models[name]
        base = spec.get("base") if isinstance(spec, dict) else None
        if base not in models:
            return spec if isinstance(spec, dict) else {}
        if base in chain + (name,):
            cycle = " -> ".join(chain + (name, base))
            raise ConfigError(f"{origin}: invalid configuration:\n  models.{name}.base: {cycle} derive from each other")
        base_spec = resolve(base, chain + (name,))
        for key in INHERITED:
            if key in base_spec and isinstance(base_spec[key], dict) and isinstance(spec.get(key), dict):
                spec[key] = merge_settings(base_spec[key], spec[key])
            elif key in base_spec and key not in spec:
                spec[key] = copy.deepcopy(base_spec[key])
        return spec

    for name in models:
        resolve(name, ())


def derived_models(config: dict, kind: str | None = None) -> list[str]:
    """The derived models (of one kind: instruct, ppo, classifier), by name."""
    return [name for name, spec in sorted(config["models"].items())
            if spec.get("derive") and (kind is None or spec["derive"] == kind)]


def root_model(config: dict, name: str) -> str:
    """The fetched model a model is derived from (itself when fetched)."""
    while config["models"][name].get("base"):
        name = config["models"][name]["base"]
    return name


def reward_models(config: dict) -> set[str]:
    return {stage_config(config, "ppo", name)["reward"].get("model") for name in derived_models(config, "ppo")}


def subject_models(config: dict) -> list[str]:
    """The models a stage runs on when it lists none: every model but the classifiers derived or fetched to
    score others (derive: classifier, a ppo reward model)."""
    tools = reward_models(config)
    return [name for name in sorted(config["models"])
            if config["models"][name].get("derive") != "classifier" and name not in tools]


def _derived_problems(config: dict) -> list[str]:
    """Fetched xor derived; a derived model's base, its data and its reward model declared."""
    problems = []
    for name, spec in config["models"].items():
        where = f"models.{name}"
        if "id" in spec and ("base" in spec or "derive" in spec):
            problems.append(f"{where}: give `id` (a model to fetch) or `base` and `derive` (a derived model), not both")
            continue
        if "id" not in spec and not ("base" in spec and "derive" in spec):
            problems.append(f"{where}: needs `id` (a model to fetch), or `base` and `derive` (a derived model)")
            continue
        if "id" in spec:
            continue
        if spec["base"] not in config["models"]:
            problems.append(f"{where}.base: {spec['base']!r} is not declared under models "
                            f"(declared: {sorted(config['models'])})")
        if spec["derive"] == "classifier":
            if "classifier" not in spec:
                problems.append(f"{where}.classifier: missing; derive: classifier needs the task its head learns")
            elif spec["classifier"]["task"] not in config["tasks"]:
                problems.append(f"{where}.classifier.task: {spec['classifier']['task']!r} is not declared under "
                                f"tasks (declared: {sorted(config['tasks'])})")
        elif spec["derive"] == "instruct":
            instruct = stage_config(config, "instruct", name)
            if not instruct["data"] and not instruct["tasks"]:
                problems.append(f"{setting_key(config, 'instruct', name, 'data')}: model {name} is instruction-tuned "
                                f"on nothing; name corpora (instruct.data) or tasks (instruct.tasks)")
            for corpus in instruct["data"]:
                if corpus not in config["corpora"]:
                    problems.append(f"{setting_key(config, 'instruct', name, 'data')}: {corpus!r} is not declared "
                                    f"under corpora (declared: {sorted(config['corpora'])})")
            for task in instruct["tasks"]:
                if task not in config["tasks"]:
                    problems.append(f"{setting_key(config, 'instruct', name, 'tasks')}: {task!r} is not declared "
                                    f"under tasks (declared: {sorted(config['tasks'])})")
                elif "instructions" not in config["tasks"][task]:
                    key = setting_key(config, "instruct", name, "tasks")
                    problems.append(f"tasks.{task}.instructions: missing; {key} builds an instruction set from "
                                    f"task {task}")
        else:
            ppo = stage_config(config, "ppo", name)
            corpus, reward = ppo["prompts"].get("corpus"), ppo["reward"]
            if corpus not in config["corpora"]:
                problems.append(f"{setting_key(config, 'ppo', name, 'prompts', 'corpus')}: "
                                f"{'missing' if corpus is None else repr(corpus) + ' is not declared under corpora'}"
                                f" (declared corpora: {sorted(config['corpora'])})")
            if reward.get("model") not in config["models"]:
                what = "missing" if reward.get("model") is None else f"{reward['model']!r} is not declared under models"
                problems.append(f"{setting_key(config, 'ppo', name, 'reward', 'model')}: {what} (the sequence "
                                f"classifier that scores {name}'s generations)")
            if ("label" in reward) == ("avoid" in reward):
                problems.append(f"{setting_key(config, 'ppo', name, 'reward')}: give `label` (its probability is the "
                                f"reward) or `avoid` (1 - its probability), one of the two")
    return problems


def _check_cross_references(config: dict, origin: str) -> None:
    """What the schema cannot say: label maps must land on declared label names."""
    problems = []
    for task_name, task in config["tasks"].items():
        for where, source in task_sources(task).items():
            for raw, name in source["label_map"].items():
                if name not in task["labels"]:
                    problems.append(f"tasks.{task_name}.{where}.label_map.{raw}: {name!r} is not one of the "
                                    f"task's labels {task['labels']}")
    selections = [(f"{stage}.{kind}", kind, config.get(stage, {}).get(kind, []))
                  for stage in ("extract", "bow", "icl", "finetune") for kind in ("models", "tasks")]
    selections += [(f"models.{model}.{stage}.tasks", "tasks", spec.get(stage, {}).get("tasks", []))
                   for model, spec in config["models"].items() for stage in MODEL_STAGES]
    selections.append(("bow.full_train.tasks", "tasks", config["bow"].get("full_train", {}).get("tasks", [])))
    for key, kind, names in selections:
        for name in names:
            if name not in config[kind]:
                problems.append(f"{key}: {name!r} is not declared under {kind} (declared: {sorted(config[kind])})")
    problems += _derived_problems(config) + _pattern_problems(config)
    if problems:  # the checks below look the selected names up
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(problems))
    problems += _demonstration_problems(config) + _model_source_problems(config) + _batch_problems(config)
    extracted = {task for model in stage_models(config, "extract")
                 for task in stage_names(config, "extract", "tasks", model)}
    for task_name in sorted(extracted):
        if not config["tasks"][task_name]["prompt"]["patterns"]:
            problems.append(f"tasks.{task_name}.prompt.patterns: the extract stage needs at least one pattern")
    for model in stage_models(config, "icl"):
        wanted = stage_config(config, "icl", model)["patterns"]
        for task_name in stage_names(config, "icl", "tasks", model):
            patterns = config["tasks"][task_name]["prompt"]["patterns"]
            missing = [p for p in wanted if p not in patterns]
            if not patterns or missing:
                problems.append(f"{setting_key(config, 'icl', model, 'patterns')}: task {task_name} has no pattern "
                                f"{missing or 'at all'} (tasks.{task_name}.prompt.patterns has {sorted(patterns)})")
    problems = list(dict.fromkeys(problems))  # models sharing the section's settings share its problems
    if problems:
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(problems))


def _pattern_problems(config: dict) -> list[str]:
    """Prompts that cannot tell the classes apart, or that a job would refuse only after loading weights: a
    template with none of the task's fields (every prompt the same) or with a field the task does not have, a label
    without a verbalizer, two labels with the same one."""
    problems = []
    for task_name, task in config["tasks"].items():
        for name, pattern in task["prompt"]["patterns"].items():
            key = f"tasks.{task_name}.prompt.patterns.{name}"
            try:
                used = [field for _, field, _, _ in string.Formatter().parse(pattern["template"]) if field is not None]
            except ValueError as e:  # an unmatched brace
                problems.append(f"{key}.template: {e}")
                continue
            unknown = sorted(set(used) - set(task["fields"]))
            if unknown:
                problems.append(f"{key}.template: uses {unknown}, not among the task's fields {task['fields']}")
            elif not used:
                problems.append(f"{key}.template: uses none of the task's fields {task['fields']} (e.g. "
                                f"{{{task['fields'][0]}}}): every example's prompt would be the same")
            verbalizer = pattern["verbalizer"]
            missing = [label for label in task["labels"] if label not in verbalizer]
            extra = sorted(set(verbalizer) - set(task["labels"]))
            if missing or extra:
                problems.append(f"{key}.verbalizer: " + "; ".join(
                    ([f"no word for label(s) {missing}"] if missing else []) +
                    ([f"{extra} are not labels of the task ({task['labels']})"] if extra else [])))
            shared = {}
            for label in task["labels"]:
                shared.setdefault(verbalizer.get(label), []).append(label)
            for word, labels in shared.items():
                if word is not None and len(labels) > 1:
                    problems.append(f"{key}.verbalizer: labels {labels} share the word {word!r}: no scorer can "
                                    f"tell them apart")
    return problems

def task_sources(task: dict) -> dict[str, dict]:
    """A task's data sources by key below the task: data.train, data.test, ood.<name>."""
    return {f"data.{role}": src for role, src in task["data"].items()} | {
        f"ood.{name}": src for name, src in task["ood"].items()}


def source_file_role(key: str) -> str:
    """The role in file names (train, test, ood_<name>) of a source key (data.train, ood.<name>)."""
    return key.removeprefix("data.").replace("ood.", "ood_", 1)


def demonstration_needs(config: dict) -> list[tuple[str, str, int]]:
    """(config key, task, shots) of every few-shot prompt the grid builds (extract, icl, teacher)."""
    needs = []
    for model in stage_models(config, "extract"):
        extract = stage_config(config, "extract", model)
        if "fewshot" in extract["prompts"]:
            needs += [(setting_key(config, "extract", model, "shots"), t, extract["shots"])
                      for t in stage_names(config, "extract", "tasks", model)]
    for model in stage_models(config, "icl"):
        shots = stage_config(config, "icl", model)["shots"]
        needs += [(setting_key(config, "icl", model, "shots"), t, s)
                  for t in stage_names(config, "icl", "tasks", model) for s in shots if s]
    for model in stage_models(config, "finetune"):
        finetune = stage_config(config, "finetune", model)
        if any(METHODS[m].teacher for m in finetune["methods"]) and finetune["distill"]["shots"]:
            needs += [(setting_key(config, "finetune", model, "distill", "shots"), t, finetune["distill"]["shots"])
                      for t in stage_names(config, "finetune", "tasks", model)]
    return list(dict.fromkeys(needs))


def demonstration_pool(config: dict, task: str) -> int:
    """Rows per class the task keeps apart for demonstrations: its `demonstrations`, or 0 when no prompt of the
    grid has any (the training samples may then use every row)."""
    return config["tasks"][task]["demonstrations"] if any(t == task for _, t, _ in demonstration_needs(config)) else 0


def _demonstration_problems(config: dict) -> list[str]:
    """Balanced demonstrations take ceil(shots / classes) rows of some class from the task's pool."""
    problems = []
    for key, task_name, shots in demonstration_needs(config):
        task = config["tasks"][task_name]
        per_class = math.ceil(shots / len(task["labels"]))
        if per_class > task["demonstrations"]:
            problems.append(f"{key}: {shots} demonstrations for task {task_name} need {per_class} per class, more "
                            f"than tasks.{task_name}.demonstrations ({task['demonstrations']}); raise it or lower "
                            f"the shots")
    return problems


HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # name or namespace/name, as the hub accepts them


def is_local_model(spec: dict) -> bool:
    """A model from a package or a local folder (a path: absolute, starting with ./ ../ ~, an existing folder,
    or anything that cannot be a hub id such as a/b/c), else a hub id."""
    model_id = spec["id"]
    return (bool(spec.get("package")) or model_id.startswith(("/", "./", "../", "~")) or model_id == "."
            or not HUB_ID.fullmatch(model_id) or ".." in model_id or Path(model_id).is_dir())


def package_folder(package: str) -> Path | None:
    """Where an installed package lies (found without importing it), or None."""
    found = importlib.util.find_spec(package)
    return Path(list(found.submodule_search_locations)[0]) if found and found.submodule_search_locations else None


def local_model_path(spec: dict) -> Path:
    """The folder a local model is read from (inside its package when it names one)."""
    if spec.get("package"):
        folder = package_folder(spec["package"])
        if folder is None:
            raise ConfigError(f"package {spec['package']!r} is not installed (see envs/requirements-data.txt)")
        return folder / spec["id"]
    return Path(spec["id"]).expanduser()


def model_source(spec: dict) -> str:
    """Where a model is prepared from, as its folder's lmadapt_model.json records it."""
    if not is_local_model(spec):
        return f"hub:{spec['id']}"
    if spec.get("gguf_file"):
        return f"gguf:{spec.get('package') or local_model_path(spec)}/{spec['gguf_file']}"
    if spec.get("package"):
        return f"package:{spec['package']}/{spec['id']}"
    return f"local:{local_model_path(spec)}"


def package_version(package: str) -> str | None:
    """The installed distribution that ships an importable package, as name==version (a wheel's pin), or None."""
    from importlib.metadata import packages_distributions, version

    dists = packages_distributions().get(package)
    return f"{dists[0]}=={version(dists[0])}" if dists else None


def _model_source_problems(config: dict) -> list[str]:
    """A local model that is not where the config says is an error now, not in the fetch job."""
    problems = []
    for name, spec in config["models"].items():
        if spec.get("derive") or not is_local_model(spec):
            continue
        try:
            folder = local_model_path(spec)
        except ConfigError as e:
            problems.append(f"models.{name}.package: {e}")
            continue
        if not folder.is_dir():
            problems.append(f"models.{name}.id: local folder {folder} not found")
        elif spec.get("gguf_file") and not (folder / spec["gguf_file"]).is_file():
            problems.append(f"models.{name}.gguf_file: {folder / spec['gguf_file']} not found")
        elif not spec.get("gguf_file") and not (folder / "config.json").is_file():
            problems.append(f"models.{name}.id: {folder} has no config.json (not a model folder)")
    return problems


def _batch_problems(config: dict) -> list[str]:
    """The effective batch is the same for every model, so it must split evenly over each model's GPUs."""
    problems = []
    for name in stage_models(config, "finetune"):
        settings = stage_config(config, "finetune", name)
        per_step = settings["batch_size"] * max(config["models"][name]["gpus"], 1)
        if settings["methods"] and settings["effective_batch"] % per_step:
            own = config["models"][name].get("finetune", {})
            key = next((f"models.{name}.finetune.{key}" for key in ("effective_batch", "batch_size") if key in own),
                       "finetune.effective_batch")
            problems.append(f"{key}: effective batch {settings['effective_batch']} is not a multiple of batch_size x "
                            f"gpus = {per_step} for model {name}")
    return problems


FINETUNE_SELECTION = ("models", "tasks", "k", "methods")


def finetune_settings(config: dict, method: str, model: str | None = None) -> dict:
    """The fine-tuning settings one method's jobs use: the shared ones, plus `lora` (whose lr replaces `lr`) for
    the LoRA methods and `distill` for distillation, so a LoRA setting reruns only LoRA jobs. With `model`, the
    model's own finetune settings over the section's."""
    finetune = stage_config(config, "finetune", model)
    settings = {key: value for key, value in finetune.items()
                if key not in FINETUNE_SELECTION + FINETUNE_RUN_SETTINGS + ("lora", "distill", "lr")}
    if METHODS[method].lora:
        settings["lora"] = finetune["lora"]
    else:
        settings["lr"] = finetune["lr"]
    if METHODS[method].teacher:
        settings["distill"] = {key: finetune["distill"][key] for key in ("temperature", "kl_weight", "ce_weight")}
    return settings


def model_identity(spec: dict) -> dict:
    """What makes a prepared model folder what it is; resources (gpus, mem_mb) and dtype do not."""
    return {key: spec.get(key) for key in ("id", "revision", "package", "gguf_file")}


def dataset_identity(source: dict) -> dict:
    """What makes a fetched hub dataset what it is; how its rows are read later (columns, label_map) does not."""
    return {key: source.get(key) for key in ("hub", "hub_config", "split", "revision", "data_files")}


MODEL_INFO = "lmadapt_model.json"  # written into every prepared model folder by fetch_model
FETCH_KEY = "lmadapt_fetch"  # the Parquet metadata of a fetched dataset


def _describe_identity(identity: dict) -> str:
    return ", ".join(f"{key} {value!r}" for key, value in identity.items() if value is not None)


def prepared_problems(config: dict, root: str | Path = ".") -> list[str]:
    """Prepared models and fetched datasets whose config entry now says something else. The fetch rules never
    replace them (a typo in an id would otherwise delete a 13 GB download before failing): the user removes the
    old one, or names the new model differently."""
    root = Path(root)
    problems = []
    for name, spec in config["models"].items():
        info_path = root / "resources/models" / name / MODEL_INFO
        if spec.get("derive") or not info_path.is_file():
            continue
        info = json.loads(info_path.read_text())
        recorded = info.get("identity") or {"source": info.get("source")}  # folders prepared before identities
        now = model_identity(spec) if "identity" in info else {"source": model_source(spec)}
        if recorded != now:
            problems.append(f"models.{name}: {info_path.parent} was prepared from "
                            f"{_describe_identity(recorded)}; the config now says "
                            f"{_describe_identity(now)}. To prepare that, remove "
                            f"{info_path.parent} (or give the model a new name)")
    for task_name, task in config["tasks"].items():
        for key, source in task_sources(task).items():
            path = root / "resources/data" / task_name / f"{source_file_role(key)}.parquet"
            if not source.get("hub") or not path.is_file():
                continue
            recorded = _fetched_identity(path)
            if recorded is not None and recorded != dataset_identity(source):
                problems.append(f"tasks.{task_name}.{key}: {path} was fetched from {_describe_identity(recorded)}; "
                                f"the config now says {_describe_identity(dataset_identity(source))}. To fetch "
                                f"that, remove {path}")
    return problems


COMMIT = re.compile(r"[0-9a-f]{40}")


def unpinned_sources(config: dict, resources: str | Path = "resources") -> list[dict]:
    """Hub models, datasets and corpora whose `revision` is not a commit, with the commit their fetch got where it
    is at hand (in resources/models, data, corpora): the line to pin them with."""
    root = Path(resources)
    found = []
    for name, spec in config["models"].items():
        if spec.get("derive") or is_local_model(spec) or COMMIT.fullmatch(spec.get("revision") or ""):
            continue
        info = root / "models" / name / MODEL_INFO
        found.append({"key": f"models.{name}.revision", "revision": spec.get("revision"),
                      "commit": json.loads(info.read_text()).get("revision") if info.is_file() else None})
    sources = [(f"tasks.{t}.{key}", src, root / "data" / t / f"{source_file_role(key)}.parquet")
               for t, task in config["tasks"].items() for key, src in task_sources(task).items()]
    sources += [(f"corpora.{name}", src, root / "corpora" / f"{name}.parquet")
                for name, src in config.get("corpora", {}).items()]
    for key, source, path in sources:
        if not source.get("hub") or "/" not in source["hub"] or COMMIT.fullmatch(source.get("revision") or ""):
            continue  # a builder on local files (parquet, json) has no commit
        found.append({"key": f"{key}.revision", "revision": source.get("revision"),
                      "commit": _fetched_commit(path) if path.is_file() else None})
    return found


def _fetched_commit(path: Path) -> str | None:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[FETCH_KEY.encode()]).get("commit") if FETCH_KEY.encode() in meta else None


def _fetched_identity(path: Path) -> dict | None:
    import pyarrow.parquet as pq  # only when a fetched dataset exists

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):
        return None  # unreadable: the sample job names it
    return json.loads(meta[FETCH_KEY.encode()]).get("identity") if FETCH_KEY.encode() in meta else None


def model_layers(folder: str | Path) -> int | None:
    """The number of transformer layers a model folder's config.json declares (None without one)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    config = config.get("text_config") or config
    return next((config[key] for key in ("num_hidden_layers", "n_layer", "num_layers") if key in config), None)


def resolve_layers(spec, n_layers: int, model: str = "the model") -> list[int]:
    """Hidden-state indices (0 = embeddings, n = last layer) from extract.layers: a list with negative indices
    counting from the end, or 'all'."""
    if spec == "all":
        return list(range(n_layers + 1))
    out = set()
    for index in spec:
        resolved = index + n_layers + 1 if index < 0 else index
        if not 0 <= resolved <= n_layers:
            raise ConfigError(f"extract.layers: layer {index} is out of range for {model}, which has {n_layers} "
                              f"layers (0..{n_layers}, or -1..-{n_layers + 1})")
        out.add(resolved)
    return sorted(out)


def model_folders(config: dict, name: str, models_dir: str | Path) -> list[Path]:
    """Where a model's config.json can be read before any job: its prepared folder, or the local folder it will
    be prepared from (a derived model's: its root model's, whose kind, layers and tokenizer it keeps)."""
    name = root_model(config, name)
    spec = config["models"][name]
    folders = [Path(models_dir) / name]
    if is_local_model(spec) and not spec.get("gguf_file") and (not spec.get("package")
                                                               or package_folder(spec["package"])):
        folders.append(local_model_path(spec))
    return folders


def layer_problems(config: dict, models_dir: str | Path = "resources/models") -> list[str]:
    """extract.layers checked against each extracted model whose config.json can be read now."""
    problems = []
    for name in stage_models(config, "extract"):
        folders = model_folders(config, name, models_dir)
        n_layers = next((n for n in map(model_layers, folders) if n is not None), None)
        if n_layers is not None:
            try:
                resolve_layers(stage_config(config, "extract", name)["layers"], n_layers, f"model {name}")
            except ConfigError as e:
                problems.append(str(e).replace("extract.layers", setting_key(config, "extract", name, "layers"), 1))
    return problems


def model_kind_problems(config: dict, models_dir: str | Path = "resources/models") -> list[str]:
    """Cells a model cannot run by its kind (decoder, encoder-decoder, encoder: lmadapt/methods.py), for every
    model whose config.json can be read now; each names the config key that asks for it."""
    kinds = {}
    for name in config["models"]:
        kind = next((k for k in map(folder_kind, model_folders(config, name, models_dir)) if k), None)
        if kind:
            kinds[name] = kind

    def key_of(stage, model):
        if stage in DERIVE_KINDS:
            return f"models.{model}.derive"
        if stage == "finetune":
            return setting_key(config, "finetune", model, "methods")
        return stage_key(stage, model) if config.get(stage, {}).get("models") else "models"

    cls = [f"{setting_key(config, 'extract', name, 'pooling')}: cls pooling reads an encoder's [CLS] / <s> token; "
           f"{name} is {with_article(kinds[name])} model"
           for name in stage_models(config, "extract")
           if name in kinds and kinds[name] != ENCODER and "cls" in stage_config(config, "extract", name)["pooling"]]
    return kind_problems(grid(config), kinds, key_of) + cls


def grid(config: dict) -> dict[str, list[dict]]:
    """Every cell of the grid, by stage: the one list the workflow's targets and the preflight are built from."""

    def cells(task):
        return [(k, seed) for k in config["tasks"][task]["k"] for seed in config["seeds"]]

    out = {"probe": [], "bow": [], "icl": [], "finetune": []}
    for model in stage_models(config, "extract"):
        extract = stage_config(config, "extract", model)
        for task in stage_names(config, "extract", "tasks", model):
            out["probe"] += [dict(model=model, task=task, prompt=prompt, k=k, seed=seed)
                             for prompt in extract["prompts"] for k, seed in cells(task)]
    full_train = config["bow"].get("full_train")
    out["bow"] = [dict(task=task, k=k, seed=seed) for task in stage_names(config, "bow", "tasks")
                  for k, seed in cells(task)]
    if full_train is not None:
        out["bow"] += [dict(task=task, k="all", seed=seed) for task in full_train.get("tasks") or
                       stage_names(config, "bow", "tasks") for seed in config["seeds"]]
    for model in stage_models(config, "icl"):
        for task in stage_names(config, "icl", "tasks", model):
            for shots in stage_config(config, "icl", model)["shots"]:
                out["icl"] += [dict(model=model, task=task, shots=shots, seed=seed)
                               for seed in (config["seeds"][:1] if shots == 0 else config["seeds"])]
    for model in stage_models(config, "finetune"):
        finetune = stage_config(config, "finetune", model)
        for task in stage_names(config, "finetune", "tasks", model):
            out["finetune"] += [dict(model=model, task=task, method=method, k=k, seed=seed)
                                for method in finetune["methods"] for k, seed in cells(task)
                                if not finetune["k"] or k in finetune["k"]]
    for kind in DERIVE_KINDS:  # a derived model's job, where the grid has one
        if derived_models(config, kind):
            out[kind] = [dict(model=name) for name in derived_models(config, kind)]
    return out


def stage_models(config: dict, stage: str) -> list[str]:
    """The models a model stage (extract, icl, finetune) runs on."""
    return stage_names(config, stage, "models") if config["models"] else []


def stage_names(config: dict, stage: str, kind: str, model: str | None = None) -> list[str]:
    """The models or tasks a stage runs on: its selection (for tasks, the model's own where it sets them), or
    all declared ones."""
    section = stage_config(config, stage, model) if model else config.get(stage, {})
    if section.get(kind):
        return list(section[kind])
    return subject_models(config) if kind == "models" else sorted(config[kind])


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one, silently)."""

    def construct_mapping(self, node, deep=False):
        first_line = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{self.name}, line {line}: duplicate key {key!r} (first given on line "
                                  f"{first_line[key]}); YAML would keep only the last")
            first_line[key] = line
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """A config file's mapping; a missing file, invalid YAML or a duplicate key is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    with open(path) as f:
        try:
            raw = yaml.load(f, _StrictLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path) -> dict:
    return check_config(read_yaml(path), origin=str(path))


def fingerprint(obj) -> str:
    """A short stable hash of a JSON-able value (config slices, provenance)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
