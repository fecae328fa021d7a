"""`lmadapt <stage>`: one subcommand per pipeline stage, each with explicit input and output paths.

The workflow rules pass each stage its slice of the (already validated) config as JSON, so that changing a
setting reruns exactly the jobs that use it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import layout
from .config import check_stage_settings, check_task_slice, load_schema, settings_help
from .errors import ConfigError, DataError, ModelError, PromptError, UnreadableFile


def _json_arg(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


def _k_arg(text: str) -> int | str:
    if text == "all":
        return text
    if text.isdigit():
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: examples per class (an integer) or all")


def _pairs(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {item!r}")
        out[key] = value
    return out


def _task_from_json(name: str, task: dict) -> dict:
    """Check a task slice against the schema (direct CLI use gets the same checks as the workflow)."""
    return check_task_slice(name, task)


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

    task = _task_from_json(args.task, args.task_config)
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

    task = _task_from_json(args.task, args.task_config)
    if len(args.sample) != len(args.out):
        raise SystemExit("lmadapt extract: give one --out per --sample")
    settings = check_stage_settings("extract", args.settings)
    for meta, out in zip(run_extract(args.model_dir, task, list(zip(args.sample, args.out)), settings,
                                     demos_path=args.demos, seed=args.seed), args.out):
        print(f"{out}: {meta['n']} rows, layers {meta['layers']}, prefix {meta['prompt']['prefix_tokens']} "
              f"tokens, {meta['truncated']} truncated, {meta['seconds']:.1f}s")
    return 0


def cmd_probe(args) -> int:
    from .probe import run_probe

    result = run_probe(args.train, _pairs(args.eval), _pairs(args.eval_sample), args.out,
                       check_stage_settings("probe", args.settings), args.keys)
    print(f"{args.out}: {len(result['records'])} records")
    return 0


def cmd_bow(args) -> int:
    from .probe import run_bow

    result = run_bow(args.train, _pairs(args.eval), args.out, check_stage_settings("bow", args.settings), args.keys)
    print(f"{args.out}: {len(result['records'])} records")
    return 0


def cmd_icl(args) -> int:
    from .icl import run_icl

    task = _task_from_json(args.task, args.task_config)
    result = run_icl(args.model_dir, task, args.train, _pairs(args.eval), args.out,
                     check_stage_settings("icl", args.settings), args.keys)
    for r in result["records"]:
        score = f"accuracy {r['accuracy']:.3f}" + (" DEGENERATE" if r["degenerate"] else "") \
            if r["skipped"] is None else f"skipped: {r['skipped']['reason']}"
        print(f"{r['prompt']} {r['k']}-shot {r['split']}: {score}")
    return 0


def cmd_teacher(args) -> int:
    from .icl import run_teacher

    task = _task_from_json(args.task, args.task_config)
    meta = run_teacher(args.model_dir, task, args.train, args.demos, args.out,
                       check_stage_settings("teacher", args.settings), args.seed)
    print(f"{args.out}: teacher with {meta['shots']} demonstrations, accuracy on the training inputs "
          f"{meta['teacher_accuracy']:.3f}")
    return 0


def cmd_finetune(args) -> int:
    from .finetune import run_finetune

    task = _task_from_json(args.task, args.task_config)
    settings = check_stage_settings("finetune", dict(args.settings, **args.run_settings), args.keys.get("method"))
    result = run_finetune(args.model_dir, task, args.train, _pairs(args.eval), args.out, settings, args.keys,
                          args.work_dir, args.deepspeed_config,
                          teacher_path=args.teacher)
    for r in (result or {"records": []})["records"]:
        print(f"{r['method']} k={r['k']} seed={r['seed']} {r['split']}: accuracy {r['accuracy']:.3f}"
              + (" DEGENERATE" if r["degenerate"] else "")
              + f" ({r['details']['optimizer_steps']} steps, {r['details']['train_tokens_per_s']} tokens/s)")
    return 0


def cmd_classifier(args) -> int:
    from .finetune import run_classifier

    task = _task_from_json(args.task, args.task_config)
    settings = check_stage_settings("finetune", dict(args.settings, **args.run_settings), "head")
    result = run_classifier(args.name, args.model_dir, task, args.train, _pairs(args.eval), settings, args.keys,
                            args.work_dir, args.deepspeed_config, args.out_model, args.metrics)
    for r in (result or {"records": []})["records"]:
        print(f"{args.name} ({r['split']}): accuracy {r['accuracy']:.3f} -> {args.out_model}")
    return 0


def cmd_instruct(args) -> int:
    from .instruct import run_instruct

    settings = check_stage_settings("instruct", dict(args.settings, **args.run_settings))
    metrics = run_instruct(args.name, args.base_dir, _pairs(args.data), args.corpora, settings,
                           args.deepspeed_config, args.work_dir, args.out_model, args.metrics, args.generations)
    if metrics:
        before, after = metrics["held_out"]["before"], metrics["held_out"]["after"]
        print(f"{args.name}: held-out response perplexity {before['perplexity']} -> {after['perplexity']} "
              f"({metrics['train']['optimizer_steps']} steps) -> {args.out_model}")
    return 0


def cmd_ppo(args) -> int:
    from .ppo import run_ppo

    settings = check_stage_settings("ppo", args.settings)
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
                           epochs=args.epochs, hans_rows=args.hans_rows or None, ppo_steps=args.ppo_steps)
    print(f"{path}: the grid of {args.paper} with tiny models and hub-shaped local data; run it with "
          f"snakemake --configfile {path} --directory {Path(args.out)}")
    return 0


def cmd_check_skips(args) -> int:
    import pandas as pd

    from .preflight import skipped_cells

    predicted, recorded = skipped_cells(json.loads(Path(args.plan).read_text()), pd.read_parquet(args.tidy))
    print(f"skipped cells: {len(predicted)} predicted by the preflight, {len(recorded)} recorded by the run")
    for label, cells in (("predicted, not skipped", predicted - recorded),
                         ("skipped, not predicted", recorded - predicted)):
        for cell in sorted(cells, key=str):
            print(f"  {label}: {cell}")
    return 0 if predicted == recorded else 1


def _model_task_args(parser: argparse.ArgumentParser) -> None:
    """The arguments of every stage that runs a model on a task."""
    parser.add_argument("--model-dir", required=True, help="a folder prepared by fetch-model")
    parser.add_argument("--task", required=True, help="task name")
    parser.add_argument("--task-config", type=_json_arg, required=True, help="the task's config entry, as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmadapt", description=__doc__.splitlines()[0])
    schema = load_schema()  # for the --settings help of each stage
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate-config", help="every check the workflow runs as it loads: the schema, the names "
                       "it cross-references, prompts, data files, prepared models and their layers")
    p.add_argument("config")
    p.add_argument("--directory", default=".", help="the working directory the workflow runs in (resources/ "
                   "there holds the prepared models and fetched data)")
    p.add_argument("--show", action="store_true", help="print the config with defaults filled in")
    p.set_defaults(func=cmd_validate_config)

    p = sub.add_parser("fetch-data", help="download a hub dataset split to Parquet (login node)")
    p.add_argument("--source", type=_json_arg, required=True, help="the source entry of the config, as JSON")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fetch_data)

    p = sub.add_parser("sample", help="draw a training, test or out-of-domain sample")
    p.add_argument("--task", required=True, help="task name")
    p.add_argument("--task-config", type=_json_arg, required=True, help="the task's config entry, as JSON")
    p.add_argument("--input", nargs="+", metavar="ROLE=PATH", required=True,
                   help="source files: train=..., test=..., ood:NAME=...")
    p.add_argument("--split", required=True, help="train, demos, test, instructions or ood:NAME")
    p.add_argument("--k", type=_k_arg, help="examples per class, or all: the full training set (train)")
    p.add_argument("--seed", type=int, help="data seed (train, demos)")
    p.add_argument("--test-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("fetch-model", help="prepare a model folder: download a hub id, or dequantise a GGUF file")
    p.add_argument("--name", required=True)
    p.add_argument("--model", type=_json_arg, required=True, help="the model's config entry, as JSON")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_fetch_model)

    p = sub.add_parser("extract", help="hidden states of a sample, with or without a few-shot prefix")
    _model_task_args(p)
    p.add_argument("--sample", nargs="+", required=True, help="sample files, all with the same prefix")
    p.add_argument("--demos", help="the seed's demonstration pool the few-shot prefix is drawn from")
    p.add_argument("--seed", type=int, help="seed of the demonstration draw")
    p.add_argument("--settings", type=_json_arg, required=True, help=settings_help("extract", schema))
    p.add_argument("--out", nargs="+", required=True, help="one activation file per sample, in order")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("icl", help="in-context learning with k demonstrations, every pattern of the task")
    _model_task_args(p)
    p.add_argument("--train", help="the seed's demonstration pool (not needed for 0 shots)")
    p.add_argument("--eval", nargs="+", required=True, metavar="SPLIT=PATH")
    p.add_argument("--settings", type=_json_arg, required=True, help=settings_help("icl", schema))
    p.add_argument("--keys", type=_json_arg, required=True, help="the cell's keys: task, model, k (shots), seed")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_icl)

    p = sub.add_parser("teacher", help="the prompted model's label distribution on the training inputs")
    _model_task_args(p)
    p.add_argument("--train", required=True)
    p.add_argument("--demos", help="the seed's demonstration pool (not needed for 0 shots)")
    p.add_argument("--seed", type=int, required=True, help="seed of the demonstration draw")
    p.add_argument("--settings", type=_json_arg, required=True, help=settings_help("teacher", schema))
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_teacher)

    p = sub.add_parser("finetune", help="DeepSpeed fine-tuning of one method on one training sample, then evaluation")
    _model_task_args(p)
    p.add_argument("--train", required=True)
    p.add_argument("--eval", nargs="+", required=True, metavar="SPLIT=PATH")
    p.add_argument("--teacher", help="teacher label distributions (method distill)")
    p.add_argument("--settings", type=_json_arg, required=True, help=settings_help("finetune", schema))
    p.add_argument("--run-settings", type=_json_arg, default={},
                   help="checkpoint_every, keep_checkpoint, as JSON (how it runs; never part of a checkpoint's hash)")
    p.add_argument("--deepspeed-config", required=True, help="config/deepspeed/<zero>.json")
    p.add_argument("--keys", type=_json_arg, required=True, help="the cell's keys: task, model, method, k, seed")
    p.add_argument("--work-dir", required=True, help="checkpoints (kept across restarts) and saved adapters")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("classifier", help="derive a classifier: a task's head fine-tuned, saved as a model folder")
    _model_task_args(p)
    p.add_argument("--name", required=True, help="the derived model's name")
    p.add_argument("--train", required=True)
    p.add_argument("--eval", nargs="+", required=True, metavar="SPLIT=PATH")
    p.add_argument("--settings", type=_json_arg, required=True, help=settings_help("finetune", schema))
    p.add_argument("--run-settings", type=_json_arg, default={}, help="checkpoint_every, keep_checkpoint, as JSON")
    p.add_argument("--deepspeed-config", required=True)
    p.add_argument("--keys", type=_json_arg, required=True, help="the cell's keys: task, model, method, k, seed")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--out-model", required=True, help="the derived model folder")
    p.add_argument("--metrics", required=True, help="its evaluation, as a fine-tuning cell's metrics file")
    p.set_defaults(func=cmd_classifier)

    p = sub.add_parser("instruct", help="derive an instruction-tuned model (Alpaca layout, response-only loss)")
    p.add_argument("--name", required=True, help="the derived model's name")
    p.add_argument("--base-dir", required=True, help="the base model's folder")
    p.add_argument("--data", nargs="+", required=True, metavar="NAME=PATH",
                   help="instruction sets: corpora (read through --corpora) and tasks' instruction samples")
    p.add_argument("--corpora", type=_json_arg, default={}, help="the corpora entries of the config, as JSON")
    p.add_argument("--settings", type=_json_arg, required=True, help=settings_help("instruct", schema))
    p.add_argument("--run-settings", type=_json_arg, default={}, help="checkpoint_every, as JSON")
    p.add_argument("--deepspeed-config", required=True)
    p.add_argument("--work-dir", required=True, help="checkpoints, kept across restarts")
    p.add_argument("--out-model", required=True, help="the derived model folder")
    p.add_argument("--metrics", required=True)
    p.add_argument("--generations", required=True, help="held-out instructions answered, as Parquet")
    p.set_defaults(func=cmd_instruct)

    p = sub.add_parser("ppo", help="derive a model by RL against a reward classifier (RLOO with PPO clipping)")
    p.add_argument("--name", required=True, help="the derived model's name")
    p.add_argument("--base-dir", required=True, help="the policy's starting model folder")
    p.add_argument("--reward-dir", required=True, help="the reward classifier's model folder")
    p.add_argument("--prompts", required=True, help="the corpus file the prompts come from")
    p.add_argument("--corpus", type=_json_arg, required=True, help="that corpus's config entry, as JSON")
    p.add_argument("--settings", type=_json_arg, required=True, help=settings_help("ppo", schema))
    p.add_argument("--out-model", required=True, help="the derived model folder")
    p.add_argument("--metrics", required=True)
    p.add_argument("--generations", required=True, help="held-out completions before and after, as Parquet")
    p.set_defaults(func=cmd_ppo)

    p = sub.add_parser("derived-summary", help="a Markdown table of the derived models' before/after metrics")
    p.add_argument("--metrics", nargs="*", default=[], help="results/derive/<model>/metrics.json files")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_derived_summary)

    p = sub.add_parser("preflight", help="check and cost every cell before submitting (after fetch and sample)")
    p.add_argument("--config", default="config/config.yaml", help="a config file (validated)")
    p.add_argument("--config-json", type=_json_arg, help="an already validated config, as JSON (the rule's way)")
    p.add_argument("--samples", default=layout.SAMPLES, help=f"the sample files ({layout.SAMPLES})")
    p.add_argument("--models", default=layout.PREPARED_MODELS,
                   help=f"the prepared model folders ({layout.PREPARED_MODELS})")
    p.add_argument("--out-json", default=layout.PREFLIGHT_JSON)
    p.add_argument("--out-md", default=layout.PREFLIGHT_MD)
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser("rehearsal", help="write a rehearsal of a grid: tiny models, hub-shaped local data")
    p.add_argument("--paper", default="config/paper.yaml", help="the grid to rehearse")
    p.add_argument("--out", default="rehearsal", help="folder for config.yaml, models/, data/ and the run")
    p.add_argument("--seeds", type=int, default=2, help="keep this many of the grid's seeds")
    p.add_argument("--models", nargs="+", help="keep only these models (default: all)")
    p.add_argument("--k", type=int, nargs="+",
                   help="keep only these k, and ICL with zero or as many demonstrations (default: all)")
    p.add_argument("--epochs", type=int, help="fine-tuning and instruction-tuning epochs (default: the grid's; "
                                              "fewer cuts time, not shape)")
    p.add_argument("--ppo-steps", type=int, help="PPO steps (default: the grid's; fewer cuts time, not shape)")
    p.add_argument("--hans-rows", type=int, default=3000,
                   help="a stratified subset of HANS's 30,000 rows (0 = all of them)")
    p.set_defaults(func=cmd_rehearsal)

    p = sub.add_parser("check-skips", help="compare the preflight's expected skipped cells with a run's")
    p.add_argument("--plan", default=layout.PREFLIGHT_JSON)
    p.add_argument("--tidy", default=layout.TIDY)
    p.set_defaults(func=cmd_check_skips)

    p = sub.add_parser("aggregate", help="every metrics file -> tidy table, paper tables and figures")
    p.add_argument("--metrics", nargs="*", help="metrics files (default: every JSON under results/metrics)")
    p.add_argument("--expected", type=Path, help="a file listing every metrics file of the grid (to report missing)")
    p.add_argument("--settings", type=_json_arg, help="the aggregate config section, as JSON")
    p.add_argument("--config", default="config/config.yaml", help="take the aggregate settings from this config")
    p.add_argument("--tables", default=layout.TABLES)
    p.add_argument("--figures", default=layout.FIGURES)
    p.set_defaults(func=cmd_aggregate)

    p = sub.add_parser("runtimes", help="each rule's runtime and memory from the jobs' benchmark files")
    p.add_argument("--benchmarks", default=layout.BENCHMARKS, help="the folder of Snakemake benchmark files")
    p.add_argument("--out", required=True, help="the Markdown summary")
    p.set_defaults(func=cmd_runtimes)

    p = sub.add_parser("resolved-config", help="write the config the results depend on (defaults filled in) as YAML")
    p.add_argument("--config-json", type=_json_arg, required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_resolved_config)

    p = sub.add_parser("config-reference", help="the configuration reference (every key, its type, default and "
                                                "description) from the schema, as Markdown (docs/config-reference.md)")
    p.add_argument("--out", help="write it here (default: standard output)")
    p.set_defaults(func=cmd_config_reference)

    for name, func, helptext in (("probe", cmd_probe, "probes on activations of every layer and pooling"),
                                 ("bow", cmd_bow, "bag-of-words baseline on the samples' text")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--train", required=True, help="training activations (probe) or sample (bow)")
        p.add_argument("--eval", nargs="+", required=True, metavar="SPLIT=PATH")
        if name == "probe":
            p.add_argument("--eval-sample", nargs="+", required=True, metavar="SPLIT=PATH",
                           help="the evaluation samples (for per-heuristic scores)")
        p.add_argument("--settings", type=_json_arg, required=True, help=settings_help(name, schema))
        p.add_argument("--keys", type=_json_arg, required=True, help="the cell's keys (task, model, k, seed, ...)")
        p.add_argument("--out", required=True)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, ModelError, PromptError, UnreadableFile) as e:
        print(f"lmadapt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only or missing folder: the path and why, not a traceback
        where = " -> ".join(str(name) for name in (e.filename, e.filename2) if name)
        print(f"lmadapt {args.command}: error: {where or 'I/O'}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
