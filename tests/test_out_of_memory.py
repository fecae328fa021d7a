"""A batch that runs out of memory never loses a cell: the job halves that batch and goes on. Tested for real: the
job runs under an address-space limit (tests/memory_limited.py: RLIMIT_AS) that holds its small batches, not its
full one. Inference outputs equal the full batch's; fine-tuning keeps the effective batch through accumulation
and records the micro-batch it ended with."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import PATTERNS, REPO, clean_env, rte_task
from lmadapt.checks import check_config
from lmadapt.config import FINETUNE_RUN_SETTINGS, finetune_settings
from lmadapt.icl import run_icl
from lmadapt.sample import run_sample
from lmadapt.settings import read_settings

HEADROOM_MB = 64  # above the small batch's peak: far less than the full batch needs (its attention alone: ~400 MB)


@pytest.fixture(scope="module")
def long_rte(tmp_path_factory):
    """RTE pairs of 800-950 tokens of the tiny tokenizer, a sample of 32 and a training sample of 4 per class."""
    folder = tmp_path_factory.mktemp("long_rte")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "in", "sun", "dog", "ran"]
    pd.DataFrame([{"index": i, "sentence1": " ".join(rng.choice(words, 390 - 2 * i)), "sentence2": "A cat sat.",
                   "label": ["entailment", "not_entailment"][i % 2]} for i in range(32)]).to_csv(
        folder / "pairs.tsv", sep="\t", index=False)
    spec = rte_task(k=[4], n_test="all", prompt={"patterns": PATTERNS}, ood={})
    spec["data"] = {"train": {"path": str(folder / "pairs.tsv"), "format": "glue_rte"},
                    "test": {"path": str(folder / "pairs.tsv"), "format": "glue_rte"}}
    config = check_config({"tasks": {"rte": spec}, "finetune": {
        "methods": ["head"], "epochs": 1, "batch_size": 8, "effective_batch": 8, "max_length": 1024}})
    task = config["tasks"]["rte"]
    inputs = {"train": str(folder / "pairs.tsv")}
    run_sample("rte", task, dict(inputs, test=str(folder / "pairs.tsv")), "test", folder / "test.parquet")
    spec["data"].pop("test")  # the training sample: the first rows, the test sample carved from the rest
    run_sample("rte", check_config({"tasks": {"rte": dict(spec, n_test=2)}})["tasks"]["rte"], inputs, "train",
               folder / "train.parquet", k=4, seed=1)
    return config, folder


def limited(limit_mb: int, *args) -> int:
    """Run `lmadapt ARGS` under an address-space limit (0: none); its peak address space (MB). One thread, and one
    glibc arena (each thread's would reserve 64 MB of address space: a job's retry after running out would find
    less room than its first try had, which a memory cgroup, counting what is used, would not)."""
    proc = subprocess.run([sys.executable, str(REPO / "tests/memory_limited.py"), str(limit_mb), *args],
                          capture_output=True, text=True, env=clean_env(OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.strip().splitlines()[-1].split()[1])


def test_an_icl_batch_that_runs_out_of_memory_is_halved_with_the_full_batch_s_outputs(tiny_opt, long_rte, tmp_path):
    config, folder = long_rte
    task = {key: config["tasks"]["rte"][key] for key in ("fields", "labels", "prompt")}
    settings = {"patterns": ["gpt3"], "fit": "skip", "max_length": None, "dtype": "float32"}
    keys = {"task": "rte", "model": "tiny", "k": 0, "seed": 1}

    def icl(limit_mb: int, batch_size: int, out: str) -> int:
        return limited(limit_mb, "icl", "--model-dir", str(tiny_opt), "--task", "rte", "--task-config",
                       json.dumps(task), "--eval", f"test={folder / 'test.parquet'}", "--settings",
                       json.dumps(settings), "--run-settings", json.dumps({"batch_size": batch_size}), "--keys",
                       json.dumps(keys), "--out", str(tmp_path / out))

    small_peak = icl(0, 2, "small.json")
    icl(small_peak + HEADROOM_MB, 32, "limited.json")
    run_icl(str(tiny_opt), task, None, {"test": str(folder / "test.parquet")}, str(tmp_path / "full.json"),
            read_settings("icl", dict(settings, batch_size=32)), keys)  # the full batch, no limit
    [full], [halved] = (json.loads((tmp_path / name).read_text())["records"] for name in ("full.json", "limited.json"))
    assert full["cost"]["batch_size"] == 32 and 2 <= halved["cost"]["batch_size"] < 32  # it ran out, halved, went on
    assert halved["n"] == full["n"] == 32 and halved["confusion"] == full["confusion"]
    for label, logprob in full["details"]["mean_label_logprob"].items():
        assert halved["details"]["mean_label_logprob"][label] == pytest.approx(logprob, abs=1e-5)


@pytest.mark.slow
def test_a_fine_tuning_micro_batch_that_runs_out_of_memory_is_halved_keeping_the_effective_batch(
        tiny_opt, long_rte, tmp_path):
    config, folder = long_rte
    task = {key: config["tasks"]["rte"][key] for key in ("fields", "labels", "prompt")}
    keys = {"task": "rte", "model": "tiny", "method": "head", "k": 4, "seed": 1}

    def finetune(limit_mb: int, batch_size: int, name: str) -> int:
        settings = dict(finetune_settings(config, "head"), batch_size=batch_size)
        return limited(limit_mb, "finetune", "--model-dir", str(tiny_opt), "--task", "rte", "--task-config",
                       json.dumps(task), "--train", str(folder / "train.parquet"), "--eval",
                       f"test={folder / 'test.parquet'}", "--settings", json.dumps(settings), "--run-settings",
                       json.dumps({key: config["finetune"][key] for key in FINETUNE_RUN_SETTINGS}),
                       "--deepspeed-config", str(REPO / "config/deepspeed/zero2.json"), "--work-dir",
                       str(tmp_path / name), "--keys", json.dumps(keys), "--out", str(tmp_path / f"{name}.json"))

    small_peak, full_peak = finetune(0, 1, "small"), finetune(0, 8, "full")
    finetune((small_peak + full_peak) // 2, 8, "limited")  # room for a smaller micro-batch, and for a retry
    [record, *_] = json.loads((tmp_path / "limited.json").read_text())["records"]
    details = record["details"]
    assert 1 <= details["micro_batch"] < 8 and record["cost"]["batch_size"] == details["micro_batch"]
    assert details["effective_batch"] == 8 and details["accumulation_steps"] == 8 // details["micro_batch"]
    assert details["optimizer_steps"] == 1 and record["n"] == 32  # every row of the sample evaluated
