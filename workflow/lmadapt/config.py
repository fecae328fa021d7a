"""The configuration's schema and settings: workflow/schemas/config.schema.yaml as the workflow loads it, a config
file read strictly, one stage's settings for one model (its own over the section's), and the slices of settings
a job computes with. A job reads its slice into a typed class (settings.py); the grid of cells is in grid.py,
fetched models' and datasets' identity in resources.py, the checks of a whole config in checks.py.

Errors name the key path (`tasks.rte.k[0]: -3 is less than the minimum of 1`) so a bad config stops before
any job runs, both in the workflow (common.smk) and in `lmadapt validate-config FILE`.
"""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError
from .methods import METHODS

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
# results/models/<name> (layout.DERIVED_MODEL), a folder like a fetched one. instruct and ppo settings have a
# section (and a model's own over it); a classifier's are the finetune section's, with the task it learns in
# models.<name>.classifier.
DERIVE_KINDS = ("instruct", "ppo", "classifier")
DERIVE_STAGES = ("instruct", "ppo")
# what a derived model takes from its base unless it sets it
INHERITED = ("gpus", "nodes", "mem_mb", "dtype") + MODEL_STAGES
FINETUNE_RUN_SETTINGS = ("checkpoint_every", "keep_checkpoint")  # how a job runs, never what it computes
GRID_WIDE = ("models", "zero") + FINETUNE_RUN_SETTINGS


def training_layout(model: dict) -> tuple[int, int]:
    """(nodes, processes on each) of a model's training jobs: a process per GPU, one on a node without GPUs."""
    return model.get("nodes", 1), max(model["gpus"], 1)


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


TYPE_WORDS = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
              "array": "a list", "object": "a mapping", "null": "null"}


def describe_alternative(schema: dict) -> str:
    """One alternative of a oneOf/anyOf, as a person would say it: its title where the schema gives one, else
    from its const, enum, type and bounds (an integer >= 1, a list of at least 1 integer(s), 'all')."""
    if "title" in schema:
        return schema["title"]
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    types = schema.get("type", [])
    text = " or ".join(TYPE_WORDS[kind] for kind in ([types] if isinstance(types, str) else types))
    if "minimum" in schema:
        text += f" >= {schema['minimum']}"
    if "maximum" in schema:
        text += f" <= {schema['maximum']}"
    if types == "array":
        items = TYPE_WORDS.get(schema.get("items", {}).get("type"), "item").split(" ", 1)[-1]
        text += f" of at least {schema.get('minItems', 0)} {items}(s)" + (", each once" if schema.get(
            "uniqueItems") else "")
    return text


def describe_error(error: jsonschema.ValidationError) -> str:
    # For oneOf/anyOf the most useful message is the deepest one among the alternatives; where every alternative
    # fails at the value itself, what the alternatives are.
    if error.context:
        deepest = max(error.context, key=lambda e: len(e.absolute_path))
        if len(deepest.absolute_path) > len(error.absolute_path):
            return describe_error(deepest)
    if error.validator in ("oneOf", "anyOf"):
        shown = "" if isinstance(error.instance, (dict, list)) and len(repr(error.instance)) > 40 else \
            f"{error.instance!r} is not valid; "
        alternatives = ", or ".join(describe_alternative(schema) for schema in error.validator_value)
        return f"{key_path(error.absolute_path)}: {shown}give {alternatives}"
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
        lines = "\n  ".join(prefix + describe_error(e) for e in errors)
        raise ConfigError(f"{origin}: invalid configuration:\n  {lines}")


def check_schema(config: dict, origin: str) -> None:
    """Check a config against the schema, filling in its defaults in place; a ConfigError names every bad key."""
    _raise_for(_Validator(load_schema()).iter_errors(config), origin)


def check_task_slice(name: str, task: dict) -> dict:
    """Check the part of a task's config a stage was given (the CLI's --task-config); fill its defaults."""
    schema = load_schema()
    task_schema = dict(schema["$defs"]["task"], required=[], **{"$defs": schema["$defs"]})
    task = copy.deepcopy(task)
    _raise_for(_Validator(task_schema).iter_errors(task), f"task {name}", prefix=f"tasks.{name}.")
    return task


# The keys of a stage section that select cells (which models, tasks, k, ...) rather than say how a job computes.
SELECTIONS = ("models", "tasks", "prompts", "shots", "k", "methods")  # also what the rules leave out


def task_sources(task: dict) -> dict[str, dict]:
    """A task's data sources by key below the task: data.train, data.test, ood.<name>."""
    return {f"data.{role}": src for role, src in task["data"].items()} | {
        f"ood.{name}": src for name, src in task["ood"].items()}


def source_file_role(key: str) -> str:
    """The role in file names (train, test, ood_<name>) of a source key (data.train, ood.<name>)."""
    return key.removeprefix("data.").replace("ood.", "ood_", 1)


FINETUNE_SELECTION = ("models", "tasks", "k", "methods")


def finetune_settings(config: dict, method: str, model: str | None = None) -> dict:
    """The fine-tuning settings one method's jobs use: the shared ones, plus `lora` (whose lr replaces `lr`) for
    the LoRA methods and `distill` for distillation, so a LoRA setting reruns only LoRA jobs. With `model`, the
    model's own finetune settings over the section's."""
    finetune = stage_config(config, "finetune", model)
    shared = {key: value for key, value in finetune.items()
              if key not in FINETUNE_SELECTION + FINETUNE_RUN_SETTINGS + ("lora", "distill", "lr")}
    return shared | METHODS[method].own_settings(finetune)


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


def fingerprint(obj) -> str:
    """A short stable hash of a JSON-able value (config slices, provenance)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
