# Config validation, wildcard constraints and the functions every rule uses (none live in the rule files). What a
# job gets (its params and the inputs its cell determines) is computed in the package, lmadapt/jobs.py; the
# functions here adapt it to Snakemake's wildcards.
import inspect
import json
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))  # the DAG needs lmadapt's config code only
from lmadapt import layout
from lmadapt.calibration import pilot_cells
from lmadapt.checks import check_config, start_problems
from lmadapt.config import SCHEMA_PATH, ConfigError, read_yaml
from lmadapt.grid import derived_models
from lmadapt.jobs import PARAMS, Jobs, as_arg
from lmadapt.methods import method_pattern
from lmadapt.sizing import Requests

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

JOBS = Jobs(config)  # every job's params and inputs, each computed once
REQUESTS = Requests(config)  # every job's runtime and mem_mb, from its predicted cost


NAME = "[a-z][a-z0-9_]*"


def unprepared(pattern):
    """A wildcard constraint (of a fetch rule's first wildcard in its output `pattern`) that matches no resource
    already there: what a user prepared or fetched is then no job's output, so neither --forceall, --forcerun nor a
    changed rule can remove it, not even as root (whom write protection does not stop). To fetch it anew,
    remove it by hand (docs/troubleshooting.md)."""
    folder, glob = layout.folder_and_glob(pattern)
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


def known_signature(func):
    """Snakemake inspects a rule function's signature two or three times at each call (90,000 times for these
    functions as it plans the paper grid); `inspect` reads a recorded `__signature__` instead of deriving it."""
    func.__signature__ = inspect.signature(func)
    return func


def offline(command):
    """A model job's command: offline, with exactly its threads. (The rule's shell text is unchanged by this
    helper: Snakemake reruns every job whose command text changes.)"""
    return f"{JOB_ENV} {command}"


# ---------------------------------------------------------------- what a job gets: lmadapt/jobs.py, by cell


def cell_of(wildcards):
    return dict(wildcards.items())


def job_params(rule):
    """A rule's params: exactly what its job computes with (a change reruns it, nothing else does)."""
    return {
        name: known_signature(lambda wildcards, name=name: JOBS.params(rule, cell_of(wildcards))[name])
        for name in PARAMS[rule]
    }


def job_inputs(rule):
    """The inputs a job's cell determines (model folders, samples, pools, teachers), named as the shell uses them."""
    return known_signature(lambda wildcards: JOBS.inputs(rule, cell_of(wildcards)))


def run_settings(rule):
    """A job's run settings (lmadapt/jobs.py: batch sizes of inference, checkpoint cadence; how it runs, never what
    it computes) as one argument. Snakemake counts a param function that takes `resources` as derived, and a
    derived param never makes a job stale."""
    return known_signature(lambda wildcards, resources: as_arg(JOBS.run_settings(rule, cell_of(wildcards))))


def derived_arg(value):
    """A value as one argument that never makes a job stale (a derived param, as run_settings)."""
    return known_signature(lambda wildcards, resources: as_arg(value))


# Arguments made of input paths: derived from the input, so a moved file reruns nothing.


def input_option(name, flag):
    """`FLAG PATH` for an optional input."""

    @known_signature
    def option(wildcards, input):
        path = getattr(input, name)
        return f"{flag} {path}" if path else ""

    return option


@known_signature
def sample_roles(wildcards, input):
    return " ".join(f"{role.replace('ood_', 'ood:', 1)}={path}" for role, path in input.items())


@known_signature
def extract_demos_arg(wildcards, input):
    return f"--demos {input.demos} --seed {layout.prefix_seed(wildcards.prompt)}" if input.demos else ""


@known_signature
def probe_evals(wildcards, input):
    return " ".join(f"{split}={input[split]}" for split in JOBS.eval_splits(wildcards.task))


@known_signature
def instruction_sets_arg(wildcards, input):
    """NAME=PATH of each instruction set."""
    return " ".join(
        f"{key.split('_', 1)[1]}={path}" for key, path in input.items() if key.startswith(("corpus_", "task_"))
    )


# ---------------------------------------------------------------- resources: never part of a result


def sized(rule, runtime, mem_mb=None, scale=1):
    """runtime (minutes) and mem_mb of a rule's jobs: each job's predicted cost times requests.margin
    (lmadapt/sizing.py), else these static values (mem_mb None: the model's mem_mb x scale); a job killed for
    either gets more on its retry."""

    @known_signature
    def minutes(wildcards, attempt):
        return REQUESTS.runtime(rule, cell_of(wildcards), attempt, runtime)

    @known_signature
    def megabytes(wildcards, attempt):
        static = config["models"][wildcards.model]["mem_mb"] * scale if mem_mb is None else mem_mb
        return REQUESTS.mem_mb(rule, cell_of(wildcards), attempt, static)

    return {"runtime": minutes, "mem_mb": megabytes}


def job_gpus(rule):
    """The GPUs an inference job takes: one (lmadapt/jobs.py), or as many as the preflight spread its model over
    (lmadapt/sizing.py)."""
    return known_signature(lambda wildcards: REQUESTS.gpus(rule, cell_of(wildcards), JOBS.gpus(rule, wildcards.model)))


def training_resources(rule):
    """A training job's GPUs, nodes and tasks as Slurm resources (lmadapt/jobs.py: Jobs.slurm_layout); one left
    None is unset."""
    return {
        key: known_signature(lambda wildcards, key=key: JOBS.slurm_layout(rule, wildcards.model)[key])
        for key in ("gpu", "tasks", "nodes", "gres", "tasks_per_gpu", "tasks_per_node", "mpi")
    }


def derived_pattern(kind):
    """The {model} wildcard of a derived kind's rule: exactly its models (a pattern that matches nothing when
    there are none)."""
    return "|".join(derived_models(config, kind)) or "(?!)"


# ---------------------------------------------------------------- the whole grid


@contextmanager
def listed(paths):
    """A file listing paths, one a line: a grid's paths overflow one shell argument (128 KiB)."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as listing:
        listing.write("".join(f"{path}\n" for path in paths))
        listing.flush()
        yield listing.name


def derived_summary_target():
    return [layout.DERIVE_SUMMARY] if derived_models(config) else []


@known_signature
def pilot_targets(wildcards):
    """The outputs of the pilot's cells (lmadapt/calibration.py: pilot_cells), once the preflight has costed the
    grid."""
    plan = json.loads(Path(checkpoints.preflight.get().output.json).read_text())
    return [layout.OUTPUTS[rule].format(**cell) for rule, cell in pilot_cells(plan)]


@known_signature
def all_targets(wildcards):
    return (
        JOBS.sample_targets() + JOBS.inputs("aggregate", {})["metrics"] + JOBS.inputs("derived_summary", {})["metrics"]
    )
