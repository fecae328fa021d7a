"""The `instruct` stage: instruction tuning of a decoder on an Alpaca-layout set (instruction, input, output).

Each example is the Alpaca prompt followed by the response and the end-of-sequence token; the loss is on the
response tokens only (the prompt's labels are -100). Training is `finetune`'s DeepSpeed loop (ZeRO-2/3,
length-grouped batches, checkpoints with resume). Before and after training the held-out rows' loss and
perplexity on their response tokens are measured; afterwards the derived model folder is written and loaded back
through the one loader to answer a fixed set of held-out instructions (generations.parquet).
"""
from __future__ import annotations

import math
import shutil
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from .config import fingerprint
from .data import read_corpus
from .derived import derived_record, save_derived
from .finetune import DROPOUT_KEYS, trainable_model
from .training import (deepspeed_config, init_distributed, own_checkpoints, precision, schedule, train_epochs,
                       training_summary)
from .forward import pad_batch
from .io import read_table, write_json, write_parquet
from .costs import model_shape, training_flops
from .methods import METHODS
from .metrics import Cost, code_version, write_cost
from .models import load_model
from .settings import Settings

# The Alpaca template (tatsu-lab/stanford_alpaca), with and without an input.
PROMPT_WITH_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n"
                     "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n")
PROMPT_NO_INPUT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                   "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n")
COLUMNS = ["instruction", "input", "output"]
IGNORE = -100  # the label of a token without loss


def alpaca_prompt(instruction: str, input_text: str) -> str:
    template = PROMPT_WITH_INPUT if input_text.strip() else PROMPT_NO_INPUT
    return template.format(instruction=instruction, input=input_text)


def encode_example(tokens, instruction: str, input_text: str, output: str, max_length: int
                   ) -> tuple[list[int], list[int], bool]:
    """(ids, labels, cut): the prompt's ids (after the tokenizer's leading special ids) then the response's and
    the end-of-sequence id; labels are IGNORE on the prompt and the ids on the response; cut to max_length."""
    prompt = tokens.leading_special_ids() + tokens.encode(alpaca_prompt(instruction, input_text))
    response = tokens.encode(output) + [tokens.tokenizer.eos_token_id]
    ids, labels = prompt + response, [IGNORE] * len(prompt) + response
    return ids[:max_length], labels[:max_length], len(ids) > max_length


def pad_labels(batch: list[list[int]], device) -> torch.Tensor:
    """Right-padded labels (padding has no loss), to go with forward.pad_batch's ids."""
    return pad_batch(batch, IGNORE, device)[0]


def read_instructions(inputs: dict[str, str], corpora: dict[str, dict]) -> pd.DataFrame:
    """Every instruction set named in inputs (name -> file): a corpus (read through its source entry) or a
    task's instruction sample (the sample stage's Parquet), in name order, with the set's name as `origin`."""
    parts = []
    for name in sorted(inputs):
        rows = (read_corpus(corpora[name], inputs[name], COLUMNS) if name in corpora
                else read_table(inputs[name], "lmadapt")[0][COLUMNS])
        parts.append(rows.assign(origin=name))
    return pd.concat(parts, ignore_index=True)


def split_rows(rows: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, held-out rows): a seeded order; the held-out rows first, then at most max_rows."""
    order = np.random.default_rng(settings.seed).permutation(len(rows))
    held = rows.iloc[order[: settings.held_out]].reset_index(drop=True)
    train = rows.iloc[order[settings.held_out:][: settings.max_rows]].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"instruct: {len(rows)} instruction rows leave none to train on after "
                         f"held_out={settings.held_out}")
    return train, held


@torch.no_grad()
def response_loss(model, examples: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int) -> dict:
    """Mean loss per response token of examples, its perplexity and the tokens counted."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for first in range(0, len(examples), batch_size):
        batch = examples[first: first + batch_size]
        ids, mask = pad_batch([ids for ids, _ in batch], pad_id, device)
        labels = pad_labels([labels for _, labels in batch], device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                         ignore_index=IGNORE, reduction="sum"))
        count += int((target != IGNORE).sum())
    loss = total / max(count, 1)
    return {"loss": round(loss, 6), "perplexity": round(math.exp(min(loss, 50.0)), 4), "tokens": count}


@torch.no_grad()
def generate(lm, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers of a decoder to prompts (left-padded batches)."""
    tokenizer = lm.tokenizer
    answers = []
    for first in range(0, len(prompts), batch_size):
        encoded = [lm.leading_special_ids() + lm.encode(p) for p in prompts[first: first + batch_size]]
        ids, mask = pad_batch(encoded, tokenizer.pad_token_id, lm.device, left=True)
        out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        answers += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return answers


def encode_rows(lm, frame, max_length: int) -> tuple[list, int, int]:
    """Instruction rows encoded for training: (the examples that keep a response token, how many were cut, how
    many were dropped because their prompt fills max_length)."""
    out = [encode_example(lm, *values, max_length) for values in frame[COLUMNS].to_numpy()]
    kept = [(ids, labels) for ids, labels, _ in out if any(label != IGNORE for label in labels)]
    return kept, sum(cut for _, _, cut in out), len(out) - len(kept)


def encode_sets(lm, train, held, max_length: int) -> tuple[tuple, tuple]:
    """encode_rows of the training and the held-out rows, refused where no example keeps a response token."""
    trained, evaluated = encode_rows(lm, train, max_length), encode_rows(lm, held, max_length)
    if not trained[0] or not evaluated[0]:
        raise ValueError(f"instruct.max_length: {max_length} tokens leave no response token to "
                         f"{'train on' if not trained[0] else 'evaluate'} (every prompt fills them); raise it")
    return trained, evaluated


def instruction_rows(inputs: dict[str, str], corpora: dict[str, dict], settings: Settings):
    """(training rows, held-out rows, the fingerprint of all of them) of the job's instruction sets."""
    rows = read_instructions(inputs, corpora)
    return *split_rows(rows, settings), fingerprint(rows[COLUMNS].to_numpy().tolist())


def response_batch_loss(engine, examples: list, pad_id: int, batch):
    """A micro-batch's loss on its responses' tokens (train_epochs' batch_loss)."""
    ids, mask = pad_batch([examples[i][0] for i in batch], pad_id, engine.device)
    labels = pad_labels([examples[i][1] for i in batch], engine.device)
    return engine.module(input_ids=ids, attention_mask=mask, labels=labels).loss, mask


def run_instruct(name: str, base_dir: str, inputs: dict[str, str], corpora: dict[str, dict], settings: Settings,
                 ds_config_path: str, work_dir: str, out_model: str, metrics_path: str, generations_path: str
                 ) -> dict | None:
    """Instruction-tune the base model into the derived folder out_model; rank 0 writes the metrics and the
    generations and returns the metrics."""
    import deepspeed

    (rank, world), cost = init_distributed(), Cost()
    torch.manual_seed(settings.seed)
    lm = load_model(base_dir, dtype="float32", head="causal", device=torch.device("cpu"),
                    overrides=dict.fromkeys(DROPOUT_KEYS, settings.dropout))
    cost.loaded()
    train, held, data_fingerprint = instruction_rows(inputs, corpora, settings)
    (examples, cut_train, dropped_train), (held_examples, cut_held, dropped_held) = encode_sets(
        lm, train, held, settings.max_length)
    accum, order_length, total_steps = schedule(len(examples), settings, world)
    dtype = precision(settings.precision)
    config = deepspeed_config(ds_config_path, settings, settings.lr, accum, total_steps, dtype,
                              monitor=Path(metrics_path).parent / "monitor")
    computed = {key: value for key, value in settings.raw.items() if key != "checkpoint_every"}
    checkpoints = Path(work_dir) / "checkpoints"
    job_hash = own_checkpoints(checkpoints, {"settings": computed, "data": data_fingerprint, "world": world,
                                             "stage": "instruct"}, rank)
    pad_id = lm.tokenizer.pad_token_id
    before = response_loss(lm.model, held_examples, pad_id, settings.eval_batch_size)
    model = trainable_model(lm.model, "pattern", settings)  # every weight, the LM head: as the preflight costs it
    engine, *_ = deepspeed.initialize(model=model, config=config,
                                      model_parameters=[p for p in model.parameters() if p.requires_grad])
    train_start = time.time()
    state = train_epochs(engine, np.array([len(ids) for ids, _ in examples]), order_length, settings,
                         settings.seed, rank, world, accum, checkpoints, job_hash,
                         partial(response_batch_loss, engine, examples, pad_id))
    train_seconds = time.time() - train_start
    engine.eval()
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        after = response_loss(engine.module, held_examples, pad_id, settings.eval_batch_size)
        record = derived_record(name, "instruct", lm.info, computed, data_fingerprint)
        if rank == 0:
            if settings.gradient_checkpointing:
                engine.module.config.use_cache = True  # the saved model generates with its cache
            save_derived(engine.module, lm.tokenizer, out_model, record)
    torch.distributed.barrier()
    if rank != 0:
        return None
    write_generations(out_model, held.head(settings.generations), settings, generations_path)
    metrics = {
        "model": name, "derive": "instruct", "model_revision": record["revision"], "base": record["base"],
        "held_out": {"before": before, "after": after, "rows": len(held), "cut": cut_held, "dropped": dropped_held},
        "train": {"rows": len(train), "examples": len(examples), "cut": cut_train, "dropped": dropped_train,
                  "sets": {origin: int(n) for origin, n in train["origin"].value_counts().sort_index().items()},
                  **training_summary(state, accum, total_steps, train_seconds),
                  "zero_stage": config["zero_optimization"]["stage"], "precision": dtype, "world_size": world},
        "cost": instruct_cost(cost, base_dir, settings, examples, held_examples, world),
        "provenance": {"config_hash": record["settings_hash"], "code_version": code_version(),
                       "data_fingerprint": data_fingerprint},
    }
    write_json(metrics, metrics_path)
    write_cost("instruct", metrics_path, metrics["cost"])
    shutil.rmtree(checkpoints, ignore_errors=True)  # the job is done; checkpoints only serve a restart
    return metrics


def instruct_cost(cost: Cost, base_dir: str, settings: Settings, examples, held_examples, world: int) -> dict:
    """The job's cost with its work as the preflight counts it: every epoch over the training examples (the LM
    head trains every weight, as method pattern), the held-out ones forwarded before and after."""
    trained, held = sum(len(ids) for ids, _ in examples), sum(len(ids) for ids, _ in held_examples)
    flops = training_flops(model_shape(base_dir)["parameters"],
                           METHODS["pattern"].flops_per_token(settings.gradient_checkpointing), settings.epochs,
                           trained, evaluated=2 * held)
    return cost.as_dict(tokens=trained * settings.epochs + 2 * held, flops=flops, batch_size=settings.batch_size,
                        gpus=world)


def write_generations(model_dir: str, shown, settings: Settings, path: str) -> None:
    """The derived model's answers to held-out instructions, loaded through the one loader as every later stage
    loads it, beside each reference answer."""
    prompts = [alpaca_prompt(i, x) for i, x in shown[["instruction", "input"]].to_numpy()]
    answers = generate(load_model(model_dir), prompts, settings.max_new_tokens, settings.eval_batch_size)
    write_parquet(pa.table({"origin": shown["origin"].tolist(), "instruction": shown["instruction"].tolist(),
                            "input": shown["input"].tolist(), "reference": shown["output"].tolist(),
                            "generated": answers}), path)

