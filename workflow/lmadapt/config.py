"""Load and check the configuration against workflow/schemas/config.schema.yaml, filling in its defaults.

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

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration that does not match the schema; the message names the key path."""


def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


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


def check_config(config: dict, origin: str = "config") -> dict:
    """Return a copy of `config` with defaults filled in, or raise ConfigError naming every bad key."""
    config = copy.deepcopy(dict(config))
    _raise_for(_Validator(load_schema()).iter_errors(config), origin)
    _check_cross_references(config, origin)
    return config


def _check_cross_references(config: dict, origin: str) -> None:
    """What the schema cannot say: label maps must land on declared label names."""
    problems = []
    for task_name, task in config["tasks"].items():
        sources = {f"data.{s}": src for s, src in task["data"].items()}
        sources.update({f"ood.{s}": src for s, src in task["ood"].items()})
        for where, source in sources.items():
            for raw, name in source["label_map"].items():
                if name not in task["labels"]:
                    problems.append(f"tasks.{task_name}.{where}.label_map.{raw}: {name!r} is not one of the "
                                    f"task's labels {task['labels']}")
    for stage in ("extract", "bow", "icl", "finetune"):
        for kind in ("models", "tasks"):
            for name in config.get(stage, {}).get(kind, []):
                if name not in config[kind]:
                    problems.append(f"{stage}.{kind}: {name!r} is not declared under {kind} "
                                    f"(declared: {sorted(config[kind])})")
    for task_name in stage_names(config, "extract", "tasks") if config["models"] else []:
        if not config["tasks"][task_name]["prompt"]["patterns"]:
            problems.append(f"tasks.{task_name}.prompt.patterns: the extract stage needs at least one pattern")
    for task_name in stage_names(config, "icl", "tasks") if config["models"] else []:
        patterns = config["tasks"][task_name]["prompt"]["patterns"]
        missing = [p for p in config["icl"]["patterns"] if p not in patterns]
        if not patterns or missing:
            problems.append(f"icl.patterns: task {task_name} has no pattern {missing or 'at all'} "
                            f"(tasks.{task_name}.prompt.patterns has {sorted(patterns)})")
    if problems:
        raise ConfigError(f"{origin}: invalid configuration:\n  " + "\n  ".join(problems))


def stage_names(config: dict, stage: str, kind: str) -> list[str]:
    """The models or tasks a stage runs on: its selection, or all declared ones."""
    return list(config.get(stage, {}).get(kind) or sorted(config[kind]))


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    with open(path) as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return check_config(raw, origin=str(path))


def fingerprint(obj) -> str:
    """A short stable hash of a JSON-able value (config slices, provenance)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
