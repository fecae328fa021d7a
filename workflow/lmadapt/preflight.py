"""The `preflight` stage: every cell of the grid checked and costed before a GPU is spent.

Static part (the config alone): the cells of every stage, and each few-shot prompt's demonstrations against the
task's demonstration pool (config validation already refuses an infeasible one, naming the key).
Dynamic part (after fetch and sample, with each model's real tokenizer and the real samples): prompt lengths per
cell through the same functions the jobs call — which ICL cells will be skipped or run with fewer
demonstrations and why, how many demonstrations each few-shot prefix and teacher gets, how many inputs
extraction and fine-tuning will truncate — and the expected skipped list. A cell that would fail (a training
input too long for the teacher even without demonstrations, a fine-tuning job that does not fit the GPUs) is an
error naming the config key and the cell.
Cost part: per job, parameters, GPU memory under the chosen ZeRO stage and GPU count against the GPU's memory,
FLOPs and an estimated GPU time, summed for the grid. Written as results/plan/preflight.{json,md}.
"""
from __future__ import annotations

import hashlib
import json
import math
import pkgutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from .checks import layer_problems, model_kind_problems
from .config import ConfigError, finetune_settings, setting_key, stage_config, training_layout
from .costs import Zero, inference_flops, internode_bytes, model_shape, training_flops, training_memory
from .data import corpus_path
from .grid import demonstration_needs, derived_models, root_model
from .io import read_metadata, read_table, write_json, write_text
from .layout import SampleName, demonstration_pool, eval_splits, prompt_folder, train_sample
from .methods import METHODS
from .models import load_tokens
from .plan import Plan, to_markdown
from .prompt import (PREFIX_SHARE, classifier_inputs, encode_prompt, fit_demonstrations, needed_after_prefix,
                     prefix_demonstrations, task_pattern, verbalizer_problems)
from .resources import unpinned_sources
from .sample import META_KEY, normalised_texts, overlap_message
from .settings import section_settings
from .stages import STAGES, grid

def sample_file(samples: Path, task: str, name: str) -> Path:
    return samples / task / f"{name}.parquet"


def tokenizer_key(folder: Path) -> str:
    """Models that share a tokenizer and a context (the OPT family) are measured once."""
    h = hashlib.sha256()
    for name in sorted(p.name for p in folder.iterdir() if "token" in p.name or p.name in ("vocab.json", "merges.txt")):
        h.update(name.encode() + (folder / name).read_bytes())
    config = json.loads((folder / "config.json").read_text())
    h.update(str(config.get("max_position_embeddings") or config.get("n_positions")).encode())
    return h.hexdigest()


def overlap_check(config: dict, samples: Path, read) -> tuple[list[str], list[dict]]:
    """(problems, notes). Problems: training samples and demonstration pools that share a text (as
    sample.normalised_texts compares them) with an evaluation sample of their task: a separate test file's (its
    sample job refuses that too) or an out-of-domain set's (which a training sample's job reads only where the task
    drops overlaps). Notes: the rows each of them left out where the task drops overlaps."""
    problems, notes = [], []
    for task_name, task in sorted(config["tasks"].items()):
        evaluations = [str(SampleName("ood", ood=name)) for name in task["ood"]] + (
            ["test"] if "test" in task["data"] else [])
        evaluations = [sample_file(samples, task_name, name) for name in evaluations]
        texts = {path: set(normalised_texts(read(path), task["fields"])) for path in evaluations if path.is_file()}
        for training in sorted((samples / task_name).glob(str(SampleName("train", "*", "*")) + ".parquet")) + sorted(
                (samples / task_name).glob(demonstration_pool("*") + ".parquet")):
            own = normalised_texts(read(training), task["fields"])
            for path, evaluated in texts.items():
                shared = sum(text in evaluated for text in own)
                if shared:
                    problems.append(overlap_message(task_name, shared, training, SampleName.parse(path.stem).role,
                                                    path))
            for name, n in read_metadata(training, META_KEY).get("dropped_overlap", {}).items():
                notes.append(dict(stage="sample", model="-", task=task_name, sample=training.stem,
                                  what=f"{n} training row(s) left out: they share their text with the {name} sample "
                                       f"(tasks.{task_name}.overlap: drop)"))
    return problems, notes


def scorer_problems(config: dict, cells: dict, models: list[str], tokens_of) -> list[str]:
    """Every (model, task, pattern) whose labels the model's tokenizer makes impossible to tell apart, by the key
    to change: in-context learning and the teacher score whole verbalizers, pattern-based fine-tuning their first
    tokens, an encoder-decoder's fine-tuning its decoder's whole target."""
    first_token: dict[tuple, bool] = {}  # (model, task, pattern) -> scored by first tokens
    for cell in cells["icl"]:
        for name in stage_config(config, "icl", cell["model"])["patterns"] or config["tasks"][cell["task"]]["prompt"][
                "patterns"]:
            first_token.setdefault((cell["model"], cell["task"], name), False)
    for cell in cells["finetune"]:
        scored = METHODS[cell["method"]].head.verbalizer
        if scored is not None:
            name = stage_config(config, "finetune", cell["model"])["pattern"] or next(
                iter(config["tasks"][cell["task"]]["prompt"]["patterns"]))
            key = (cell["model"], cell["task"], name)
            first_token[key] = first_token.get(key, False) or scored == "first"
    problems = []
    for (model, task, name), first in sorted(first_token.items()):
        if model in models:
            problems += [f"tasks.{task}.prompt.patterns.{name}.verbalizer: model {model}: {problem}"
                         for problem in verbalizer_problems(tokens_of(model), task_pattern(config["tasks"][task], name),
                                                            first)]
    return problems


@dataclass
class Measuring:
    """What every stage's check reads: the config, the samples, the fetched models (a derived model is measured
    and costed by its root model's folder: its tokenizer and shape), the DeepSpeed config, and counts measured once
    per tokenizer and question (models that share a tokenizer and context, like the OPT family, share them)."""

    config: dict
    samples: Path
    fetched: dict[str, Path]
    shapes: dict[str, dict]
    plan: Plan
    zero: Zero  # the grid's DeepSpeed config, as the memory model reads it
    read: Callable = field(default_factory=lambda: _cached(lambda path: read_table(path, META_KEY)[0]))
    tokenizers: dict = field(default_factory=dict)
    measured: dict = field(default_factory=dict)

    def tokens_of(self, model: str):
        key = tokenizer_key(self.fetched[model])
        if key not in self.tokenizers:
            self.tokenizers[key] = load_tokens(self.fetched[model])
        return key, self.tokenizers[key]

    def measure(self, model: str, what: tuple, compute):
        key, tokens = self.tokens_of(model)
        if (key, what) not in self.measured:
            self.measured[key, what] = compute(tokens)
        return self.measured[key, what]

    def sample(self, task: str, name: str) -> pd.DataFrame:
        return self.read(sample_file(self.samples, task, name))

    def evals(self, task: str) -> dict[str, pd.DataFrame]:
        return {split: self.sample(task, split) for split in eval_splits(self.config["tasks"][task])}


def plan_extract(m: Measuring, cells: dict) -> None:
    """One job per (model, task, prompt, sample): its prefix's demonstrations, its truncated inputs, its cost."""
    jobs = set()
    for cell in cells["probe"]:
        seed = cell["seed"] if cell["prompt"] == "fewshot" else None
        for name in [train_sample(cell["k"], cell["seed"])] + list(m.evals(cell["task"])):
            jobs.add((cell["model"], cell["task"], seed, name))
    for model, task, seed, name in sorted(jobs, key=str):
        if model not in m.fetched:
            continue
        task_config, extract = m.config["tasks"][task], stage_config(m.config, "extract", model)
        pattern = task_pattern(task_config, extract["pattern"])
        shots = extract["shots"] if seed is not None else 0

        def count(tokens, task=task, seed=seed, name=name, shots=shots, pattern=pattern, task_config=task_config,
                  max_length=extract["max_length"]):
            rows = m.sample(task, name)
            limit = tokens.prompt_budget(max_length)
            demos = rows.iloc[:0]
            if shots:
                demos, _ = prefix_demonstrations(tokens, pattern, m.sample(task, demonstration_pool(seed)),
                                                 len(task_config["labels"]), shots, seed, limit)
            prompt_ids = encode_prompt(tokens, pattern, rows, demos, max_length=limit)
            return {"prefix": len(prompt_ids.prefix), "truncated": prompt_ids.truncated, "n": len(rows),
                    "tokens": sum(map(len, prompt_ids.examples)), "shots_used": len(demos)}

        counts = m.measure(model, ("extract", task, seed, name, shots, pattern.name, extract["max_length"]), count)
        prompt = prompt_folder("none" if seed is None else "fewshot", seed)
        where = dict(stage="extract", model=model, task=task, prompt=prompt, sample=name)
        if counts["shots_used"] < shots:
            m.plan.cells.append(dict(where, what=f"prefix of {counts['shots_used']} of {shots} demonstrations (a "
                                                 f"prefix takes at most {PREFIX_SHARE:.0%} of the context)"))
        if counts["truncated"]:
            m.plan.cells.append(dict(where, what=f"{counts['truncated']} of {counts['n']} inputs truncated "
                                                 "(they keep their end)"))
        shape, ran = m.shapes[model], counts["tokens"] + counts["prefix"]
        length = counts["prefix"] + counts["tokens"] // max(counts["n"], 1)
        m.plan.inference_job("extract", model, task, inference_flops(shape["parameters"], ran), shape, length,
                             extract["batch_size"], "extract.batch_size", prompt=prompt, sample=name)


def plan_icl(m: Measuring, cells: dict) -> None:
    """Every (cell, pattern): whether its prompt fits the context (else a skipped cell, as the job records it),
    with how many demonstrations, and its cost."""
    for cell in cells["icl"]:
        model, task, shots, seed = cell["model"], cell["task"], cell["shots"], cell["seed"]
        if model not in m.fetched:
            continue
        icl, task_config = stage_config(m.config, "icl", model), m.config["tasks"][task]
        for name in icl["patterns"] or list(task_config["prompt"]["patterns"]):
            pattern = task_pattern(task_config, name)
            evaluated = m.measure(model, ("icl", task, name, shots > 0), lambda tokens, pattern=pattern, task=task,
                                  joined=shots > 0: icl_evaluation(m, tokens, task, pattern, joined))
            counts = m.measure(model, ("icl", task, name, shots, seed, icl["fit"], icl["max_length"]),
                               lambda tokens, pattern=pattern, task=task, shots=shots, seed=seed, evaluated=evaluated:
                               icl_fit(m, tokens, task, pattern, evaluated, shots, seed, icl["fit"], icl["max_length"]))
            where = dict(stage="icl", model=model, task=task, pattern=name, shots=shots, seed=seed)
            if not counts["runs"]:
                m.plan.cells.append(dict(where, what="skipped: prompt does not fit the context",
                                         prefix_tokens=counts["prefix_tokens"],
                                         tokens_after_prefix=counts["tokens_after_prefix"], context=counts["context"]))
                continue
            if counts["shots_used"] < shots:
                m.plan.cells.append(dict(where, what=f"runs with {counts['shots_used']} of {shots} demonstrations"))
            if counts["left_out"]:
                m.plan.cells.append(dict(where, skipped_examples=counts["left_out"], what=f"{counts['left_out']} of "
                                         f"{counts['n']} evaluation examples left out: longer than the context leaves "
                                         f"after the prefix (icl.fit: skip_examples)"))
            shape = m.shapes[model]
            scored = counts["tokens"] * (counts["labels"] if counts["multi"] else 1)
            length = counts["prefix_tokens"] + counts["tokens_after_prefix"]
            flops = inference_flops(shape["parameters"], counts["prefix_tokens"] + scored)
            m.plan.inference_job("icl", model, task, flops, shape, length, icl["batch_size"], "icl.batch_size",
                                 shots=shots, seed=seed, pattern=name)


def icl_fit(m: Measuring, tokens, task: str, pattern, evaluated: dict, shots: int, seed: int, fit: str,
            max_length) -> dict:
    """An ICL cell's prompt as its job fits it (icl.pattern_records): its demonstrations, whether it runs, the
    evaluation tokens it scores and, under fit skip_examples, how many examples it leaves out."""
    left_out = fit == "skip_examples"
    pool = m.sample(task, demonstration_pool(seed)) if shots else m.evals(task)["test"].iloc[:0]
    context = tokens.context(max_length)
    _, prefix, counts = fit_demonstrations(tokens, pattern, pool, evaluated["labels"], shots, seed,
                                           evaluated["shortest" if left_out else "needed"], context, fit)
    lengths = [n for n in evaluated["lengths"] if not left_out or prefix is None or
               n <= context - len(prefix) - evaluated["verbalizer"]]
    return counts | {"runs": prefix is not None, "n": len(evaluated["lengths"]), "tokens": sum(lengths),
                     "left_out": len(evaluated["lengths"]) - len(lengths), "labels": evaluated["labels"],
                     "multi": evaluated["verbalizer"] > 1}


def icl_evaluation(m: Measuring, tokens, task: str, pattern, joined: bool) -> dict:
    """A task's evaluation examples under a pattern: their lengths, the longest label word, and the tokens a prompt
    needs after its prefix: for the longest example, and for the shortest of each split (skip_examples runs a cell
    where each split keeps one)."""
    encoded = [encode_prompt(tokens, pattern, rows, rows.iloc[:0], after_demonstrations=joined)
               for rows in m.evals(task).values()]
    return {"needed": max(needed_after_prefix(e.examples, e.verbalizers) for e in encoded),
            "shortest": max(needed_after_prefix(e.examples, e.verbalizers, shortest=True) for e in encoded),
            "lengths": [len(ids) for e in encoded for ids in e.examples], "labels": len(pattern.labels),
            "verbalizer": max(map(len, encoded[0].verbalizers))}


def plan_teachers(m: Measuring, cells: dict) -> None:
    """One teacher per training sample a distilling method needs: its demonstrations (an error where even none
    leave room for the longest training input) and its cost."""
    for model, task, k, seed in sorted({(c["model"], c["task"], c["k"], c["seed"]) for c in cells["finetune"]
                                        if METHODS[c["method"]].teacher}):
        if model not in m.fetched:
            continue
        task_config, ft = m.config["tasks"][task], stage_config(m.config, "finetune", model)
        pattern = task_pattern(task_config, ft["pattern"])

        def teach(tokens, pattern=pattern, ft=ft, task=task, k=k, seed=seed, task_config=task_config):
            from .icl import teacher_demonstrations
            from .prompt import PromptError

            rows = m.sample(task, train_sample(k, seed))
            pool = m.sample(task, demonstration_pool(seed)) if ft["distill"]["shots"] else rows.iloc[:0]
            try:
                demos, prefix, counts = teacher_demonstrations(tokens, pattern, rows, pool, len(task_config["labels"]),
                                                               ft["distill"]["shots"], seed)
            except PromptError as e:
                return {"error": str(e)}
            return dict(counts, tokens=sum(map(len, encode_prompt(tokens, pattern, rows, demos).examples)))

        counts = m.measure(model, ("teacher", task, k, seed, pattern.name, ft["distill"]["shots"]), teach)
        if "error" in counts:
            m.plan.errors.append(f"tasks.{task}: teacher of model {model}, k={k}, seed {seed}: {counts['error']}")
            continue
        if counts["shots_used"] < counts["shots_requested"]:
            m.plan.cells.append(dict(stage="teacher", model=model, task=task, k=k, seed=seed,
                                     what=f"teacher uses {counts['shots_used']} of {counts['shots_requested']} "
                                          f"demonstrations (the longest training input must fit)"))
        shape, length = m.shapes[model], counts["prefix_tokens"] + counts["tokens_after_prefix"]
        flops = inference_flops(shape["parameters"], counts["prefix_tokens"] + counts["tokens"])
        m.plan.inference_job("teacher", model, task, flops, shape, length, ft["distill"]["batch_size"],
                             "finetune.distill.batch_size", k=k, seed=seed)


def plan_finetune(m: Measuring, cells: dict) -> None:
    """Every fine-tuning cell: its teacher (plan_teachers), its truncated inputs, FLOPs and memory under ZeRO (an
    error where it does not fit), and LoRA modules the model does not have."""
    plan_teachers(m, cells)
    config = m.config
    for cell in cells["finetune"]:
        model, task, method, k, seed = (cell[key] for key in ("model", "task", "method", "k", "seed"))
        if model not in m.fetched:
            continue
        settings = section_settings("finetune", finetune_settings(config, method, model))  # the job's
        pattern = task_pattern(config["tasks"][task], settings.pattern)

        def inputs(tokens, name, pattern=pattern, max_length=settings.max_length, task=task):
            ids, truncated = classifier_inputs(tokens, pattern, m.sample(task, name), max_length)
            return {"tokens": sum(map(len, ids)), "longest": max(map(len, ids)), "truncated": truncated,
                    "n": len(ids)}

        name, measured_as = train_sample(k, seed), (pattern.name, settings.max_length)
        train = m.measure(model, ("finetune", task, name) + measured_as, lambda t: inputs(t, name))
        evaluated = {split: m.measure(model, ("finetune", task, split) + measured_as, lambda t, s=split: inputs(t, s))
                     for split in m.evals(task)}
        truncated = {"train": train["truncated"]} | {s: e["truncated"] for s, e in evaluated.items()}
        if any(truncated.values()) and method == stage_config(config, "finetune", model)["methods"][0]:
            m.plan.cells.append(dict(stage="finetune", model=model, task=task, method="every method", k=k, seed=seed,
                                     what=f"inputs truncated to {setting_key(config, 'finetune', model, 'max_length')}"
                                          f": " + ", ".join(f"{s} {n}" for s, n in truncated.items() if n)))
        shape = m.shapes[model]
        per_token = METHODS[method].flops_per_token(settings.gradient_checkpointing)
        held = settings.validation or 0  # validated (forward only) after every epoch instead of trained on
        flops = training_flops(shape["parameters"], per_token, settings.epochs, (1 - held) * train["tokens"],
                               held * train["tokens"], sum(e["tokens"] for e in evaluated.values()) +
                               (train["tokens"] if held else 0))  # with validation, the job evaluates its rows too
        if METHODS[method].lora and not shape["lora_parameters"]:
            m.plan.errors.append(f"{setting_key(config, 'finetune', model, 'lora', 'target_modules')}: "
                                 f"{settings.lora.target_modules} name no projection of model {model}; {method} "
                                 f"would adapt nothing (give the model's own, e.g. [q, v] for T5)")
        plan_training(m, "finetune", model, task, method, settings, flops, train["longest"], (1 - held) * train["n"],
                      [held * train["n"]] * settings.epochs + [e["n"] for e in evaluated.values()],
                      f"{method} fine-tuning", dict(method=method, k=k, seed=seed), shared_forward=True)


def plan_training(m: Measuring, stage: str, model: str, task: str, method: str, settings, flops: float,
                  longest: int, trained_rows: float, forward_rows: list[float], what: str, cell: dict | None = None,
                  shared_forward: bool = False) -> None:
    """A training job (finetune, instruct) on its model's layout: its memory per GPU under ZeRO over all its
    ranks, the bytes its link between nodes moves (a rank trains on its share of each epoch's `trained_rows`, and
    runs its share of each of `forward_rows` where the ranks share them (fine-tuning's predictions: its
    rank_share), else all of them), and an error naming the fewest nodes that would hold it where it does not
    fit."""
    zero = m.zero
    shape, (nodes, per_node) = m.shapes[model], training_layout(m.config["models"][model])
    ranks = nodes * per_node

    def memory_on(ranks):
        return training_memory(shape, method, settings, zero.stage, zero.offload, ranks, longest)

    forward_share = ranks if shared_forward else 1
    moved = internode_bytes(shape, method, zero.stage, nodes, ranks,
                            settings.epochs * math.ceil(trained_rows / (settings.batch_size * ranks)),
                            sum(math.ceil(math.ceil(rows / forward_share) / settings.eval_batch_size)
                                for rows in forward_rows))
    m.plan.job(stage, model, task, nodes * m.config["models"][model]["gpus"], flops, memory_on(ranks), shape,
               nodes=nodes, internode_bytes=moved, **(cell or {}))
    m.plan.errors += zero.too_big(m.plan, memory_on, model, (nodes, per_node), what,
                                  setting_key(m.config, stage, model, "batch_size"))


def plan_instruct(m: Measuring, corpora: Path) -> None:
    """Every instruction-tuned model on its real instruction sets: tokens, FLOPs, memory, examples cut."""
    from .instruct import alpaca_prompt, read_instructions, split_rows  # torch: only where instructions are costed

    config = m.config
    for name in derived_models(config, "instruct"):
        if name not in m.fetched:
            continue
        section = stage_config(config, "instruct", name)
        settings = section_settings("instruct", section)
        sets = {corpus: corpus_path(config["corpora"][corpus], corpora / f"{corpus}.parquet")
                for corpus in settings.data}
        sets |= {task: sample_file(m.samples, task, "instructions") for task in section["tasks"]}
        where = dict(stage="instruct", model=name, task=",".join(sorted(sets)))
        absent = sorted(str(path) for path in sets.values() if not Path(path).is_file())
        if absent:
            m.plan.cells.append(dict(where, what=f"not costed: {', '.join(absent)} not there yet"))
            continue
        train, held = split_rows(read_instructions({k: str(v) for k, v in sets.items()}, config["corpora"]), settings)

        def instruction_lengths(tokens, frame):
            prompts = tokens.encode_many([alpaca_prompt(i, x) for i, x in frame[["instruction", "input"]].to_numpy()])
            responses = tokens.encode_many(list(frame["output"]))
            full = [len(tokens.leading_special_ids()) + len(p) + len(r) + 1 for p, r in zip(prompts, responses)]
            kept = [min(n, settings.max_length) for n in full]
            return {"tokens": sum(kept), "longest": max(kept), "cut": sum(n > settings.max_length for n in full)}

        measured_as = ("instruct", tuple(sorted(sets)), settings.seed, settings.held_out, settings.max_rows,
                       settings.max_length)
        trained = m.measure(name, measured_as + ("train",), lambda t: instruction_lengths(t, train))
        evaluated = m.measure(name, measured_as + ("held",), lambda t: instruction_lengths(t, held))
        per_token = METHODS["pattern"].flops_per_token(settings.gradient_checkpointing)
        flops = training_flops(m.shapes[name]["parameters"], per_token, settings.epochs, trained["tokens"],
                               evaluated=2 * evaluated["tokens"])  # the held-out set before and after
        if trained["cut"]:
            m.plan.cells.append(dict(where, what=f"{trained['cut']} of {len(train)} training examples cut to "
                                                 f"{setting_key(config, 'instruct', name, 'max_length')}"))
        plan_training(m, "instruct", name, where["task"], "pattern", settings, flops, trained["longest"], len(train),
                      [len(held)], "instruction tuning")  # the held-out set after training: the trained model's


def run_preflight(config: dict, samples_dir: str, models_dir: str, out_json: str, out_md: str) -> dict:
    start = time.time()
    samples, models = Path(samples_dir), Path(models_dir)
    plan = Plan(config)
    plan.errors += layer_problems(config, models) + model_kind_problems(config, models)
    cells = grid(config)
    fetched = {m: models / root_model(config, m) for m in config["models"]
               if (models / root_model(config, m) / "config.json").is_file()}
    shapes = {m: model_shape(folder, stage_config(config, "finetune", m)["lora"]) for m, folder in fetched.items()}
    measuring = Measuring(config, samples, fetched, shapes, plan, Zero.of(config))
    plan.errors += scorer_problems(config, cells, [m for m in config["models"] if m in fetched],
                                   lambda model: measuring.tokens_of(model)[1])
    problems, notes = overlap_check(config, samples, measuring.read)
    plan.errors += problems
    plan.cells += notes
    for stage in STAGES.values():  # each grid stage's check and cost of its cells, as its entry names it
        if stage.plan:
            pkgutil.resolve_name(stage.plan)(measuring, cells)
    plan_instruct(measuring, models.parent / "corpora")
    for source in unpinned_sources(config, models.parent):
        got = f"its fetch got {source['commit']}: pin it" if source["commit"] else "fetch it and pin the commit"
        plan.cells.append(dict(stage="fetch", model="", task="", what=f"{source['key']}: {source['revision']!r} is not "
                                                                      f"a commit; {got}"))
    result = {"seconds": round(time.time() - start, 2), "models_fetched": sorted(fetched),
              "models_not_fetched": sorted(set(config["models"]) - set(fetched)),
              "cells": {stage: len(c) for stage, c in cells.items()},
              "demonstrations": [{"key": key, "task": task, "shots": shots,
                                  "per_class": math.ceil(shots / len(config["tasks"][task]["labels"])),
                                  "pool_per_class": config["tasks"][task]["demonstrations"]}
                                 for key, task, shots in demonstration_needs(config)],
              "expected_skipped": [c for c in plan.cells if c["what"].startswith("skipped")],
              "notes": plan.cells, "errors": plan.errors, "jobs": plan.jobs,
              "gpu_hours": sum(j["gpu_hours"] for j in plan.jobs), "cluster": plan.cluster}
    write_json(result, out_json)
    write_text(to_markdown(result), out_md)
    if plan.errors:
        raise ConfigError(f"preflight: {len(plan.errors)} cell(s) cannot run (see {out_md}); first: {plan.errors[0]}")
    return result


def _cached(function):
    cache = {}

    def wrapper(path):
        if path not in cache:
            cache[path] = function(path)
        return cache[path]

    return wrapper
