"""The `icl` stage: in-context learning, scored by the verbalizers' log-probabilities after the prompt.

The demonstrations are the same for every test example of a cell, so the prefix is encoded once and its KV
cache reused across batches. Before anything runs, the context guard counts the prefix, the longest evaluation
example and the longest verbalizer: a prompt that does not fit is never truncated — the cell is recorded as
skipped with its counts, or (fit: max) run with the largest number of demonstrations that fits, recorded.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from .forward import HalvingBatches, PrefixForward, seq2seq_label_logprobs
from .costs import inference_flops, model_shape
from .io import read_table, write_json
from .metrics import Cost, classification_record, finish, group_columns, provenance, skipped_record, write_cost
from .models import load_model, load_tokens
from .prompt import (PromptError, check_verbalizers, encode_prompt, examples_that_fit, fit_demonstrations,
                     needed_after_prefix, task_pattern)
from .sample import META_KEY
from .settings import Settings


def label_logprobs(forward: PrefixForward, examples: list[list[int]], verbalizers: list[list[int]],
                   batch_size: int | HalvingBatches, desc: str = "icl") -> np.ndarray:
    """[N, C]: log p(verbalizer of label c | prefix + example), summed over the verbalizer's tokens. A batch that
    runs out of memory is halved (forward.HalvingBatches)."""
    out, sizes = np.zeros((len(examples), len(verbalizers))), HalvingBatches.of(batch_size)
    if all(len(v) == 1 for v in verbalizers):  # one pass per example: read the next-token distribution
        first = [v[0] for v in verbalizers]

        def next_token(batch):
            logprobs = forward.next_token_logprobs([examples[i] for i in batch],
                                                   [[len(examples[i]) - 1] for i in batch])
            out[batch] = torch.cat(logprobs)[:, first].cpu().numpy()

        sizes.each([len(e) for e in examples], next_token, desc)
        return out
    # multi-token verbalizers: one sequence per (example, label), each verbalizer token scored in turn
    pairs = [(i, c) for i in range(len(examples)) for c in range(len(verbalizers))]
    sequences = [examples[i] + verbalizers[c] for i, c in pairs]

    def every_token(batch):
        starts = [len(examples[pairs[j][0]]) - 1 for j in batch]  # the position that predicts the first token
        lengths = [len(verbalizers[pairs[j][1]]) for j in batch]
        logprobs = forward.next_token_logprobs([sequences[j] for j in batch],
                                               [list(range(s, s + n)) for s, n in zip(starts, lengths)])
        for j, scores in zip(batch, logprobs):
            i, c = pairs[j]
            out[i, c] = scores[torch.arange(len(verbalizers[c])), torch.tensor(verbalizers[c])].sum().item()

    sizes.each([len(s) for s in sequences], every_token, desc)
    return out


def run_icl(model_dir: str, task: dict, train_path: str | None, eval_paths: dict[str, str], out: str,
            settings: Settings, keys: dict) -> dict:
    """Every pattern of one (model, task, shots, seed) cell, on the test and out-of-domain samples.
    train_path: the seed's demonstration pool (none for 0 shots)."""
    cost = Cost()
    patterns = [task_pattern(task, name) for name in settings.patterns or list(task["prompt"]["patterns"])]
    tokens = check_verbalizers(load_tokens(model_dir), patterns)
    lm = load_model(model_dir, dtype=settings.dtype, head="auto", tokens=tokens, spread=True)
    cost.loaded()
    read = {split: read_table(path, META_KEY) for split, path in eval_paths.items()}
    if train_path:
        read["demonstrations"] = read_table(train_path, META_KEY)
    fingerprints = [meta["fingerprint"] for _, meta in read.values()]  # provenance sorts them
    evals = {split: read[split][0] for split in eval_paths}
    train = read["demonstrations"][0] if train_path else evals["test"].iloc[:0]
    records, tokens, sizes = [], 0, HalvingBatches(settings.batch_size)
    for pattern in patterns:
        cell = dict(keys, method="icl", prompt=pattern.name, layer=None, examples=keys["k"])
        pattern_done, pattern_tokens = pattern_records(lm, pattern, cell, train, evals, task["labels"], settings,
                                                       sizes)
        records, tokens = records + pattern_done, tokens + pattern_tokens
    work = cost.as_dict(tokens=tokens, flops=inference_flops(model_shape(model_dir)["parameters"], tokens),
                        batch_size=sizes.size)
    result = finish(records, work, provenance(settings.raw, lm.info["revision"], fingerprints))
    write_json(result, out)
    write_cost("icl", out, work)
    return result


def pattern_records(lm, pattern, cell: dict, train: pd.DataFrame, evals: dict[str, pd.DataFrame], labels: list[str],
                    settings: Settings, sizes: HalvingBatches) -> tuple[list[dict], int]:
    """One pattern's records, a split each: the prompt fitted to the context as settings.fit says (skip: the cell,
    max: fewer demonstrations, skip_examples: the examples that do not fit, counted), scored, or skipped; and the
    tokens it ran through the model (the prefix once, each scored example once per label with a multi-token
    verbalizer), as the preflight counts them. sizes: the job's batch size, halved where a batch runs out of
    memory."""
    shots, seed, max_length = cell["k"], cell["seed"], lm.context(settings.max_length)
    left_out = settings.fit == "skip_examples"
    guard = [encode_prompt(lm, pattern, rows, rows.iloc[:0], after_demonstrations=shots > 0) for rows in evals.values()]
    # skip_examples: the cell runs where each split has an example that fits after the prefix
    needed = max(needed_after_prefix(e.examples, e.verbalizers, shortest=left_out) for e in guard)
    demos, prefix, counts = fit_demonstrations(lm, pattern, train, len(labels), shots, seed, needed, max_length,
                                               settings.fit)
    if demos is None:
        reason = "the longest example does not fit the context even without demonstrations" if settings.fit == "max" \
            else "prompt does not fit the context"
        return [skipped_record(dict(cell, split=split), reason, **counts) for split in evals], 0
    forward = None if lm.model.config.is_encoder_decoder else PrefixForward(lm, prefix)
    records, tokens = [], len(prefix)
    for split, rows in evals.items():
        encoded = encode_prompt(lm, pattern, rows, demos)
        fits = examples_that_fit(encoded.examples, encoded.verbalizers, len(prefix), max_length) if left_out else \
            np.ones(len(rows), dtype=bool)
        examples = [example for example, fit in zip(encoded.examples, fits) if fit]
        tokens += sum(map(len, examples)) * (len(labels) if max(map(len, encoded.verbalizers)) > 1 else 1)
        desc = f"icl {cell['task']} {pattern.name} {shots}-shot {split}"
        if forward is None:
            scores = seq2seq_label_logprobs(lm.model, lm.tokenizer.pad_token_id, [prefix + example + lm.trailing_ids()
                                            for example in examples], encoded.verbalizers, sizes, desc)
        else:
            scores = label_logprobs(forward, examples, encoded.verbalizers, sizes, desc)
        scored = rows[fits]
        record = classification_record(dict(cell, split=split, examples=len(demos)), labels, scored["label"].to_numpy(),
                                       scores.argmax(1), group_columns(scored, scored["id"]))
        record["skipped_examples"] = int((~fits).sum())
        record["details"] = dict(counts, demonstration_ids=demos["id"].tolist(),
                                 skipped_example_ids=rows["id"][~fits].tolist(),
                                 mean_label_logprob={label: float(v) for label, v in zip(labels, scores.mean(0))})
        records.append(record)
    return records, tokens


def teacher_demonstrations(tokens, pattern, rows: pd.DataFrame, pool: pd.DataFrame, n_labels: int, shots: int,
                           seed: int):
    """(demonstrations, prefix ids, counts) of the teacher's prompt: `shots` from the pool, or the most that
    leave room for the longest training input (the documented rule; preflight predicts it)."""
    prompt = encode_prompt(tokens, pattern, rows, rows.iloc[:0], after_demonstrations=shots > 0)
    demos, prefix, counts = fit_demonstrations(tokens, pattern, pool, n_labels, shots, seed,
                                               needed_after_prefix(prompt.examples, prompt.verbalizers),
                                               tokens.max_length, "max")
    if demos is None:
        raise PromptError(f"the longest training input ({counts['tokens_after_prefix']} tokens with its label "
                          f"word) does not fit the {tokens.max_length}-token context even without demonstrations")
    return demos, prefix, counts


def run_teacher(model_dir: str, task: dict, train_path: str, demos_path: str | None, out: str, settings: Settings,
                seed: int) -> dict:
    """The `teacher` stage: the prompted model's label distribution on every training input, for context
    distillation. The prompt holds `shots` demonstrations from the seed's demonstration pool, which no training
    sample overlaps: the teacher never labels one of its own demonstrations."""
    import pyarrow as pa

    from .io import write_parquet

    cost, pattern = Cost(), task_pattern(task, settings.pattern)
    tokens = check_verbalizers(load_tokens(model_dir), [pattern])
    lm = load_model(model_dir, dtype=settings.dtype, tokens=tokens, spread=True)
    cost.loaded()
    rows, sample_meta = read_table(train_path, META_KEY)
    pool = read_table(demos_path, META_KEY)[0] if demos_path else rows.iloc[:0]
    demos, _, counts = teacher_demonstrations(lm, pattern, rows, pool, len(task["labels"]), settings.shots, seed)
    prompt, sizes = encode_prompt(lm, pattern, rows, demos), HalvingBatches(settings.batch_size)
    scores = label_logprobs(PrefixForward(lm, prompt.prefix), prompt.examples, prompt.verbalizers, sizes,
                            desc="teacher")
    probs = torch.tensor(scores).softmax(-1).numpy()
    meta = {"model": lm.info, "pattern": pattern.name, "shots": len(demos), "shots_requested": settings.shots,
            "prefix_tokens": counts["prefix_tokens"], "demonstration_ids": demos["id"].tolist(),
            "labels": task["labels"], "sample_fingerprint": sample_meta["fingerprint"],
            "teacher_accuracy": float((probs.argmax(1) == rows["label"].to_numpy()).mean())}
    table = pa.table({"id": rows["id"].tolist(), "label": rows["label"].tolist(),
                      "probs": pa.array(probs.tolist(), pa.list_(pa.float32()))})
    write_parquet(table.replace_schema_metadata({"lmadapt": json.dumps(meta, sort_keys=True)}), out)
    ran = len(prompt.prefix) + sum(map(len, prompt.examples))  # as the preflight costs a teacher
    write_cost("teacher", out, cost.as_dict(tokens=ran, flops=inference_flops(model_shape(model_dir)["parameters"],
                                                                              ran), batch_size=sizes.size))
    return meta
