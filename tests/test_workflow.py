"""The workflow end to end on fixture data: outputs, no-op reruns, exact reruns after a content change."""
import re

import pandas as pd

from conftest import FIXTURES, REPO, rte_task, run_snakemake, write_config
from test_icl import PATTERNS


def planned_jobs(proc) -> dict[str, int]:
    """Job counts from a dry run's 'Job stats' table."""
    stats = proc.stdout.split("Job stats:")[1].split("\n\n")[0] if "Job stats:" in proc.stdout else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M) if m[1] != "total"}


def fixture_config(model_dir=None):
    tweets = {"labels": ["negative", "neutral", "positive"], "k": [1], "n_test": 3,
              "data": {"train": {"path": str(FIXTURES / "tweet_sentiment/train.jsonl")}},
              "prompt": {"patterns": {"tweet": {"template": "{text} Sentiment:", "verbalizer": {
                  "negative": " negative", "neutral": " neutral", "positive": " positive"}}}}}
    config = {"seeds": [1, 2], "tasks": {"rte": rte_task(prompt={"patterns": PATTERNS}), "tweets": tweets}}
    if model_dir:
        config.update(models={"tiny": {"id": str(model_dir), "gpus": 0, "mem_mb": 1000}},
                      extract={"tasks": ["rte"], "shots": 2, "layers": [1, -1]},
                      probe={"mlp": {"epochs": 20}}, icl={"shots": [0, 2]},
                      finetune={"tasks": ["rte"], "k": [2], "methods": ["lora_pattern", "distill"], "epochs": 2,
                                "batch_size": 2, "distill": {"shots": 2}})
    return config


def test_workflow_runs_and_reruns_only_stale_jobs(tmp_path, tiny_opt):
    config = write_config(tmp_path / "config.yaml", fixture_config(tiny_opt))
    run_snakemake(tmp_path, "--configfile", str(config))
    results = tmp_path / "results"
    assert (tmp_path / "resources/models/tiny/lmadapt_model.json").exists()
    assert len(list((results / "metrics/probe/tiny/rte").rglob("*.json"))) == 2 * 2 * 2  # prompts x k x seeds
    assert len(list((results / "metrics/icl/tiny").rglob("*.json"))) == 2 * (1 + 2)  # tasks x (0-shot + seeds)
    tidy = pd.read_parquet(results / "tables/all.parquet")
    assert {"probe_logreg", "probe_mlp", "bow_count", "icl", "lora_pattern", "distill"} <= set(tidy["method"])
    assert len(list((results / "metrics/finetune/tiny/rte").rglob("*.json"))) == 2 * 2  # methods x seeds
    assert set(tidy["split"]) == {"test", "ood_hans"} and tidy["code_version"].notna().all()
    assert (results / "tables/icl.md").exists() and (results / "figures/probe_accuracy_vs_layer.png").exists()

    changed = fixture_config(tiny_opt)
    changed["probe"]["mlp"]["epochs"] = 21  # one probe hyperparameter: only the probes and the tables rerun
    write_config(config, changed)
    assert planned_jobs(run_snakemake(tmp_path, "--configfile", str(config), "-n")) == {
        "probe": 8, "aggregate": 1, "all": 1}
    write_config(config, fixture_config(tiny_opt))
    samples = tmp_path / "results/samples"
    assert sorted(p.name for p in (samples / "rte").iterdir()) == [
        "ood_hans.parquet", "test.parquet", "train_k2_seed1.parquet", "train_k2_seed2.parquet",
        "train_k3_seed1.parquet", "train_k3_seed2.parquet"]
    assert len(pd.read_parquet(samples / "tweets/train_k1_seed2.parquet")) == 3
    assert (tmp_path / "results/logs/sample/rte/test.log").exists()

    assert "Nothing to be done" in run_snakemake(tmp_path, "--configfile", str(config), "-n").stdout

    changed = fixture_config(tiny_opt)
    changed["tasks"]["tweets"]["n_test"] = 4  # content change in one task's settings: its jobs, none of rte's
    write_config(config, changed)
    plan = planned_jobs(run_snakemake(tmp_path, "--configfile", str(config), "-n"))
    assert plan == {"sample_train": 2, "sample_test": 1, "bow": 2, "icl": 3, "aggregate": 1, "all": 1}


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
    assert plan["fetch_data"] == 9 and plan["fetch_model"] == 5  # fetched once on the login node
    assert plan["extract"] == 5 * (1 + 3 * 10)  # IMDB: one none folder + one per (k, seed) prefix, per model
    assert plan["probe"] == 5 * 2 * 3 * 10
    assert plan["icl"] == 5 * 4 * (1 + 3 * 10)  # zero-shot once, 2/32/128 shots per seed
    assert plan["finetune"] == 5 * 4 * 3 * 10 and plan["teacher"] == 5 * 3 * 10  # study 5: RTE, 4 methods
