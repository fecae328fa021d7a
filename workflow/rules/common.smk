# Config validation, wildcard constraints and input functions shared by every rule.
import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))  # the DAG needs lmadapt's config code only
from lmadapt.config import SCHEMA_PATH, check_config, stage_names
from lmadapt.data import resolve_path

# lmadapt's check names the bad key path (tasks.rte.k[0]: -3 is less than the minimum of 1) and fills defaults;
# Snakemake's own validation then records the schema for the report.
config.update(check_config(config, origin="config (config/config.yaml and --configfile/--config)"))
validate(config, str(SCHEMA_PATH))

TASKS = sorted(config["tasks"])


wildcard_constraints:
    task="[a-z][a-z0-9_]*",
    model="[a-z][a-z0-9_]*",
    k=r"\d+",
    seed=r"\d+",
    role=r"train|test|ood_[a-z][a-z0-9_]*",
    sample=r"train_k\d+_seed\d+|test|ood_[a-z][a-z0-9_]*",


THREADS = config["threads"]
# Model jobs use exactly their threads (several jobs share a laptop; Slurm gives each its cpus_per_task) and
# never reach a hub: models and datasets come from resources/, filled by the fetch rules on the login node.
JOB_ENV = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}"


def as_arg(value):
    """A config slice as one shell-quoted JSON argument (kept in params so a change reruns its jobs)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def task_slice(task, *keys):
    """The part of a task's config a job uses, so that e.g. adding a k reruns no existing job."""
    return as_arg({key: config["tasks"][task][key] for key in keys})


def source_entry(task, role):
    """role: train, test, or ood_<name> (as in file names)."""
    spec = config["tasks"][task]
    if role.startswith("ood_"):
        return spec["ood"][role.removeprefix("ood_")]
    return spec["data"][role]


def source_file(task, role):
    """Hub datasets are fetched once into resources/; local and package files are read where they are."""
    source = source_entry(task, role)
    if source.get("hub"):
        return f"resources/data/{task}/{role}.parquet"
    return str(resolve_path(source))


def sample_inputs(wildcards):
    """The source files a sample needs: the train pool always (test may be carved from it), test if declared."""
    roles = ["train"] + (["test"] if "test" in config["tasks"][wildcards.task]["data"] else [])
    return {role: source_file(wildcards.task, role) for role in roles}


def train_samples(task):
    spec = config["tasks"][task]
    return expand("results/samples/{task}/train_k{k}_seed{seed}.parquet", task=task, k=spec["k"], seed=config["seeds"])


def eval_samples(task):
    """The in-domain test sample and every out-of-domain set of a task."""
    return [f"results/samples/{task}/test.parquet"] + [
        f"results/samples/{task}/ood_{name}.parquet" for name in config["tasks"][task]["ood"]
    ]


def eval_splits(task):
    return ["test"] + [f"ood_{name}" for name in config["tasks"][task]["ood"]]


def model_dir(model):
    """Every stage loads models from the folder the fetch_model rule prepares (compute jobs stay offline)."""
    return f"resources/models/{model}"


def cells(task):
    """(k, seed) of every training sample of a task."""
    return [(k, seed) for k in config["tasks"][task]["k"] for seed in config["seeds"]]


def probe_targets():
    out = []
    for model in stage_names(config, "extract", "models") if config["models"] else []:
        for task in stage_names(config, "extract", "tasks"):
            for prompt in config["extract"]["prompts"]:
                out += [f"results/metrics/probe/{model}/{task}/{prompt}/k{k}_seed{seed}.json"
                        for k, seed in cells(task)]
    return out


def bow_targets():
    return [f"results/metrics/bow/{task}/k{k}_seed{seed}.json" for task in stage_names(config, "bow", "tasks")
            for k, seed in cells(task)]


def icl_targets():
    out = []
    for model in stage_names(config, "icl", "models") if config["models"] else []:
        for task in stage_names(config, "icl", "tasks"):
            for shots in config["icl"]["shots"]:
                seeds = config["seeds"][:1] if shots == 0 else config["seeds"]
                out += [f"results/metrics/icl/{model}/{task}/shots{shots}_seed{seed}.json" for seed in seeds]
    return out


def finetune_targets():
    out = []
    for model in stage_names(config, "finetune", "models") if config["models"] else []:
        for task in stage_names(config, "finetune", "tasks"):
            out += [f"results/metrics/finetune/{model}/{task}/{method}/k{k}_seed{seed}.json"
                    for method in config["finetune"]["methods"] for k, seed in cells(task)
                    if not config["finetune"]["k"] or k in config["finetune"]["k"]]
    return out


def all_targets(wildcards):
    targets = []
    for task in TASKS:
        targets += train_samples(task) + eval_samples(task)
    return targets + probe_targets() + bow_targets() + icl_targets() + finetune_targets()
