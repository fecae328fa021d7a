"""A real single-node Slurm on localhost (slurmctld, slurmd, munge, slurmdbd + MariaDB): the workflow runs through
the Snakemake Slurm executor plugin with the profile's job groups, sacct shows each group as one Slurm job sized
for its largest member (the members run one after another), and changing one probe hyperparameter reruns only
the probe jobs (in their group) and aggregate."""
import os
import shutil
import subprocess
import time

import pytest

from conftest import BIN, PATTERNS, REPO, clean_env, rte_task, write_config

START = REPO / "tests/slurm/start-local-slurm.sh"


def slurm_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root to install and start slurmctld/slurmd/munge/slurmdbd (tests/slurm/start-local-slurm.sh)"
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        return "no Slurm and no apt-get to install it"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(slurm_unavailable() is not None, reason=slurm_unavailable() or "")]


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
    # 11 jobs in 5 submissions (slurm/config.yaml `groups`; a group job is named by its group and rules): the 3
    # samples (train k=2, test, HANS); extract of each sample and icl in the model's GPU group; finetune; probe and
    # bow; aggregate. fetch_model and preflight are localrules: they ran on the "login node"
    assert ran == ["aggregate", "cpu_bow_probe", "finetune_tiny_finetune", "gpu_tiny_extract_icl",
                   "samples_sample"], jobs
    assert all(job["state"] == "COMPLETED" and job["partition"] == "debug" and job["account"] == "testacct"
               for job in jobs), jobs
    gpu_group = next(job for job in jobs if job["comment"].startswith("rule_gpu_tiny"))
    assert gpu_group["mem"] in ("1500M", "1500Mn") and gpu_group["cpus"] == "1"  # one member's, not the sum
    logs = tmp_path / "results/logs"
    assert len(list((logs / "extract").rglob("*.log"))) == 3 and list((logs / "icl").rglob("*.log"))
    bow_metrics = next((tmp_path / "results/metrics/bow").rglob("*.json"))
    bow_written = bow_metrics.stat().st_mtime_ns

    settings["probe"]["mlp"]["epochs"] = 11  # one probe hyperparameter, changed in content
    write_config(config, settings)
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    run(tmp_path, config)
    rerun = sorted(job["comment"].split("_wildcards")[0].removeprefix("rule_") for job in sacct_jobs(since))
    assert rerun == ["aggregate", "cpu_probe"]
    assert bow_metrics.stat().st_mtime_ns == bow_written  # the probe's group did not take bow along
