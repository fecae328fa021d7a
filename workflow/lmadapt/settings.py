"""Each stage's settings as a frozen dataclass built from its slice of the config schema, the one source of their
fields, defaults and docs: `lmadapt <stage> --settings JSON` is read into one (`read_settings`), and the stage code
reads attributes (`settings.lora.r`). `raw` keeps the JSON exactly as the rule wrote it, for the hashes and the
provenance a job records: what a job computes with, and so what makes it stale, is the rule's params, never a
default filled in here.

    settings = read_settings("probe", {"probes": ["logreg"], "logreg": {...}, "mlp": {...}})
    settings.mlp.epochs          # a nested object is a dataclass too
    settings_class("finetune")   # the class: its fields, each with the schema's default and description
"""
from __future__ import annotations

import copy
import dataclasses
import functools

import jsonschema

from .config import SELECTIONS, describe_error, load_schema
from .errors import ConfigError
from .methods import METHODS

# Each stage's --settings: its config section less the selections (which name cells), and the keys a job may
# leave out. extract, icl and teacher also take the model dtype; teacher's settings come from finetune.distill.
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


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every settings class has beside its fields: the JSON it was read from."""

    raw: dict = dataclasses.field(default_factory=dict, repr=False, compare=False, kw_only=True)

    def values(self) -> dict:
        """The fields and their values (nested settings as they are), e.g. as keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "raw"}

    def updated(self, **changes) -> Settings:
        """The same settings with some given otherwise (in `raw` too)."""
        return build(type(self), dict(self.raw, **changes))


def build(cls: type[Settings], raw: dict) -> Settings:
    """`cls` from a JSON object: each field its value there, else the schema's default (None where it has none)."""
    values = {}
    for field in dataclasses.fields(cls):
        if field.name == "raw":
            continue
        value = raw[field.name] if field.name in raw else copy.deepcopy(field.metadata["default"])
        nested = field.metadata["nested"]
        values[field.name] = build(nested, value) if nested and isinstance(value, dict) else value
    return cls(**values, raw=raw)


def _resolved(prop: dict, defs: dict) -> dict:
    return defs[prop["$ref"].rsplit("/", 1)[1]] | prop if "$ref" in prop else prop


def _dataclass(name: str, properties: dict, defs: dict) -> type[Settings]:
    fields = []
    for key, prop in properties.items():
        prop = _resolved(prop, defs)
        nested = (_dataclass(name + key.title().replace("_", ""), prop["properties"], defs)
                  if prop.get("type") == "object" and "properties" in prop else None)
        metadata = {"default": prop.get("default"), "doc": prop.get("description", ""), "nested": nested}
        fields.append((key, nested or object, dataclasses.field(default=None, metadata=metadata)))
    cls = dataclasses.make_dataclass(name, fields, bases=(Settings,), frozen=True)
    cls.__doc__ = "\n".join(f"{field[0]}: {field[2].metadata['doc']}" for field in fields)
    return cls


@functools.cache
def _stage_schema(stage: str) -> dict:
    """stage_settings_schema read once per process: a job checks its settings and builds their class from it."""
    return stage_settings_schema(stage)


@functools.cache
def settings_class(stage: str) -> type[Settings]:
    """The settings class of a stage: a field per key of its --settings schema, with the schema's default and
    description (`dataclasses.fields(cls)[i].metadata`)."""
    schema = _stage_schema(stage)
    return _dataclass(stage.title() + "Settings", schema["properties"], schema["$defs"])


def read_settings(stage: str, raw: dict, method: str | None = None) -> Settings:
    """A stage's --settings checked against its schema and read into its class: a bad, unknown or missing setting
    is a ConfigError naming it. Nothing is filled into `raw`: it is the job's JSON exactly as the rule wrote it."""
    section = STAGE_SETTINGS[stage][0]
    schema = _stage_schema(stage)
    problems = [f"{section}.{key}: missing" for key in schema["required"] if key not in raw]
    errors = jsonschema.Draft202012Validator(dict(schema, required=[])).iter_errors(raw)
    for error in sorted(errors, key=lambda e: list(map(str, e.absolute_path))):
        text = describe_error(error)
        problems.append(section + text.removeprefix("(top level)") if text.startswith("(top level)")
                        else f"{section}.{text}")
    if problems:
        raise ConfigError(f"--settings: {'; '.join(problems)}")
    if stage == "finetune" and method is not None:
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}: one of {', '.join(METHODS)}")
        missing = [key for key in METHODS[method].needs() if key not in raw]
        if missing:
            raise ConfigError(f"--settings: method {method} needs finetune.{', '.join(missing)}")
    return build(settings_class(stage), raw)


def section_settings(stage: str, section: dict) -> Settings:
    """A stage's settings from its config section (for one model: config.stage_config), as the preflight and the
    benchmarks cost a job before any --settings is written; the section's selections are left out."""
    cls = settings_class(stage)
    names = {field.name for field in dataclasses.fields(cls)}
    return build(cls, {key: value for key, value in section.items() if key in names})


def settings_help(stage: str, schema: dict) -> str:
    """The --settings fields of a stage, for --help (schema: the config schema)."""
    schema = stage_settings_schema(stage, schema)
    fields = ", ".join(key + ("" if key in schema["required"] else " (optional)") for key in schema["properties"])
    return (f"JSON object: the {STAGE_SETTINGS[stage][0]} config section the job computes with; fields: {fields} "
            f"(workflow/schemas/config.schema.yaml describes each)")
