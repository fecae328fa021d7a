"""The staleness promises, over every job of config/config.yaml and config/paper.yaml: what a job gets (its params
and input paths, lmadapt/jobs.py, what Snakemake compares) changes only when what it computes changes.
tests/test_workflow.py checks on a finished run that Snakemake agrees."""
import copy

import pytest
import yaml

from conftest import REPO
from lmadapt.checks import check_config
from lmadapt.jobs import PARAMS, Jobs

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
        config.setdefault("finetune", {}).update(checkpoint_every=7, keep_checkpoint=True)
        config.setdefault("instruct", {})["checkpoint_every"] = 9

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
