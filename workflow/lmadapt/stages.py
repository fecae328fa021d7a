"""The registry of the grid's stages: the stages whose cells make the grid, each writing one metrics file per
cell that the tables read. An entry declares what a stage is: its config section, the model kinds it runs on, its
cells for a config, its metrics file (results/metrics/<stage>/..., layout.METRICS), its Slurm group, and by name
(`module:attribute`, as Python's entry points name a function) the CLI verb its rule runs and the preflight's check
of its cells. The registry imports neither: the CLI and the preflight sit above it and look them up. The grid, the
workflow's targets (jobs.py), the config checks (checks.py), the preflight and the CLI iterate it. A new stage is
one entry here, one rule (workflow/rules/) and its function, and a test (tests/test_stages.py shows one).

The rules that feed the stages (sample, extract, teacher) and the derived models' rules (instruct, ppo,
classifier: config.DERIVE_KINDS) are not grid stages. Torch-free: the rules read it as they load."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import layout
from .config import DERIVE_KINDS, stage_config
from .grid import derived_models, stage_models, stage_names
from .methods import DECODER, ENCODER, ENCODER_DECODER, METHODS


@dataclass(frozen=True)
class Stage:
    name: str  # the rule that writes a cell's metrics, and the cells' key in the grid
    section: str  # the config section that selects its models and tasks and holds its settings
    kinds: tuple[str, ...] | None  # the model kinds it runs on (None: no model, or each method's, methods.py)
    cells: Callable[[dict], list[dict]]  # its cells for a checked config (a cell: the rule's wildcards)
    metrics: str  # the metrics file of a cell (layout's pattern; the rule's output)
    verb: str  # the Verb its rule runs (`lmadapt <verb.name>`), as module:attribute (the CLI's PROBE_VERB, ...)
    group: str | None  # the Slurm group its jobs are submitted in (slurm/config.yaml's groups)
    plan: str | None = None  # plan(measuring, grid): the preflight's check and cost of its cells, as module:function


def train_cells(config: dict, task: str) -> list[tuple]:
    """(k, seed) of a task's training samples."""
    return [(k, seed) for k in config["tasks"][task]["k"] for seed in config["seeds"]]


def per_model_and_task(config: dict, section: str, cells_of: Callable) -> list[dict]:
    """The cells of a model stage: cells_of(settings, model, task) for every model it runs on (its own settings
    over the section's) and every task it selects for that model."""
    return [cell for model in stage_models(config, section)
            for settings in [stage_config(config, section, model)]
            for task in stage_names(config, section, "tasks", model)
            for cell in cells_of(settings, model, task)]


def probe_cells(config: dict) -> list[dict]:
    return per_model_and_task(config, "extract", lambda extract, model, task: [
        dict(model=model, task=task, prompt=prompt, k=k, seed=seed)
        for prompt in extract["prompts"] for k, seed in train_cells(config, task)])


def bow_cells(config: dict) -> list[dict]:
    tasks = stage_names(config, "bow", "tasks")
    cells = [dict(task=task, k=k, seed=seed) for task in tasks for k, seed in train_cells(config, task)]
    full_train = config["bow"].get("full_train")
    if full_train is not None:
        cells += [dict(task=task, k="all", seed=seed) for task in full_train.get("tasks") or tasks
                  for seed in config["seeds"]]
    return cells


def icl_cells(config: dict) -> list[dict]:
    """Zero-shot prompts do not depend on the seed: they run once, with the first seed."""
    return per_model_and_task(config, "icl", lambda icl, model, task: [
        dict(model=model, task=task, shots=shots, seed=seed)
        for shots in icl["shots"] for seed in (config["seeds"][:1] if shots == 0 else config["seeds"])])


def finetune_cells(config: dict) -> list[dict]:
    return per_model_and_task(config, "finetune", lambda finetune, model, task: [
        dict(model=model, task=task, method=method, k=k, seed=seed)
        for method in finetune["methods"] for k, seed in train_cells(config, task)
        if not finetune["k"] or k in finetune["k"]])


STAGES = {
    "probe": Stage("probe", "extract", (DECODER, ENCODER_DECODER, ENCODER), probe_cells, layout.METRICS["probe"],
                   "lmadapt.cli:PROBE_VERB", "cpu", "lmadapt.preflight:plan_extract"),
    "bow": Stage("bow", "bow", None, bow_cells, layout.METRICS["bow"], "lmadapt.cli:BOW_VERB", "cpu"),
    "icl": Stage("icl", "icl", (DECODER, ENCODER_DECODER), icl_cells, layout.METRICS["icl"], "lmadapt.cli:ICL_VERB",
                 "gpu_{model}", "lmadapt.preflight:plan_icl"),
    "finetune": Stage("finetune", "finetune", None, finetune_cells, layout.METRICS["finetune"],
                      "lmadapt.cli:FINETUNE_VERB", "finetune_{model}", "lmadapt.preflight:plan_finetune"),
}


def grid(config: dict) -> dict[str, list[dict]]:
    """Every cell of the grid, by stage (and each derived model's job, by its kind, where the grid has one): the
    one list the workflow's targets and the preflight are built from."""
    out = {name: stage.cells(config) for name, stage in STAGES.items()}
    for kind in DERIVE_KINDS:
        if derived_models(config, kind):
            out[kind] = [dict(model=name) for name in derived_models(config, kind)]
    return out


# The model kinds a derived model's rule runs on (its base's kind); extract's are the probes'.
RULE_KINDS = {"instruct": (DECODER,), "ppo": (DECODER, ENCODER_DECODER), "classifier": METHODS["head"].kinds}
