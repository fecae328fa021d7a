"""The configuration reference (docs/config-reference.md), written from the schema as the workflow loads it: every
key with its type, range, default and description has one source, so the page cannot drift from what is checked
(a test compares the two; `lmadapt config-reference --out docs/config-reference.md` rewrites it)."""
import json
import re

from .config import DERIVE_STAGES, GRID_WIDE, MODEL_STAGES, load_schema

HEADER = """# Configuration reference

Generated from `workflow/schemas/config.schema.yaml` (as the workflow loads it, with the fine-tuning methods from
the method registry) by `lmadapt config-reference`; do not edit by hand. Unknown keys are errors; a default is
filled in where a key is left out. `<name>` stands for a name you choose (lowercase letters, digits, `_`).
docs/configuration.md explains how the pieces fit together.
"""
OWN_STAGE_SETTINGS = MODEL_STAGES + DERIVE_STAGES  # models.<name>.<stage>: the section's keys, documented there


def _text(value) -> str:
    return re.sub(r"\s+", " ", str(value)).strip().replace("|", "\\|")


def _bounds(node: dict) -> str:
    marks = (("minimum", "≥ {}"), ("exclusiveMinimum", "> {}"), ("maximum", "≤ {}"), ("exclusiveMaximum", "< {}"),
             ("minItems", "at least {} item(s)"), ("maxItems", "at most {} items"))
    return ", ".join(text.format(node[key]) for key, text in marks if key in node)


def type_of(node: dict) -> str:
    """A schema node's type in words: `integer (≥ 1)`, `list of name`, `one of: skip, max`, `a data source`."""
    if "$ref" in node:
        return {"name": "name", "source": "a data source", "task": "a task", "model": "a model"}[
            node["$ref"].rsplit("/", 1)[1]]
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return "one of: " + ", ".join(json.dumps(v) if v is None else str(v) for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(type_of(alternative) for alternative in node["oneOf"])
    kinds = node.get("type", "object" if "properties" in node or "additionalProperties" in node else "any")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    words = []
    for kind in kinds:
        if kind == "array":
            words.append(f"list of {type_of(node.get('items', {}))}")
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            words.append(f"map of <name> to {type_of(node['additionalProperties'])}")
        else:
            words.append(kind)
    bounds = _bounds(node)
    return " or ".join(words) + (f" ({bounds})" if bounds else "")


def _rows(node: dict, prefix: str, defs: dict) -> list[str]:
    """Table rows for the keys below `node` (an object schema), paths relative to its section."""
    rows = []
    for key, child in node.get("properties", {}).items():
        path = f"{prefix}{key}"
        if key in OWN_STAGE_SETTINGS and node is defs["model"]:  # the section's keys, documented with it
            rows.append(f"| `{path}` | object | – | This model's own `{key}` settings: keys of the `{key}` section "
                        f"below (not {', '.join(f'`{k}`' for k in GRID_WIDE)}), over the section's; `lora` and "
                        f"`distill` merge key by key. |")
            continue
        default = json.dumps(child["default"], ensure_ascii=False) if "default" in child else None
        shown = "–" if default is None else f"`{_text(default)}`" if len(default) <= 60 else "long: see the schema"
        rows.append(f"| `{path}` | {_text(type_of(child))} | {shown} | {_text(child.get('description', ''))} |")
        if child.get("properties"):
            rows += _rows(child, f"{path}.", defs)
        elif isinstance(child.get("additionalProperties"), dict) and child["additionalProperties"].get("properties"):
            rows += _rows(child["additionalProperties"], f"{path}.<name>.", defs)
        elif child.get("type") == "array" and child.get("items", {}).get("properties"):
            rows += _rows(child["items"], f"{path}[].", defs)
    return rows


def _table(title: str, description: str, rows: list[str]) -> str:
    head = ["", f"## {title}", ""] + ([_text(description).replace("\\|", "|"), ""] if description else [])
    return "\n".join(head + ["| key | type | default | what |", "|---|---|---|---|"] + rows)


def config_reference() -> str:
    schema = load_schema()
    defs, top = schema["$defs"], schema["properties"]
    scalars = {"properties": {k: v for k, v in top.items() if "properties" not in v and
                              not isinstance(v.get("additionalProperties"), dict)}}
    parts = [HEADER.rstrip("\n"), _table("Top level", schema.get("description", ""), _rows(scalars, "", defs)),
             _table("`tasks.<name>`: a task", defs["task"].get("description", ""), _rows(defs["task"], "", defs)),
             _table("`models.<name>`: a model", defs["model"].get("description", ""), _rows(defs["model"], "", defs)),
             _table("A data source (`tasks.<name>.data.<split>`, `tasks.<name>.ood.<name>`, `corpora.<name>`)",
                    defs["source"].get("description", "") + " Give exactly one of `path` (optionally inside "
                    "`package`) or `hub`.", _rows(defs["source"], "", defs))]
    for key, section in top.items():
        if "properties" in section:
            parts.append(_table(f"`{key}`", section.get("description", ""), _rows(section, f"{key}.", defs)))
    return "\n".join(parts) + "\n"
