"""A real Slurm on this machine (slurmctld, munge, slurmdbd + MariaDB, and three slurmd, each node in its own
network namespace with its own hostname and address): the workflow runs through the Snakemake Slurm executor
plugin with the profile's job groups, sacct shows each group as one Slurm job sized for its largest member (the
members run one after another), and changing one probe hyperparameter reruns only the probe jobs (in their group)
and aggregate. A ZeRO-3 fine-tuning spans two nodes (srun starts two processes on each), is cancelled after its
first checkpoint, and Snakemake's retry resumes it on two other nodes to the losses of a run never interrupted."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

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
    """Three nodes of two count-only GPUs each (tests/slurm/start-local-slurm.sh, SLURM_NODES)."""
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, SLURM_NODES="3", SLURM_NODE_GPUS="2"))
    assert proc.returncode == 0, f"could not start Slurm:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def sacct_jobs(since: str) -> list[dict]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "--format=JobID,State,Comment%300,ReqMem,ReqCPUS,"
                          "Partition,Account"], capture_output=True, text=True, check=True).stdout
    keys = ["id", "state", "comment", "mem", "cpus", "partition", "account"]
    return [dict(zip(keys, line.split("|"))) for line in out.strip().splitlines() if line]


def job_steps(job_id: str) -> dict[str, dict]:
    """A Slurm job's steps (its batch script, then each srun) by step id: the nodes each ran on, its tasks."""
    out = subprocess.run(["sacct", "-j", job_id, "-n", "-P", "--format=JobID,NodeList,NTasks"], capture_output=True,
                         text=True, check=True).stdout
    return {step: {"nodes": hostnames(nodes), "tasks": tasks}
            for step, nodes, tasks in (line.split("|") for line in out.strip().splitlines())}


def hostnames(nodelist: str) -> list[str]:
    return subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                          check=True).stdout.split()


def snakemake(workdir, config, *targets) -> list[str]:
    return [str(BIN / "snakemake"), "--profile", "slurm", "-s", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(config), "--jobs", "4", "--slurm-init-seconds-before-status-checks", "5", *targets]


def slurm_env(**extra) -> dict:
    return clean_env(LMADAPT_SLURM_ACCOUNT="testacct", LMADAPT_SLURM_PARTITION="debug", **extra)


def run(workdir, config, *targets, **env):
    proc = subprocess.run(snakemake(workdir, config, *targets), cwd=REPO, env=slurm_env(**env), capture_output=True,
                          text=True, timeout=1500)
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


def processes_in(folder: Path, word: str) -> list[int]:
    """This machine's processes working in `folder` whose command line has `word` (one job's, on every node)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(folder) and word in Path(f"/proc/{pid}/cmdline").read_text():
                found.append(int(pid))
        except OSError:  # ended meanwhile
            continue
    assert found, f"no process in {folder}"
    return found


FINETUNED = "results/metrics/finetune/tiny/rte/pattern/k2_seed1.json"
CHECKPOINTS = "results/finetune/tiny/rte/pattern/k2_seed1/checkpoints"
# each node's one interface: gloo finds a process's address by its hostname, which no node's resolver knows
TWO_NODES_ENV = {"GLOO_SOCKET_IFNAME": "eth0"}


def test_a_zero3_job_on_two_nodes_resumes_on_two_others_to_the_same_losses(slurm, tiny_opt, tmp_path):
    spec = rte_task(k=[2], prompt={"patterns": {"gpt3": PATTERNS["gpt3"]}})
    settings = {"seeds": [1], "threads": 1, "tasks": {"rte": spec},
                "models": {"tiny": {"id": str(tiny_opt), "gpus": 2, "nodes": 2, "mem_mb": 1500}},
                "extract": {"prompts": ["none"], "layers": [-1]}, "icl": {"shots": [0]},  # not run: valid
                "finetune": {"methods": ["pattern"], "zero": "zero3", "epochs": 30, "batch_size": 1,
                             "effective_batch": 4, "dropout": 0.1, "checkpoint_every": 3}}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    since = time.strftime("%Y-%m-%dT%H:%M:%S")
    time.sleep(1)
    whole.mkdir()
    run(whole, write_config(whole / "config.yaml", settings), FINETUNED, **TWO_NODES_ENV)
    reference = json.loads((whole / FINETUNED).read_text())["records"][0]["details"]
    assert reference["world_size"] == 4 and reference["optimizer_steps"] == 30
    job = next(job for job in sacct_jobs(since) if job["comment"].startswith("rule_finetune"))
    srun_step = job_steps(job["id"])[f"{job['id']}.0"]  # the job's own srun: one process a GPU on each node
    assert srun_step["tasks"] == "4" and len(srun_step["nodes"]) == 2, srun_step

    killed.mkdir()
    proc = subprocess.Popen(snakemake(killed, write_config(killed / "config.yaml", settings), FINETUNED), cwd=REPO,
                            env=slurm_env(**TWO_NODES_ENV), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not (killed / CHECKPOINTS / "latest").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before its first checkpoint; make it longer"
    running = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i|%N|%k"], capture_output=True, text=True,
                             check=True).stdout.split()
    job_id, nodelist, _ = next(line.split("|") for line in running if "|rule_finetune" in line)
    first_nodes = hostnames(nodelist)
    # as a node's crash would: one of the job's nodes taken away, every process of the job killed (srun ends the
    # step, the job fails) and Snakemake's retry started elsewhere. (A job cancelled with scancel reads "CANCELLED
    # by <uid>", which the Slurm plugin 2.8.0 takes for running: Snakemake would wait on it for ever.)
    subprocess.run(["scontrol", "update", f"NodeName={first_nodes[0]}", "State=DRAIN", "Reason=lmadapt-test"],
                   check=True)
    try:
        for pid in processes_in(killed, "lmadapt\0finetune"):  # the ranks (and srun) on every node
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=1200)
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={first_nodes[0]}", "State=RESUME"], check=True)
    assert proc.returncode == 0, out[-5000:]
    resumed = json.loads((killed / FINETUNED).read_text())["records"][0]["details"]
    assert resumed["resumed_from_micro_step"] > 0
    assert resumed["loss_per_step"] == reference["loss_per_step"]  # dropout masks and gradients as if never cut
    retried = [job for job in sacct_jobs(since) if job["comment"].startswith("rule_finetune")
               and int(job["id"]) > int(job_id)]
    assert [job["state"] for job in sacct_jobs(since) if job["id"] == job_id] == ["FAILED"]
    second_nodes = job_steps(retried[0]["id"])[f"{retried[0]['id']}.0"]["nodes"]
    assert len(second_nodes) == 2 and first_nodes[0] not in second_nodes and second_nodes != first_nodes
