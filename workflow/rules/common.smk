# Config validation, wildcard constraints and the functions every rule uses (none live in the rule files).
import json
import os
import re
import shlex
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))  # the DAG needs lmadapt's config code only
from lmadapt import layout
from lmadapt.checks import check_config, start_problems
from lmadapt.config import (
    FINETUNE_RUN_SETTINGS,
    SCHEMA_PATH,
    SELECTIONS,
    ConfigError,
    finetune_settings,
    read_yaml,
    stage_config,
)
from lmadapt.data import corpus_path, resolve_path
from lmadapt.grid import (
    demonstration_needs,
    demonstration_pool,
    derived_models,
    grid,
    reward_models,
    root_model,
)
from lmadapt.resources import dataset_identity, model_identity
from lmadapt.methods import METHODS, method_pattern

# lmadapt's check names the bad key path (tasks.rte.k[0]: -3 is less than the minimum of 1) and fills defaults;
# Snakemake's own validation then records the schema for the report. Each config file is read again, strictly:
# Snakemake's YAML reading keeps the last of two equal keys without a word.
for path in workflow.configfiles:
    read_yaml(path)
config.update(check_config(config, origin="config (config/config.yaml and --configfile/--config)"))
validate(config, str(SCHEMA_PATH))
# What the files at hand already tell, before any job (lmadapt/checks.py; `lmadapt validate-config` runs the same).
PROBLEMS = start_problems(config)
if PROBLEMS:
    raise ConfigError("invalid configuration:\n  " + "\n  ".join(PROBLEMS))

TASKS = sorted(config["tasks"])
GRID = grid(config)  # every cell, by stage


NAME = "[a-z][a-z0-9_]*"


def unprepared(pattern):
    """A wildcard constraint (of a fetch rule's first wildcard in its output `pattern`) that matches no resource
    already there: what a user prepared or fetched is then no job's output, so neither --forceall, --forcerun nor a
    changed rule can remove it, not even as root (whom write protection does not stop). To fetch it anew,
    remove it by hand (docs/troubleshooting.md)."""
    folder, rest = pattern.split("/{", 1)
    glob = re.sub(r"\{\w+\}", "*", "{" + rest)
    existing = sorted(re.escape(path.relative_to(folder).as_posix()) for path in Path(folder).glob(glob))
    return f"(?!(?:{'|'.join(existing)})$){NAME}" if existing else NAME


wildcard_constraints:
    task=NAME,
    model=NAME,
    k=r"\d+",
    seed=r"\d+",
    role=r"train|test|ood_[a-z][a-z0-9_]*",
    sample=layout.SampleName.PATTERN,


THREADS = config["threads"]
# Model jobs use exactly their threads (several jobs share a laptop; Slurm gives each its cpus_per_task) and
# never reach a hub: models and datasets come from resources/, filled by the fetch rules on the login node.
JOB_ENV = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"
# Every rule's software: `--sdm conda` builds this environment once and runs each job in it (its post-deploy
# script installs the lmadapt package); without `--sdm conda` jobs use the environment Snakemake runs in.
CONDA_ENV = "../../envs/lmadapt.yaml"  # relative to workflow/rules/
# Relative to the working directory, so that a checkout moved or cloned anew with its results reruns no job.
DEEPSPEED_CONFIG = os.path.relpath(Path(workflow.basedir) / f"config/deepspeed/{config['finetune']['zero']}.json")


def offline(command):
    """A model job's command: offline, with exactly its threads. (The rule's shell text is unchanged by this
    helper: Snakemake reruns every job whose command text changes.)"""
    return f"{JOB_ENV} {command}"


# ---------------------------------------------------------------- params: what a job computes, and nothing else


def as_arg(value):
    """A config slice as one shell-quoted JSON argument (kept in params so a change reruns its jobs)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def run_setting(value):
    """A param for how a job runs, not what it computes (checkpoint cadence). Snakemake counts a param function
    that takes `resources` as derived, and a derived param never makes a job stale."""
    return lambda wildcards, resources: as_arg(value)


def task_slice(task, *keys, **values):
    """The part of a task's config a job uses, so that e.g. adding a k reruns no existing job."""
    return as_arg({key: config["tasks"][task][key] for key in keys} | values)


def task_prompting(wildcards):
    """What a model job needs of its task: fields, labels and prompt patterns."""
    return task_slice(wildcards.task, "fields", "labels", "prompt")


def input_option(name, flag):
    """`FLAG PATH` for an optional input (a param derived from the input, so it never reruns a job)."""

    def option(wildcards, input):
        path = getattr(input, name)
        return f"{flag} {path}" if path else ""

    return option


def stage_settings(stage, model, **extra):
    """A model stage's settings for one model's jobs (its own over the section's) without the selections (which
    models, tasks, shots, k: they name cells, they change no cell)."""
    section = stage_config(config, stage, model)
    return as_arg({key: value for key, value in section.items() if key not in SELECTIONS} | extra)


# ---------------------------------------------------------------- resources: never part of a result


def per_attempt(amount):
    """A resource that grows with the attempt (mem_mb, runtime): a job killed for it gets more on its retry."""

    def scaled(wildcards, attempt):
        return amount * attempt

    return scaled


def model_resources(scale=1, gpus="one"):
    """mem_mb (growing with the attempt) and GPUs of a model job: `one` for inference, `all` of the model's for
    fine-tuning (one task: torchrun starts a process per GPU)."""

    def mem_mb(wildcards, attempt):
        return config["models"][wildcards.model]["mem_mb"] * scale * attempt

    def gpu(wildcards):
        count = config["models"][wildcards.model]["gpus"]
        return count if gpus == "all" else min(count, 1)

    return {"mem_mb": mem_mb, "gpu": gpu}


# ---------------------------------------------------------------- data


def source_entry(task, role):
    """role: train, test, or ood_<name> (as in file names)."""
    spec = config["tasks"][task]
    if role.startswith("ood_"):
        return spec["ood"][role.removeprefix("ood_")]
    return spec["data"][role]


def dataset_source(wildcards):
    return as_arg(dataset_identity(source_entry(wildcards.task, wildcards.role)))


def source_file(task, role):
    """Hub datasets are fetched once into resources/; local and package files are read where they are."""
    source = source_entry(task, role)
    if source.get("hub"):
        return layout.DATASET.format(task=task, role=role)
    return str(resolve_path(source))


def sample_inputs(wildcards):
    """The source files a sample needs: an out-of-domain set its own; every other sample the train pool (test
    may be carved from it), the test split if declared, and the out-of-domain sets where the task drops the
    training rows they share a text with (tasks.<task>.overlap: drop)."""
    if wildcards.sample.startswith("ood_"):
        return {wildcards.sample: source_file(wildcards.task, wildcards.sample)}
    task = config["tasks"][wildcards.task]
    roles = ["train"] + (["test"] if "test" in task["data"] else [])
    if wildcards.sample != "test" and task.get("overlap") == "drop":
        roles += [f"ood_{name}" for name in task["ood"]]
    return {role: source_file(wildcards.task, role) for role in roles}


def sample_task(wildcards):
    """The task settings one sample depends on: a training sample also on the demonstration pool it stays clear
    of, an out-of-domain sample only on its own source."""
    task, sample = wildcards.task, wildcards.sample
    if sample.startswith("ood_"):
        name = sample.removeprefix("ood_")
        return as_arg(
            {
                "fields": config["tasks"][task]["fields"],
                "labels": config["tasks"][task]["labels"],
                "ood": {name: config["tasks"][task]["ood"][name]},
            }
        )
    keys = ("fields", "labels", "data", "n_test")
    if sample == "test":
        return task_slice(task, *keys)
    # a task that sets `overlap` (no default, so no existing sample reruns) adds it, and with drop its ood sets
    overlap = [key for key in ("overlap", "ood") if "overlap" in config["tasks"][task]]
    if sample == "instructions":
        return task_slice(task, *keys, "instructions", *overlap)
    return task_slice(task, *keys, *overlap, demonstrations=demonstration_pool(config, task))


def sample_split(wildcards):
    """The `lmadapt sample` arguments naming the sample: --split (and --k, --seed)."""
    name = layout.SampleName.parse(wildcards.sample)
    return f"--split {name.role}" + "".join(
        f" --{key} {value}" for key, value in (("k", name.k), ("seed", name.seed)) if value is not None
    )


def sample_roles(wildcards, input):
    return " ".join(f"{role.replace('ood_', 'ood:', 1)}={path}" for role, path in input.items())


def train_samples(task):
    spec = config["tasks"][task]
    return expand(layout.TRAIN_SAMPLE, task=task, k=spec["k"], seed=config["seeds"])


def demonstration_samples(task):
    """The seeds' demonstration pools, for a task whose prompts have demonstrations."""
    if not demonstration_pool(config, task):
        return []
    return [layout.sample_path(task, layout.demonstration_pool(seed)) for seed in config["seeds"]]


def demonstration_pool_file(task, seed, shots=1):
    """The pool a few-shot prompt of this seed draws from (none for zero shots)."""
    return layout.sample_path(task, layout.demonstration_pool(seed)) if int(shots) else []


def eval_splits(task):
    return ["test"] + [f"ood_{name}" for name in config["tasks"][task]["ood"]]


def eval_samples(task):
    """The in-domain test sample and every out-of-domain set of a task."""
    return [layout.sample_path(task, split) for split in eval_splits(task)]


def task_eval_samples(wildcards):
    return eval_samples(wildcards.task)


def eval_sample_arg(wildcards):
    """SPLIT=PATH arguments of a task's evaluation samples."""
    task = wildcards.task
    return " ".join(f"{split}={path}" for split, path in zip(eval_splits(task), eval_samples(task)))


# ---------------------------------------------------------------- models


def model_dir(model):
    """Every stage loads models from the folder the fetch_model rule prepares (compute jobs stay offline), or the
    one a derived model's rule (derive.smk) trains."""
    if config["models"][model].get("derive"):
        return layout.DERIVED_MODEL.format(model=model)
    return layout.PREPARED_MODEL.format(model=model)


def model_folder(wildcards):
    return model_dir(wildcards.model)


def fetched_model(wildcards):
    """A model's identity (hub id and revision, or file and its hash): the one param of its fetch."""
    return as_arg(model_identity(config["models"][wildcards.model]))


def used_models():
    return sorted({cell["model"] for cells in GRID.values() for cell in cells if "model" in cell})


# ---------------------------------------------------------------- probes


def extract_demos(wildcards):
    if wildcards.prompt == "none":
        return []
    return demonstration_pool_file(wildcards.task, layout.prefix_seed(wildcards.prompt))


def extract_settings(wildcards):
    """The extract section a job uses: the prefix's size only with a prefix."""
    if wildcards.prompt == "none":
        return stage_settings("extract", wildcards.model, dtype="auto")
    shots = stage_config(config, "extract", wildcards.model)["shots"]
    return stage_settings("extract", wildcards.model, dtype="auto", shots=shots)


def extract_demos_arg(wildcards, input):
    if not input.demos:
        return ""
    return f"--demos {input.demos} --seed {layout.prefix_seed(wildcards.prompt)}"


def probe_activations(wildcards):
    folder = layout.prompt_folder(wildcards.prompt, wildcards.seed)
    samples = {"train": layout.train_sample(wildcards.k, wildcards.seed)} | {s: s for s in eval_splits(wildcards.task)}
    return {
        role: layout.ACTIVATIONS.format(model=wildcards.model, task=wildcards.task, prompt=folder, sample=sample)
        for role, sample in samples.items()
    }


def probe_evals(wildcards, input):
    return " ".join(f"{split}={input[split]}" for split in eval_splits(wildcards.task))


def cell_of(wildcards):
    """The cell's keys, as the metrics records carry them."""
    named = dict(wildcards.items())
    if "shots" in named:  # an ICL cell's labeled examples are its demonstrations
        named["k"] = named.pop("shots")
    keys = {key: named[key] for key in ("task", "model", "prompt", "method") if key in named}
    # k "all": the full training set (bag-of-words), recorded without a k
    return keys | {key: None if named[key] == "all" else int(named[key]) for key in ("k", "seed") if key in named}


def cell_keys(wildcards):
    return as_arg(cell_of(wildcards))


def bow_settings(wildcards):
    """The bag-of-words settings; a full-training-set job (k "all") adds its validation share."""
    section = {key: value for key, value in config["bow"].items() if key not in SELECTIONS + ("full_train",)}
    if wildcards.k == "all" and "validation" in config["bow"]["full_train"]:
        section["validation"] = config["bow"]["full_train"]["validation"]
    return as_arg(section)


def bow_cell_keys(wildcards):
    """Bag-of-words rows carry model and prompt `none`, so that they sit in the same tables as the models'."""
    return as_arg(cell_of(wildcards) | {"model": "none", "prompt": "none"})


def probe_targets():
    return [layout.METRICS["probe"].format(**cell) for cell in GRID["probe"]]


def bow_targets():
    return [layout.METRICS["bow"].format(**cell) for cell in GRID["bow"]]


# ---------------------------------------------------------------- in-context learning


def icl_settings(wildcards):
    return stage_settings("icl", wildcards.model, dtype="auto")


def icl_demos(wildcards):
    return demonstration_pool_file(wildcards.task, wildcards.seed, wildcards.shots)


def icl_targets():
    return [layout.METRICS["icl"].format(**cell) for cell in GRID["icl"]]


# ---------------------------------------------------------------- fine-tuning


def teacher_settings(model):
    """The prompted teacher's settings: the model's distillation shots and batch, and the fine-tuning pattern."""
    finetune = stage_config(config, "finetune", model)
    distill = finetune["distill"]
    return {
        "shots": distill["shots"],
        "pattern": finetune["pattern"],
        "batch_size": distill["batch_size"],
        "dtype": "auto",
    }


def teacher_settings_arg(wildcards):
    return as_arg(teacher_settings(wildcards.model))


def teacher_demos(wildcards):
    return demonstration_pool_file(wildcards.task, wildcards.seed, teacher_settings(wildcards.model)["shots"])


def method_settings(wildcards):
    """A fine-tuning job's settings: its method's only, so that a LoRA setting reruns LoRA jobs alone (and its
    model's LoRA target modules, where the model names its own)."""
    return as_arg(finetune_settings(config, wildcards.method, wildcards.model))


def teacher_file(wildcards):
    if not METHODS[wildcards.method].teacher:
        return []
    return layout.TEACHER.format(**dict(wildcards.items()))


def finetune_launcher(wildcards):
    """One process per GPU through torchrun; a plain process on CPU or one GPU."""
    gpus = config["models"][wildcards.model]["gpus"]
    return f"torchrun --standalone --nproc_per_node {gpus} -m lmadapt" if gpus > 1 else "lmadapt"


def launcher_tasks(wildcards):
    """Slurm tasks of a fine-tuning job: 0 on several GPUs (torchrun starts the processes, not the plugin)."""
    return 0 if config["models"][wildcards.model]["gpus"] > 1 else 1


def finetune_targets():
    return [layout.METRICS["finetune"].format(**cell) for cell in GRID["finetune"]]


# ---------------------------------------------------------------- derived models


def derived_pattern(kind):
    """The {model} wildcard of a derived kind's rule: exactly its models (a pattern that matches nothing when
    there are none)."""
    return "|".join(derived_models(config, kind)) or "(?!)"


def base_folder(wildcards):
    return model_dir(config["models"][wildcards.model]["base"])


def corpus_file(name):
    """Hub corpora are fetched once into resources/; local and package files are read where they are."""
    return str(corpus_path(config["corpora"][name], layout.CORPUS.format(corpus=name)))


def corpus_source(wildcards):
    return as_arg(dataset_identity(config["corpora"][wildcards.corpus]))


def instruction_sets(model):
    """An instruction-tuned model's sets: corpora (corpus_<name>) and tasks' instruction samples (task_<name>)."""
    settings = stage_config(config, "instruct", model)
    return {f"corpus_{name}": corpus_file(name) for name in settings["data"]} | {
        f"task_{task}": layout.sample_path(task, "instructions") for task in settings["tasks"]
    }


def instruct_inputs(wildcards):
    return instruction_sets(wildcards.model)


def instruction_sets_arg(wildcards, input):
    """NAME=PATH of each instruction set (derived from the input: a moved file reruns nothing)."""
    return " ".join(
        f"{key.split('_', 1)[1]}={path}" for key, path in input.items() if key.startswith(("corpus_", "task_"))
    )


def instruct_settings(wildcards):
    """What an instruction-tuned model computes with (its sets are inputs; checkpoint cadence is how it runs)."""
    settings = stage_config(config, "instruct", wildcards.model)
    return as_arg({key: value for key, value in settings.items() if key not in ("data", "tasks", "checkpoint_every")})


def instruct_run_settings(wildcards, resources):
    """Checkpoint cadence: derived from resources, so that changing it reruns nothing."""
    return as_arg({"checkpoint_every": stage_config(config, "instruct", wildcards.model)["checkpoint_every"]})


def instruct_corpora(wildcards):
    return as_arg({name: config["corpora"][name] for name in stage_config(config, "instruct", wildcards.model)["data"]})


def classifier_cell(model):
    """(task, k, seed) of a derived classifier's training sample."""
    spec = config["models"][model]["classifier"]
    return spec["task"], spec["k"], spec["seed"]


def classifier_train(wildcards):
    task, k, seed = classifier_cell(wildcards.model)
    return layout.sample_path(task, layout.train_sample(k, seed))


def classifier_evals(wildcards):
    return eval_samples(classifier_cell(wildcards.model)[0])


def classifier_eval_arg(wildcards):
    task = classifier_cell(wildcards.model)[0]
    return " ".join(f"{split}={path}" for split, path in zip(eval_splits(task), eval_samples(task)))


def classifier_task(wildcards):
    task = classifier_cell(wildcards.model)[0]
    return f"--task {task} --task-config {task_slice(task, 'fields', 'labels', 'prompt')}"


def classifier_settings(wildcards):
    """A classifier's settings: method head's fine-tuning settings, its model's own over the section's."""
    return as_arg(finetune_settings(config, "head", wildcards.model))


def classifier_run_settings(wildcards, resources):
    finetune = stage_config(config, "finetune", wildcards.model)
    return as_arg({key: finetune[key] for key in FINETUNE_RUN_SETTINGS})


def classifier_keys(wildcards):
    task, k, seed = classifier_cell(wildcards.model)
    return as_arg({"task": task, "model": wildcards.model, "method": "head", "k": k, "seed": seed})


def reward_folder(wildcards):
    return model_dir(stage_config(config, "ppo", wildcards.model)["reward"]["model"])


def ppo_prompts(wildcards):
    return corpus_file(stage_config(config, "ppo", wildcards.model)["prompts"]["corpus"])


def ppo_settings(wildcards):
    return as_arg(stage_config(config, "ppo", wildcards.model))


def ppo_corpus(wildcards):
    return as_arg(config["corpora"][stage_config(config, "ppo", wildcards.model)["prompts"]["corpus"]])


# ---------------------------------------------------------------- the whole grid


def computed_config():
    """The config without how jobs run (threads, mem_mb, checkpoint cadence): what the results depend on."""
    computed = {key: value for key, value in config.items() if key != "threads"}
    computed["finetune"] = {k: v for k, v in config["finetune"].items() if k not in FINETUNE_RUN_SETTINGS}
    computed["models"] = {
        name: {k: v for k, v in spec.items() if k != "mem_mb"} for name, spec in config["models"].items()
    }
    return computed


def preflight_config(wildcards):
    """What the preflight reads: the grid and its prompts, fine-tuning and GPU settings; not the probe, bag-of-
    words or table settings, and no Slurm request (mem_mb, threads), so changing those does not rerun it."""
    plan = {key: value for key, value in computed_config().items() if key not in ("probe", "aggregate", "bow")}
    plan["bow"] = {key: config["bow"][key] for key in ("tasks", "full_train") if key in config["bow"]}
    return as_arg(plan)


def results_config(wildcards):
    """The config for the report: everything a result depends on, defaults filled in (a function: the prompt
    templates' braces are not wildcards)."""
    return as_arg(computed_config())


def preflight_data():
    """The instruction sets the preflight costs instruction tuning on (fetched corpora, tasks' samples)."""
    return sorted({path for model in derived_models(config, "instruct") for path in instruction_sets(model).values()})


def used_model_dirs():
    """The fetched folders the grid's models come from (a derived model's root; the reward models'): what the
    preflight reads, before any model is trained."""
    needed = used_models() + derived_models(config) + sorted(reward_models(config))
    return sorted({model_dir(root_model(config, model)) for model in needed})


@contextmanager
def listed(paths):
    """A file listing paths, one a line: a grid's paths overflow one shell argument (128 KiB)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("".join(f"{path}\n" for path in paths))
        listing.flush()
        yield listing.name


def metrics_targets():
    return probe_targets() + bow_targets() + icl_targets() + finetune_targets()


def derive_targets():
    return [layout.DERIVE_METRICS.format(model=model) for model in derived_models(config)]


def derived_summary_target():
    return [layout.DERIVE_SUMMARY] if derived_models(config) else []


def sample_targets():
    targets = []
    for task in TASKS:
        targets += train_samples(task) + demonstration_samples(task) + eval_samples(task)
    return targets


def all_targets(wildcards):
    return sample_targets() + metrics_targets() + derive_targets()
