"""A real single-node Slurm on localhost (slurmctld, slurmd, munge, slurmdbd + MariaDB): the workflow runs through
the Snakemake Slurm executor plugin, sacct shows every rule as a Slurm job with its resources, and changing one
probe hyperparameter reruns only the probe and aggregate jobs."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import BIN, REPO, clean_env, rte_task, write_config
from test_icl import PATTERNS

START = REPO / "tests/slurm/start-local-slurm.sh"


def slurm_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to install and start slurmctld/slurmd/munge/slurmdbd (tests/slurm/start-local-slurm.sh)"
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        return "no Slurm and no apt-get to install it"
    return None


pytestmark = pytest.mark.skipif(slurm_unavailable() is not None, reason=slurm_unavailable() or "")


@pytest.fixture(scope="module")
def slurm():
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"could not start Slurm:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def sacct_jobs(since: str) -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "--format=JobID,State,Comment%300,ReqMem,ReqCPUS,"
                          "Partition,Account"], capture_output=True, text=True, check=True).stdout
    keys = ["id", "state", "comment", "mem", "cpus", "partition", "account"]
    return [dict(zip(keys, line.split("|"))) for line in out.strip().splitlines() if line]


def run(workdir, config):
    env = clean_env(LMADAPT_SLURM_ACCOUNT="testacct", LMADAPT_SLURM_PARTITION="debug")
    proc = subprocess.run([str(BIN / "snakemake"), "--profile", "slurm", "-s", str(REPO / "Snakefile"),
                           "--directory", str(workdir), "--configfile", str(config), "--jobs", "4",
                           "--slurm-init-seconds-before-status-checks", "5"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_workflow_through_slurm(slurm, tiny_opt, tmp_path):
    spec = rte_task(k=[2], prompt={"patterns": {"gpt3": PATTERNS["gpt3"]}})
    settings = {"seeds": [1], "threads": 1, "tasks": {"rte": spec},
                "models": {"tiny": {"id": str(tiny_opt), "gpus": 0, "mem_mb": 1500}},
                "extract": {"prompts": ["none"], "layers": [-1]}, "probe": {"mlp": {"epochs": 10}},
                "icl": {"shots": [0]}, "finetune": {"methods": ["pattern"], "epochs": 1, "batch_size": 2}}
    config = write_config(tmp_path / "config.yaml", settings)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    run(tmp_path, config)
    assert (tmp_path / "results/tables/all.parquet").exists()
    jobs = sacct_jobs(since)
    ran = sorted(job["comment"].split("_wildcards")[0].removeprefix("rule_") for job in jobs)
    # one sample and one extract job per sample file (train k=2, test, HANS); fetch_model and preflight are
    # localrules: they ran on the "login node"
    assert ran == sorted(["sample"] * 3 + ["extract"] * 3 + ["probe", "bow", "icl", "finetune", "aggregate"]), jobs
    assert all(job["state"] == "COMPLETED" and job["partition"] == "debug" and job["account"] == "testacct"
               for job in jobs), jobs
    extract = next(job for job in jobs if job["comment"].startswith("rule_extract"))
    assert extract["mem"] in ("1500M", "1500Mn") and extract["cpus"] == "1"

    settings["probe"]["mlp"]["epochs"] = 11  # one probe hyperparameter, changed in content
    write_config(config, settings)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    run(tmp_path, config)
    rerun = sorted(job["comment"].split("_wildcards")[0].removeprefix("rule_") for job in sacct_jobs(since))
    assert rerun == ["aggregate", "probe"]
