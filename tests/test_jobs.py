"""The staleness promises, over every job of config/config.yaml and config/paper.yaml: what a job gets (its params
and input paths, lmadapt/jobs.py, what Snakemake compares) changes only when what it computes changes.
tests/test_workflow.py checks on a finished run that Snakemake agrees."""
import copy
import json
import math

import pytest
import yaml

from conftest import REPO
from lmadapt import layout
from lmadapt.calibration import COSTED, cell_key, plan_predictions
from lmadapt.checks import check_config
from lmadapt.jobs import PARAMS, Jobs
from lmadapt.sizing import Requests

CONFIGS = {name: yaml.safe_load((REPO / f"config/{name}.yaml").read_text()) for name in ("config", "paper")}


WHOLE_GRID = {("preflight", ()), ("resolved_config", ()), ("aggregate", ())}  # they read every cell


def everything(raw: dict) -> dict:
    """(rule, cell) -> (params, inputs) of every job of a config."""
    jobs = Jobs(check_config(copy.deepcopy(raw)))
    return {(rule, tuple(sorted(cell.items()))): (jobs.params(rule, cell) if rule in PARAMS else None,
                                                  jobs.inputs(rule, cell) if hasattr(jobs, f"_inputs_{rule}") else None)
            for rule, cells in jobs.cells().items() for cell in cells}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def grid(request):
    return request.param, CONFIGS[request.param], everything(CONFIGS[request.param])


def changed(before: dict, after: dict) -> set:
    """Jobs of `before` whose params or inputs differ in `after` (or that are gone)."""
    return {job for job, got in before.items() if after.get(job) != got}


def edit(raw: dict, change) -> dict:
    raw = copy.deepcopy(raw)
    change(raw)
    return raw


def test_every_job_has_its_rule_s_params(grid):
    _, _, jobs = grid
    rules = {rule for rule, _ in jobs}
    assert {"sample", "extract", "probe", "bow", "icl", "teacher", "finetune", "preflight", "aggregate"} <= rules
    for (rule, _), (params, _) in jobs.items():
        assert set(params) == set(PARAMS[rule]) and all(isinstance(v, (str, int)) for v in params.values())


def test_resources_and_how_jobs_run_change_no_job(grid):
    _, raw, jobs = grid

    def resources(config):
        config["threads"] = config.get("threads", 4) + 3
        for spec in config["models"].values():
            spec["mem_mb"] = spec.get("mem_mb", 8000) * 2
            for stage in ("extract", "icl"):  # a model's own inference batch sizes too
                if "batch_size" in spec.get(stage, {}):
                    spec[stage]["batch_size"] += 1
        config.setdefault("finetune", {}).update(checkpoint_every=7, keep_checkpoint=True)
        config["finetune"].setdefault("distill", {})["batch_size"] = 3  # the teacher's: inference
        config.setdefault("instruct", {})["checkpoint_every"] = 9
        for stage in ("extract", "icl"):
            config.setdefault(stage, {})["batch_size"] = 5
        config["requests"] = {"margin": 4.0, "min_runtime": 90, "min_mem_mb": 9000, "startup_seconds": 300}

    assert not changed(jobs, everything(edit(raw, resources)))


def test_a_new_seed_k_model_or_method_leaves_every_existing_job_as_it_was(grid):
    name, raw, jobs = grid
    task = sorted(raw["tasks"])[0]
    for change in (lambda c: c.__setitem__("seeds", c.get("seeds", [1]) + [99]),
                   lambda c: c["tasks"][task].__setitem__("k", c["tasks"][task].get("k", [2, 32, 128]) + [5])):
        after = everything(edit(raw, change))
        assert changed(jobs, after) <= WHOLE_GRID
        assert len(after) > len(jobs)
    def new_model(config):  # a copy of the first fetched model, under a new name, in every stage it is in
        first = next(name for name, spec in config["models"].items() if "id" in spec)
        config["models"]["zz_new"] = copy.deepcopy(config["models"][first])
        for section in ("extract", "icl", "finetune"):
            if first in config.get(section, {}).get("models", []):
                config[section]["models"].append("zz_new")

    after = everything(edit(raw, new_model))
    assert changed(jobs, after) <= WHOLE_GRID and any(dict(job[1]).get("model") == "zz_new" for job in after)
    methods = raw.get("finetune", {}).get("methods", [])
    if "lora_head" not in methods:
        after = everything(edit(raw, lambda c: c["finetune"].__setitem__("methods", methods + ["lora_head"])))
        assert changed(jobs, after) <= WHOLE_GRID


def test_a_lora_setting_reruns_the_lora_jobs_alone(grid):
    _, raw, jobs = grid
    after = everything(edit(raw, lambda c: c.setdefault("finetune", {}).setdefault("lora", {}).__setitem__("r", 3)))
    stale = changed(jobs, after) - WHOLE_GRID
    lora = {job for job in jobs if job[0] in ("finetune", "classifier") and "lora" in dict(job[1]).get("method", "")}
    assert stale and stale <= lora | {job for job in jobs if job[0] in ("instruct", "classifier", "ppo")}
    own = check_config(copy.deepcopy(raw))["models"]  # a model that sets its own rank (or inherits its base's) keeps it
    assert {job for job in stale if job[0] == "finetune"} == {
        job for job in lora if job[0] == "finetune" and "r" not in own[dict(job[1])["model"]].get("finetune", {}).get(
            "lora", {})}


def test_a_probe_setting_reruns_the_probes_alone(grid):
    _, raw, jobs = grid
    after = everything(edit(raw, lambda c: c.setdefault("probe", {}).setdefault("mlp", {}).__setitem__("epochs", 7)))
    assert {rule for rule, _ in changed(jobs, after)} == {"probe", "resolved_config"}
    assert {job for job in jobs if job[0] == "probe"} <= changed(jobs, after)


def synthetic_plan(jobs: Jobs) -> dict:
    """A preflight plan of every costed cell of a grid, each with its own numbers (what the preflight would
    measure with the real tokenizers: here made up per cell, so that a request shows which cell it read)."""
    plan = []
    for n, (rule, cell) in enumerate((rule, cell) for rule in COSTED for cell in jobs.cells().get(rule, [])):
        fields = dict(cell, stage=rule, task=cell.get("task", "-"), gpus=jobs.gpus(rule, cell["model"]))
        for pattern in (["p1", "p2"] if rule == "icl" else [None]):  # an ICL job runs every pattern of its task
            plan.append(dict(fields, pattern=pattern, parameters=10**8, flops=1e12 * (n + 1),
                             memory_gb=1.0 + n % 7, load_seconds=20.0, compute_seconds=30.0 + n))
    return {"jobs": plan, "cluster": {"gpu_memory_gb": 80, "gpu_tflops": 312}}


def test_every_job_asks_slurm_for_its_own_prediction_and_no_request_reruns_a_job(grid, tmp_path):
    """Every job of config.yaml and paper.yaml: static requests without a plan, the preflight's estimate of its
    own cell with one, its calibrated prediction with a calibration; its params the same under all three."""
    name, raw, jobs = grid
    config = check_config(copy.deepcopy(raw))
    grid_jobs = Jobs(config)
    plan = synthetic_plan(grid_jobs)
    predictions = plan_predictions(plan)
    (tmp_path / "results/plan").mkdir(parents=True)
    requests = Requests(config, tmp_path)
    cells = [(rule, cell) for rule, rule_cells in grid_jobs.cells().items() for cell in rule_cells]
    assert all(requests.runtime(rule, cell, 2, 240) == 480 and requests.mem_mb(rule, cell, 1, 4000) == 4000
               for rule, cell in cells)  # nothing predicted: the static values, growing with the attempt
    (tmp_path / layout.PREFLIGHT_JSON).write_text(json.dumps(plan))
    margin, startup, floor = (config["requests"][key] for key in ("margin", "startup_seconds", "min_runtime"))
    costed = [(rule, cell) for rule, cell in cells if rule in COSTED]
    assert costed and all(requests.prediction(rule, cell)[2] == "preflight" for rule, cell in costed)
    for rule, cell in costed:
        predicted = predictions[rule, cell_key(rule, cell)]
        seconds = startup + predicted["load_seconds"] + predicted["compute_seconds"]
        assert requests.runtime(rule, cell, 1, 240) == max(math.ceil(seconds * margin / 60), floor)
    calibration = {"fits": [{"stage": rule, "model": model, "method": method, "device": "NVIDIA H100", "jobs": 2,
                             "gpus": 1, "throughput_flops_per_s": 1e14, "compute_intercept_s": 5.0,
                             "load_bytes_per_s": 2e9, "startup_s": 40.0, "memory_intercept_mb": 3000.0,
                             "memory_factor": 1.5, "gpu_memory_factor": 1.2}
                            for rule, model, method in {(r, c["model"], c.get("method")) for r, c in costed}],
                   "rules": [{"rule": rule, "model": None, "jobs": 3, "max_seconds": 100.0, "max_mb": 500.0}
                             for rule in grid_jobs.cells()], "jobs": 10}
    (tmp_path / layout.CALIBRATION_JSON).write_text(json.dumps(calibration))
    for rule, cell in cells:
        predicted = predictions.get((rule, cell_key(rule, cell)))
        if predicted:
            seconds = 40 + 2 * 10**8 / 2e9 + 5 + predicted["flops"] / 1e14
            megabytes = 3000 + 1.5 * predicted["memory_mb"]
        else:  # what the preflight does not cost: the longest and largest of its rule's finished jobs
            seconds, megabytes = 100.0, 500.0
        assert requests.runtime(rule, cell, 1, 240) == max(math.ceil(seconds * margin / 60), floor), (rule, cell)
        assert requests.mem_mb(rule, cell, 3, 4000) == 3 * max(math.ceil(megabytes * margin), 1000), (rule, cell)
    assert everything(raw) == jobs  # the plan and the calibration are no job's params or inputs


def test_a_model_on_several_nodes_asks_slurm_for_them_and_srun_starts_a_process_per_gpu(grid):
    """A training job on one node asks for its GPUs as one task (torchrun inside); on several, for the nodes, each
    node's GPUs and a task per GPU, started by srun. Inference takes one GPU either way. Its nodes are what its
    training computes with (the world size orders the batches): a change reruns that model's training jobs alone."""
    name, raw, jobs = grid
    config = check_config(copy.deepcopy(raw))
    grid_jobs = Jobs(config)
    for model, spec in config["models"].items():
        gpus, nodes, slurm = spec["gpus"], spec.get("nodes", 1), grid_jobs.slurm_layout("finetune", model)
        assert grid_jobs.gpus("icl", model) == min(gpus, 1)
        if nodes == 1:
            assert slurm == {"gpu": gpus, "tasks": 0 if gpus > 1 else 1, "nodes": None, "gres": None,
                             "tasks_per_gpu": None, "tasks_per_node": None, "mpi": None}
            assert not grid_jobs.launcher(model).startswith("srun")
        else:
            assert slurm == {"gpu": None, "gres": f"gpu:{gpus}", "nodes": nodes, "mpi": "srun",
                             "tasks_per_node": gpus, "tasks": None, "tasks_per_gpu": None}
            assert grid_jobs.launcher(model) == (f"srun --nodes {nodes} --ntasks-per-node {gpus} "
                                                 f"--kill-on-bad-exit=1 lmadapt")
    if name == "paper":
        assert config["models"]["opt_30b_alpaca"]["nodes"] == config["models"]["opt_30b"]["nodes"] == 2  # inherited
        one_gpu_nodes = edit(raw, lambda c: c["models"]["opt_30b"].update(gpus=1, finetune={"batch_size": 16}))
        assert Jobs(check_config(one_gpu_nodes)).slurm_layout("finetune", "opt_30b") | {"mpi": None} == {
            "gpu": None, "gres": "gpu:1", "nodes": 2, "mpi": None, "tasks_per_node": None, "tasks": 2,
            "tasks_per_gpu": 1}
        spread = everything(edit(raw, lambda c: c["models"]["opt_30b"].update(nodes=4, gpus=2)))  # still 8
        training = {job for job in jobs if job[0] in ("finetune", "instruct") and
                    dict(job[1])["model"] in ("opt_30b", "opt_30b_alpaca")}  # the instruction-tuned one inherits
        assert training and changed(jobs, spread) - WHOLE_GRID == training
