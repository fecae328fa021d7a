"""A slice of the paper-grid rehearsal (one seed; OPT-6.7b on its 4 GPUs with LoRA and distillation, which trains
every weight: OPT-125m on one GPU and the head and pattern methods are left out, as one-process decoder fine-tuning
runs in the default study and the fast tier; studies 2-4's GPT-2, Flan-T5
and RoBERTa with their own stage settings; Flan-T5 aligned by PPO against the hate-speech classifier, a derived
model through every later stage (the default study takes its instruction-tuned SmolLM2 through them); k=128 (the
grid's costliest training samples; the fast tier's workflow run trains on k=2) and ICL with 0, 3 (Flan-T5's own)
and 128 demonstrations, every stage, 2 fine-tuning epochs, 4 PPO steps), run as `make rehearsal` runs the whole of
it: tiny models of each family in the hub's layout, hub-shaped data through the real fetch and sample rules. Every
job succeeds; the plan has the same jobs as the real grid cut the same way; the cells the run skips are exactly
those the preflight predicted. Takes ~15 minutes on 2 cores."""
import json
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import BIN, REPO, clean_env, planned_jobs, run_snakemake, write_config
from lmadapt.rehearsal import slice_grid

pytestmark = pytest.mark.slow  # a whole study run end to end

NEW_FAMILIES = ["gpt2", "flan_t5_base", "roberta_base"]
DERIVED = ["flan_t5_base_ppo"]  # PPO on DialogSum
# 2 of the 40 fine-tuning epochs, 2 of instruction tuning's 3, 4 of PPO's 200 steps: time, not shape
SLICE = dict(seeds=1, models=["opt_6_7b"] + NEW_FAMILIES + DERIVED + ["roberta_hate"], ks=[3, 128],
             epochs=2, ppo_steps=4, methods=["lora_pattern", "distill"])


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rehearsal")
    subprocess.run([str(BIN / "lmadapt"), "rehearsal", "--paper", str(REPO / "config/paper.yaml"), "--out",
                    str(folder), "--seeds", "1", "--models", *SLICE["models"], "--k", "3", "128", "--epochs", "2",
                    "--ppo-steps", "4", "--methods", *SLICE["methods"]],
                   check=True, env=clean_env(), capture_output=True)
    return folder


def test_rehearsal_plans_the_jobs_of_the_grid(rehearsal, tmp_path):
    paper = write_config(tmp_path / "paper.yaml", slice_grid(yaml.safe_load((REPO / "config/paper.yaml").read_text()),
                                                             **SLICE))
    grid = planned_jobs(run_snakemake(tmp_path, "--configfile", str(paper), "-n"))
    rehearsed = planned_jobs(run_snakemake(rehearsal, "--configfile", str(rehearsal / "config.yaml"), "-n"))
    # OPT: LoRA and distillation; GPT-2 head, Flan-T5 seq2seq and lora_seq2seq, RoBERTa head and lora_head
    # ... and the derived Flan-T5 (2)
    assert rehearsed == grid and grid["finetune"] == 2 + 1 + 2 + 2 + 2 and grid["fetch_data"] == 9
    assert grid["fetch_model"] == 5 and grid["fetch_corpus"] == grid["ppo"] == 1 and "instruct" not in grid


def test_rehearsal_runs_with_zero_failed_jobs_and_skips_what_preflight_predicted(rehearsal):
    run_snakemake(rehearsal, "--configfile", str(rehearsal / "config.yaml"))
    results = rehearsal / "results"
    plan = json.loads((results / "plan/preflight.json").read_text())
    assert not plan["errors"] and plan["expected_skipped"] and plan["gpu_hours"] > 0
    check = subprocess.run([str(BIN / "lmadapt"), "check-skips", "--plan", str(results / "plan/preflight.json"),
                            "--tidy", str(results / "tables/all.parquet")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
    tidy = pd.read_parquet(results / "tables/all.parquet")
    # 128 RTE demonstrations never fit OPT's 2,048 tokens: skipped, as study 5 found and the preflight predicted
    rte_128 = tidy[(tidy["task"] == "rte") & (tidy["method"] == "icl") & (tidy["k"] == 128) & tidy["group"].isna()]
    assert len(rte_128) and rte_128["skipped"].notna().all()
    assert set(tidy["model"]) >= {"opt_6_7b"} | set(NEW_FAMILIES) | set(DERIVED)
    # the derived model: DialogSum's layout through PPO against the classifier
    ppo = json.loads((results / "derive/flan_t5_base_ppo/metrics.json").read_text())
    assert ppo["reward_model"]["name"] == "roberta_hate" and ppo["held_out"]["before"]["prompts"] == 256
    assert len(pd.read_parquet(results / "derive/flan_t5_base_ppo/generations.parquet")) == 32
    finetuned = tidy[tidy["source"].str.contains("/metrics/finetune/") & tidy["group"].isna()]
    assert finetuned["accuracy"].notna().all()
    cells = finetuned.groupby(["model", "task"])["method"].agg(lambda m: tuple(sorted(set(m)))).to_dict()
    assert cells.pop(("flan_t5_base_ppo", "tweet_sentiment")) == cells[("flan_t5_base", "tweet_sentiment")]
    assert cells == {("opt_6_7b", "rte"): ("distill", "lora_pattern"),
                     ("gpt2", "imdb"): ("head",), ("flan_t5_base", "tweet_sentiment"): ("lora_seq2seq", "seq2seq"),
                     ("roberta_base", "ag_news"): ("head", "lora_head")}
    # RTE: test and HANS; GPT-2 (study 2's validation share): train, validation and test; the others: test
    assert len(finetuned) == 2 * 2 + 3 + 2 + 2 + 2
    gpt2 = finetuned[finetuned["model"] == "gpt2"]
    assert sorted(gpt2["split"]) == ["test", "train", "validation"]
    # study 2's bag-of-words on IMDB's full training set (k "all"), with its 80/20 split
    full = tidy[tidy["source"].str.contains("/metrics/bow/imdb/kall_seed")]
    assert sorted(full["split"]) == ["test", "train", "validation"] and full["k"].isna().all()
    assert (full["examples"] > 1000).all() and full["accuracy"].notna().all()
    flan_icl = tidy[(tidy["model"] == "flan_t5_base") & (tidy["method"] == "icl")]
    assert set(flan_icl["task"]) == {"tweet_sentiment"} and set(flan_icl["k"]) == {0, 3}
    assert len(tidy[(tidy["model"] == "flan_t5_base_ppo") & (tidy["method"] == "icl")]) == len(flan_icl)
    assert flan_icl["accuracy"].notna().all()
    details = json.loads((results / "metrics/finetune/opt_6_7b/rte/lora_pattern/k128_seed0.json").read_text())
    assert details["records"][0]["details"]["world_size"] == 4  # torchrun, one process per GPU (gloo here)
    assert "Nothing to be done" in run_snakemake(rehearsal, "--configfile", str(rehearsal / "config.yaml"),
                                                 "-n").stdout
