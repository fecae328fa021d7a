"""The registry of the grid's stages: the stages whose cells make the grid, each writing one metrics file per
cell that the tables read. An entry declares the stage's config section, the model kinds it runs on, its cells
for a config, its metrics file, its CLI verb, its Slurm group and the preflight's check of its cells. The grid,
the aggregate's inputs (the workflow's targets), `io`'s producers, the preflight, the kind checks and the CLI
iterate it. A new stage is one entry here, one rule (workflow/rules/) and its function, and a test
(tests/test_stages.py shows one).

The rules that feed the stages (sample, extract, teacher) and the derived models' rules (instruct, ppo,
classifier: grid.DERIVE_KINDS) are not grid stages. Torch-free: the rules read it as they load."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import layout
from .cli import (EVAL, MODEL_TASK, OUT, TRAIN, TRAINING, Verb, arg, cmd_bow, cmd_finetune, cmd_icl, cmd_probe,
                  json_value, keys_arg, settings_arg)
from .config import DERIVE_KINDS, stage_config
from .grid import derived_models, stage_models, stage_names
from .methods import DECODER, ENCODER, ENCODER_DECODER, METHODS, with_article


@dataclass(frozen=True)
class Stage:
    name: str  # the rule that writes a cell's metrics, and the cells' key in the grid
    section: str  # the config section that selects its models and tasks and holds its settings
    kinds: tuple[str, ...] | None  # the model kinds it runs on (None: no model, or each method's, methods.py)
    cells: Callable[[dict], list[dict]]  # its cells for a checked config (a cell: the rule's wildcards)
    metrics: str  # the metrics file of a cell (layout's pattern; the rule's output)
    verb: Verb  # `lmadapt <verb>`: what the rule runs
    group: str | None  # the Slurm group its jobs are submitted in (slurm/config.yaml's groups)
    plan: Callable | None = None  # plan(measuring, grid): the preflight's check and cost of its cells


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


def preflight(name: str) -> Callable:
    """A preflight check of lmadapt/preflight.py, imported when it runs (it reads tokenizers and model shapes)."""
    def plan(measuring, cells):
        from . import preflight as module
        return getattr(module, name)(measuring, cells)
    return plan


STAGES = {
    "probe": Stage("probe", "extract", (DECODER, ENCODER_DECODER, ENCODER), probe_cells, layout.METRICS["probe"],
                   Verb("probe", cmd_probe, "probes on activations of every layer and pooling", (
                       arg("--train", required=True, help="training activations"), EVAL,
                       arg("--eval-sample", nargs="+", required=True, metavar="SPLIT=PATH",
                           help="the evaluation samples (for per-heuristic scores)"),
                       settings_arg("probe"), keys_arg(), OUT)),
                   "cpu", preflight("plan_extract")),
    "bow": Stage("bow", "bow", None, bow_cells, layout.METRICS["bow"],
                 Verb("bow", cmd_bow, "bag-of-words baseline on the samples' text", (
                     arg("--train", required=True, help="the training sample"), EVAL, settings_arg("bow"),
                     keys_arg(), OUT)),
                 "cpu"),
    "icl": Stage("icl", "icl", (DECODER, ENCODER_DECODER), icl_cells, layout.METRICS["icl"],
                 Verb("icl", cmd_icl, "in-context learning with k demonstrations, every pattern of the task", (
                     *MODEL_TASK, arg("--train", help="the seed's demonstration pool (not needed for 0 shots)"),
                     EVAL, settings_arg("icl"), keys_arg("task, model, k (shots), seed"), OUT)),
                 "gpu_{model}", preflight("plan_icl")),
    "finetune": Stage("finetune", "finetune", None, finetune_cells, layout.METRICS["finetune"],
                      Verb("finetune", cmd_finetune, "DeepSpeed fine-tuning of one method on one training sample, "
                           "then evaluation", (
                               *MODEL_TASK, TRAIN, EVAL,
                               arg("--teacher", help="teacher label distributions (method distill)"),
                               settings_arg("finetune"),
                               arg("--run-settings", type=json_value, default={}, help="checkpoint_every, "
                                   "keep_checkpoint, as JSON (how it runs; never part of a checkpoint's hash)"),
                               *TRAINING, keys_arg("task, model, method, k, seed"), OUT)),
                      "finetune_{model}", preflight("plan_finetune")),
}


def grid(config: dict) -> dict[str, list[dict]]:
    """Every cell of the grid, by stage (and each derived model's job, by its kind, where the grid has one): the
    one list the workflow's targets and the preflight are built from."""
    out = {name: stage.cells(config) for name, stage in STAGES.items()}
    for kind in DERIVE_KINDS:
        if derived_models(config, kind):
            out[kind] = [dict(model=name) for name in derived_models(config, kind)]
    return out


def producers() -> dict[str, str]:
    """The folders of intermediates a job reads, and the rule that makes them (named when one is unreadable)."""
    return {layout.SAMPLES: "sample", layout.folder_and_glob(layout.ACTIVATIONS)[0]: "extract",
            layout.folder_and_glob(layout.TEACHER)[0]: "teacher",
            **{layout.folder_and_glob(stage.metrics)[0]: name for name, stage in STAGES.items()}}


# The model kinds a derived model's rule runs on (its base's kind); extract's are the probes'.
RULE_KINDS = {"instruct": (DECODER,), "ppo": (DECODER, ENCODER_DECODER), "classifier": METHODS["head"].kinds}


def stage_key(section: str, model: str) -> str:
    """The config key that sends a model to a stage (finetune: the key listing its methods)."""
    return "finetune.methods" if section == "finetune" else f"{section}.models"


def kind_problems(cells: dict[str, list[dict]], kinds: dict[str, str], key_of=stage_key) -> list[str]:
    """Cells a model cannot run, one line per (stage or method, model), naming the config key that asks for it.
    cells: the grid by stage; kinds: model name -> kind, for the models whose config.json is at hand;
    key_of(section, model): the config key that asks for a model's cells of a stage."""
    problems = {}
    for name, stage_cells in cells.items():
        stage = STAGES.get(name)
        section, runs_on = (stage.section, stage.kinds) if stage else (name, RULE_KINDS.get(name))
        for cell in stage_cells:
            kind = kinds.get(cell.get("model"))
            if "method" in cell:
                runs_on, what = METHODS[cell["method"]].kinds, f"method {cell['method']}"
            else:
                what = section
            if kind is None or runs_on is None or kind in runs_on:
                continue
            key = key_of(section, cell["model"])
            problems[key, what, cell["model"]] = (f"{key}: {what} runs on {' and '.join(runs_on)} models; "
                                                  f"{cell['model']} is {with_article(kind)} model")
    return list(problems.values())
