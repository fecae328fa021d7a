"""What a config selects: the models and tasks each stage runs on, derived models and their roots, and the
few-shot prompts the grid builds. The grid's cells are the stages' (stages.grid)."""
from __future__ import annotations

from .config import setting_key, stage_config
from .methods import METHODS


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
