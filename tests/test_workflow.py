"""The workflow end to end on fixture data: outputs, no-op reruns, exact reruns after a content change."""
import re

import pandas as pd

from conftest import FIXTURES, REPO, rte_task, run_snakemake, write_config


def planned_jobs(proc) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    stats = proc.stdout.split("Job stats:")[1].split("\n\n")[0] if "Job stats:" in proc.stdout else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}


def fixture_config():
    tweets = {"labels": ["negative", "neutral", "positive"], "k": [1], "n_test": 3,
              "data": {"train": {"path": str(FIXTURES / "tweet_sentiment/train.jsonl")}}}
    return {"seeds": [1, 2], "tasks": {"rte": rte_task(), "tweets": tweets}}


def test_workflow_runs_and_reruns_only_stale_jobs(tmp_path):
    config = write_config(tmp_path / "config.yaml", fixture_config())
    run_snakemake(tmp_path, "--configfile", str(config))
    samples = tmp_path / "results/samples"
    assert sorted(p.name for p in (samples / "rte").iterdir()) == [
        "ood_hans.parquet", "test.parquet", "train_k2_seed1.parquet", "train_k2_seed2.parquet",
        "train_k3_seed1.parquet", "train_k3_seed2.parquet"]
    assert len(pd.read_parquet(samples / "tweets/train_k1_seed2.parquet")) == 3
    assert (tmp_path / "results/logs/sample/rte/test.log").exists()

    assert "Nothing to be done" in run_snakemake(tmp_path, "--configfile", str(config), "-n").stdout

    changed = fixture_config()
    changed["tasks"]["tweets"]["n_test"] = 4  # content change in one task's settings
    write_config(config, changed)
    plan = planned_jobs(run_snakemake(tmp_path, "--configfile", str(config), "-n"))
    assert plan == {"sample_train": 2, "sample_test": 1, "all": 1}  # the tweets jobs, none of rte's


def test_bad_config_stops_before_any_job(tmp_path):
    bad = fixture_config()
    bad["tasks"]["rte"]["k"] = [-3]
    config = write_config(tmp_path / "config.yaml", bad)
    proc = run_snakemake(tmp_path, "--configfile", str(config), check=False)
    assert proc.returncode != 0
    assert "tasks.rte.k[0]: -3 is less than the minimum of 1" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()


def test_missing_data_file_is_named(tmp_path):
    broken = fixture_config()
    broken["tasks"]["rte"]["data"]["test"]["path"] = str(tmp_path / "absent.tsv")
    config = write_config(tmp_path / "config.yaml", broken)
    proc = run_snakemake(tmp_path, "--configfile", str(config), "-n", check=False)
    assert proc.returncode != 0 and "absent.tsv" in proc.stdout + proc.stderr


def test_paper_grid_plans(tmp_path):
    plan = planned_jobs(run_snakemake(tmp_path, "--configfile", str(REPO / "config/paper.yaml"), "-n"))
    assert plan["sample_train"] == 4 * 3 * 10 and plan["sample_test"] == 4 and plan["sample_ood"] == 1
    assert plan["fetch_data"] == 9  # hub datasets fetched once on the login node
