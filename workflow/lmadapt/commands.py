"""What each `lmadapt` verb does: `cmd_<verb>(args)` reads the verb's parsed arguments (cli.py declares them) and
calls its stage's function, imported inside it, so that a verb that uses no model starts without torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import layout
from .config import check_task_slice
from .errors import ConfigError
from .settings import read_settings


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {item!r}")
        out[key] = value
    return out


def cmd_validate_config(args) -> int:
    from .checks import load_config, start_problems

    config = load_config(args.config)
    problems = start_problems(config, args.directory)
    if problems:  # as the workflow says it when it loads
        raise ConfigError(f"{args.config}: invalid configuration:\n  " + "\n  ".join(problems))
    n_cells = sum(len(t["k"]) for t in config["tasks"].values()) * len(config["seeds"])
    print(f"{args.config}: valid ({len(config['tasks'])} task(s), {len(config['models'])} model(s), "
          f"{n_cells} training samples)")
    if args.show:
        print(json.dumps(config, indent=2))
    return 0


def cmd_fetch_data(args) -> int:
    from .data import fetch_hub

    n = fetch_hub(args.source, args.out)
    print(f"fetched {n} rows -> {args.out}")
    return 0


def cmd_sample(args) -> int:
    from .sample import run_sample

    task = check_task_slice(args.task, args.task_config)
    meta = run_sample(args.task, task, _pairs(args.input), args.split, args.out, k=args.k, seed=args.seed,
                      test_seed=args.test_seed)
    print(f"{args.out}: {meta['n']} rows {meta['class_counts']}")
    return 0


def cmd_fetch_model(args) -> int:
    from .models import fetch_model

    info = fetch_model(args.name, args.model, args.out)
    print(f"{args.name}: {info['source']} @ {info['revision']} -> {args.out}")
    return 0


def cmd_extract(args) -> int:
    from .extract import run_extract

    task = check_task_slice(args.task, args.task_config)
    if len(args.sample) != len(args.out):
        raise SystemExit("lmadapt extract: give one --out per --sample")
    settings = read_settings("extract", dict(args.settings, **args.run_settings))
    for meta, out in zip(run_extract(args.model_dir, task, list(zip(args.sample, args.out)), settings,
                                     demos_path=args.demos, seed=args.seed), args.out):
        print(f"{out}: {meta['n']} rows, layers {meta['layers']}, prefix {meta['prompt']['prefix_tokens']} "
              f"tokens, {meta['truncated']} truncated, {meta['seconds']:.1f}s")
    return 0


def cmd_probe(args) -> int:
    from .probe import run_probe

    result = run_probe(args.train, _pairs(args.eval), _pairs(args.eval_sample), args.out,
                       read_settings("probe", args.settings), args.keys)
    print(f"{args.out}: {len(result['records'])} records")
    return 0


def cmd_bow(args) -> int:
    from .probe import run_bow

    result = run_bow(args.train, _pairs(args.eval), args.out, read_settings("bow", args.settings), args.keys)
    print(f"{args.out}: {len(result['records'])} records")
    return 0


def cmd_icl(args) -> int:
    from .icl import run_icl

    task = check_task_slice(args.task, args.task_config)
    result = run_icl(args.model_dir, task, args.train, _pairs(args.eval), args.out,
                     read_settings("icl", dict(args.settings, **args.run_settings)), args.keys)
    for r in result["records"]:
        score = f"accuracy {r['accuracy']:.3f}" + (" DEGENERATE" if r["degenerate"] else "") \
            if r["skipped"] is None else f"skipped: {r['skipped']['reason']}"
        print(f"{r['prompt']} {r['k']}-shot {r['split']}: {score}")
    return 0


def cmd_teacher(args) -> int:
    from .icl import run_teacher

    task = check_task_slice(args.task, args.task_config)
    meta = run_teacher(args.model_dir, task, args.train, args.demos, args.out,
                       read_settings("teacher", dict(args.settings, **args.run_settings)), args.seed)
    print(f"{args.out}: teacher with {meta['shots']} demonstrations, accuracy on the training inputs "
          f"{meta['teacher_accuracy']:.3f}")
    return 0


def cmd_finetune(args) -> int:
    from .finetune import run_finetune

    task = check_task_slice(args.task, args.task_config)
    settings = read_settings("finetune", dict(args.settings, **args.run_settings), args.keys.get("method"))
    result = run_finetune(args.model_dir, task, args.train, _pairs(args.eval), args.out, settings, args.keys,
                          args.work_dir, args.deepspeed_config, teacher_path=args.teacher)
    for r in (result or {"records": []})["records"]:
        print(f"{r['method']} k={r['k']} seed={r['seed']} {r['split']}: accuracy {r['accuracy']:.3f}"
              + (" DEGENERATE" if r["degenerate"] else "")
              + f" ({r['details']['optimizer_steps']} steps, {r['details']['train_tokens_per_s']} tokens/s)")
    return 0


def cmd_classifier(args) -> int:
    from .finetune import run_classifier

    task = check_task_slice(args.task, args.task_config)
    settings = read_settings("finetune", dict(args.settings, **args.run_settings), "head")
    result = run_classifier(args.name, args.model_dir, task, args.train, _pairs(args.eval), settings, args.keys,
                            args.work_dir, args.deepspeed_config, args.out_model, args.metrics)
    for r in (result or {"records": []})["records"]:
        print(f"{args.name} ({r['split']}): accuracy {r['accuracy']:.3f} -> {args.out_model}")
    return 0


def cmd_instruct(args) -> int:
    from .instruct import run_instruct

    settings = read_settings("instruct", dict(args.settings, **args.run_settings))
    metrics = run_instruct(args.name, args.base_dir, _pairs(args.data), args.corpora, settings,
                           args.deepspeed_config, args.work_dir, args.out_model, args.metrics, args.generations)
    if metrics:
        before, after = metrics["held_out"]["before"], metrics["held_out"]["after"]
        print(f"{args.name}: held-out response perplexity {before['perplexity']} -> {after['perplexity']} "
              f"({metrics['train']['optimizer_steps']} steps) -> {args.out_model}")
    return 0


def cmd_ppo(args) -> int:
    from .ppo import run_ppo

    settings = read_settings("ppo", args.settings)
    metrics = run_ppo(args.name, args.base_dir, args.reward_dir, args.prompts, args.corpus, settings,
                      args.out_model, args.metrics, args.generations)
    before, after = metrics["held_out"]["before"], metrics["held_out"]["after"]
    print(f"{args.name}: held-out mean reward {before['mean_reward']} -> {after['mean_reward']}, bad share "
          f"{before['bad_share']} -> {after['bad_share']}, KL {after['kl_to_base']} -> {args.out_model}")
    return 0


def cmd_derived_summary(args) -> int:
    from .derived import summary_markdown
    from .io import read_json, write_text

    write_text(summary_markdown([read_json(path) for path in args.metrics]), args.out)
    print(f"{args.out}: {len(args.metrics)} derived model(s)")
    return 0


def cmd_aggregate(args) -> int:
    from .aggregate import run_aggregate
    from .checks import load_config

    expected = args.expected.read_text().split() if args.expected else []
    metrics = args.metrics or [str(p) for p in sorted(Path(layout.METRICS_DIR).rglob("*.json"))]
    settings = args.settings or load_config(args.config)["aggregate"]
    summary = run_aggregate(metrics, expected, args.tables, args.figures, settings)
    print(f"{summary['rows']} rows from {summary['files']} metrics files; {len(summary['tables'])} table files, "
          f"{len(summary['figures'])} figure files; {len(summary['missing'])} expected files missing")
    for path in summary["missing"][:20]:
        print(f"  missing: {path}")
    return 0


def cmd_calibrate(args) -> int:
    from .calibration import run_calibration

    calibration = run_calibration(args.plan, args.benchmarks, args.out_json, args.out_md)
    print(f"{args.out_md}: {len(calibration['fits'])} fit(s) from {calibration['jobs']} finished job(s)")
    return 0


def cmd_status(args) -> int:
    from .checks import load_config
    from .io import write_text
    from .status import grid_jobs, status_markdown

    config = args.config_json if args.config_json is not None else load_config(args.config)
    text = status_markdown(grid_jobs(config, args.directory))
    if args.out:
        write_text(text, args.out)
    print(text if not args.out else f"{args.out}: {text.splitlines()[2]}")
    return 0


def cmd_runtimes(args) -> int:
    from .runtimes import write_runtimes

    summary = write_runtimes(args.benchmarks, args.out)
    print(f"{args.out}: {int(summary['jobs'].sum())} jobs of {len(summary)} rules")
    return 0


def cmd_resolved_config(args) -> int:
    import yaml

    from .io import write_text

    header = ("# The configuration the results depend on: the config files merged, every default filled in (how\n"
              "# jobs run, i.e. threads, mem_mb and checkpoint cadence, left out).\n")
    write_text(header + yaml.safe_dump(args.config_json, sort_keys=False, allow_unicode=True), args.out)
    print(f"{args.out}: {len(args.config_json)} sections")
    return 0


def cmd_config_reference(args) -> int:
    from .io import write_text
    from .reference import config_reference

    text = config_reference()
    if args.out:
        write_text(text, args.out)
        print(f"{args.out}: {text.count(chr(10))} lines")
    else:
        sys.stdout.write(text)
    return 0


def cmd_preflight(args) -> int:
    from .checks import load_config
    from .preflight import run_preflight

    config = args.config_json if args.config_json is not None else load_config(args.config)
    result = run_preflight(config, args.samples, args.models, args.out_json, args.out_md)
    print(f"{args.out_md}: {sum(result['cells'].values())} cells, {len(result['expected_skipped'])} expected "
          f"skipped, {len(result['notes'])} notes, {result['gpu_hours']:.1f} GPU-hours estimated "
          f"({result['seconds']} s)")
    return 0


def cmd_rehearsal(args) -> int:
    from .rehearsal import build_rehearsal

    path = build_rehearsal(args.paper, args.out, seeds=args.seeds, models=args.models, ks=args.k,
                           epochs=args.epochs, hans_rows=args.hans_rows or None, ppo_steps=args.ppo_steps,
                           methods=args.methods)
    print(f"{path}: the grid of {args.paper} with tiny models and hub-shaped local data; run it with "
          f"snakemake --configfile {path} --directory {Path(args.out)}")
    return 0


def cmd_check_skips(args) -> int:
    import pandas as pd

    from .plan import skipped_cells

    predicted, recorded = skipped_cells(json.loads(Path(args.plan).read_text()), pd.read_parquet(args.tidy))
    print(f"skipped cells and cells with examples left out: {len(predicted)} predicted by the preflight, "
          f"{len(recorded)} recorded by the run")
    for label, cells in (("predicted, not skipped", predicted - recorded),
                         ("skipped, not predicted", recorded - predicted)):
        for cell in sorted(cells, key=str):
            print(f"  {label}: {cell}")
    return 0 if predicted == recorded else 1
