"""`lmadapt <stage>`: one subcommand per pipeline stage, each with explicit input and output paths (the grid
stages' verbs are declared with their stage, in stages.py).

The workflow rules pass each stage its slice of the (already validated) config as JSON, so that changing a
setting reruns exactly the jobs that use it.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import layout
from .config import check_task_slice, load_schema
from .errors import ConfigError, DataError, ModelError, PromptError, UnreadableFile
from .settings import read_settings, settings_help


def json_value(text: str) -> dict:
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
    settings = read_settings("extract", args.settings)
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
                     read_settings("icl", args.settings), args.keys)
    for r in result["records"]:
        score = f"accuracy {r['accuracy']:.3f}" + (" DEGENERATE" if r["degenerate"] else "") \
            if r["skipped"] is None else f"skipped: {r['skipped']['reason']}"
        print(f"{r['prompt']} {r['k']}-shot {r['split']}: {score}")
    return 0


def cmd_teacher(args) -> int:
    from .icl import run_teacher

    task = check_task_slice(args.task, args.task_config)
    meta = run_teacher(args.model_dir, task, args.train, args.demos, args.out,
                       read_settings("teacher", args.settings), args.seed)
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
    print(f"skipped cells: {len(predicted)} predicted by the preflight, {len(recorded)} recorded by the run")
    for label, cells in (("predicted, not skipped", predicted - recorded),
                         ("skipped, not predicted", recorded - predicted)):
        for cell in sorted(cells, key=str):
            print(f"  {label}: {cell}")
    return 0 if predicted == recorded else 1


# ---------------------------------------------------------------- the verbs and their arguments


def arg(flag: str, **options) -> tuple[str, dict]:
    return flag, options


def settings_arg(stage: str) -> tuple[str, dict]:
    """--settings of a stage: its help lists the stage's fields, from the schema."""
    return arg("--settings", type=json_value, required=True, settings_of=stage)


def keys_arg(what: str = "task, model, k, seed, ...") -> tuple[str, dict]:
    return arg("--keys", type=json_value, required=True, help=f"the cell's keys: {what}")


OUT = arg("--out", required=True)
EVAL = arg("--eval", nargs="+", required=True, metavar="SPLIT=PATH")
TRAIN = arg("--train", required=True)
MODEL_TASK = (arg("--model-dir", required=True, help="a folder prepared by fetch-model"),
              arg("--task", required=True, help="task name"),
              arg("--task-config", type=json_value, required=True, help="the task's config entry, as JSON"))
DERIVED = (arg("--name", required=True, help="the derived model's name"),)
DERIVED_OUT = (arg("--out-model", required=True, help="the derived model folder"),)
TRAINING = (arg("--deepspeed-config", required=True, help="config/deepspeed/<zero>.json"),
            arg("--work-dir", required=True, help="checkpoints (kept across restarts)"))


@dataclass(frozen=True)
class Verb:
    name: str
    run: Callable[[argparse.Namespace], int]
    help: str
    args: tuple = ()


VERBS = (
    Verb("validate-config", cmd_validate_config, "every check the workflow runs as it loads: the schema, the names it "
         "cross-references, prompts, data files, prepared models and their layers", (
             arg("config"), arg("--show", action="store_true", help="print the config with defaults filled in"),
             arg("--directory", default=".", help="the working directory the workflow runs in (resources/ there "
                 "holds the prepared models and fetched data)"))),
    Verb("fetch-data", cmd_fetch_data, "download a hub dataset split to Parquet (login node)", (
        arg("--source", type=json_value, required=True, help="the source entry of the config, as JSON"), OUT)),
    Verb("sample", cmd_sample, "draw a training, test or out-of-domain sample", (
        *MODEL_TASK[1:],
        arg("--input", nargs="+", metavar="ROLE=PATH", required=True, help="source files: train=..., test=..., "
            "ood:NAME=..."),
        arg("--split", required=True, help="train, demos, test, instructions or ood:NAME"),
        arg("--k", type=_k_arg, help="examples per class, or all: the full training set (train)"),
        arg("--seed", type=int, help="data seed (train, demos)"), arg("--test-seed", type=int, default=0), OUT)),
    Verb("fetch-model", cmd_fetch_model, "prepare a model folder: download a hub id, or dequantise a GGUF file", (
        arg("--name", required=True), arg("--model", type=json_value, required=True,
                                            help="the model's config entry, as JSON"), OUT)),
    Verb("extract", cmd_extract, "hidden states of a sample, with or without a few-shot prefix", (
        *MODEL_TASK, arg("--sample", nargs="+", required=True, help="sample files, all with the same prefix"),
        arg("--demos", help="the seed's demonstration pool the few-shot prefix is drawn from"),
        arg("--seed", type=int, help="seed of the demonstration draw"), settings_arg("extract"),
        arg("--out", nargs="+", required=True, help="one activation file per sample, in order"))),
    Verb("teacher", cmd_teacher, "the prompted model's label distribution on the training inputs", (
        *MODEL_TASK, TRAIN, arg("--demos", help="the seed's demonstration pool (not needed for 0 shots)"),
        arg("--seed", type=int, required=True, help="seed of the demonstration draw"), settings_arg("teacher"), OUT)),
    Verb("classifier", cmd_classifier, "derive a classifier: a task's head fine-tuned, saved as a model folder", (
        *MODEL_TASK, *DERIVED, TRAIN, EVAL, settings_arg("finetune"),
        arg("--run-settings", type=json_value, default={}, help="checkpoint_every, keep_checkpoint, as JSON"),
        *TRAINING, keys_arg("task, model, method, k, seed"), *DERIVED_OUT,
        arg("--metrics", required=True, help="its evaluation, as a fine-tuning cell's metrics file"))),
    Verb("instruct", cmd_instruct, "derive an instruction-tuned model (Alpaca layout, response-only loss)", (
        *DERIVED, arg("--base-dir", required=True, help="the base model's folder"),
        arg("--data", nargs="+", required=True, metavar="NAME=PATH",
            help="instruction sets: corpora (read through --corpora) and tasks' instruction samples"),
        arg("--corpora", type=json_value, default={}, help="the corpora entries of the config, as JSON"),
        settings_arg("instruct"), arg("--run-settings", type=json_value, default={}, help="checkpoint_every, as JSON"),
        *TRAINING, *DERIVED_OUT, arg("--metrics", required=True),
        arg("--generations", required=True, help="held-out instructions answered, as Parquet"))),
    Verb("ppo", cmd_ppo, "derive a model by RL against a reward classifier (RLOO with PPO clipping)", (
        *DERIVED, arg("--base-dir", required=True, help="the policy's starting model folder"),
        arg("--reward-dir", required=True, help="the reward classifier's model folder"),
        arg("--prompts", required=True, help="the corpus file the prompts come from"),
        arg("--corpus", type=json_value, required=True, help="that corpus's config entry, as JSON"),
        settings_arg("ppo"), *DERIVED_OUT, arg("--metrics", required=True),
        arg("--generations", required=True, help="held-out completions before and after, as Parquet"))),
    Verb("derived-summary", cmd_derived_summary, "a Markdown table of the derived models' before/after metrics", (
        arg("--metrics", nargs="*", default=[], help="the derived models' metrics.json files"), OUT)),
    Verb("preflight", cmd_preflight, "check and cost every cell before submitting (after fetch and sample)", (
        arg("--config", default="config/config.yaml", help="a config file (validated)"),
        arg("--config-json", type=json_value, help="an already validated config, as JSON (the rule's way)"),
        arg("--samples", default=layout.SAMPLES, help=f"the sample files ({layout.SAMPLES})"),
        arg("--models", default=layout.PREPARED_MODELS,
            help=f"the prepared model folders ({layout.PREPARED_MODELS})"),
        arg("--out-json", default=layout.PREFLIGHT_JSON), arg("--out-md", default=layout.PREFLIGHT_MD))),
    Verb("rehearsal", cmd_rehearsal, "write a rehearsal of a grid: tiny models, hub-shaped local data", (
        arg("--paper", default="config/paper.yaml", help="the grid to rehearse"),
        arg("--out", default="rehearsal", help="folder for config.yaml, models/, data/ and the run"),
        arg("--seeds", type=int, default=2, help="keep this many of the grid's seeds"),
        arg("--models", nargs="+", help="keep only these models (default: all)"),
        arg("--k", type=int, nargs="+", help="keep only these k, and ICL with zero or as many demonstrations "
            "(default: all)"),
        arg("--epochs", type=int, help="fine-tuning and instruction-tuning epochs (default: the grid's; fewer cuts "
            "time, not shape)"),
        arg("--ppo-steps", type=int, help="PPO steps (default: the grid's; fewer cuts time, not shape)"),
        arg("--methods", nargs="+", help="keep only these of the finetune section's methods (a model's own stay)"),
        arg("--hans-rows", type=int, default=3000, help="a stratified subset of HANS's 30,000 rows (0 = all of "
            "them)"))),
    Verb("check-skips", cmd_check_skips, "compare the preflight's expected skipped cells with a run's", (
        arg("--plan", default=layout.PREFLIGHT_JSON), arg("--tidy", default=layout.TIDY))),
    Verb("aggregate", cmd_aggregate, "every metrics file -> tidy table, paper tables and figures", (
        arg("--metrics", nargs="*", help=f"metrics files (default: every JSON under {layout.METRICS_DIR})"),
        arg("--expected", type=Path, help="a file listing every metrics file of the grid (to report missing)"),
        arg("--settings", type=json_value, help="the aggregate config section, as JSON"),
        arg("--config", default="config/config.yaml", help="take the aggregate settings from this config"),
        arg("--tables", default=layout.TABLES), arg("--figures", default=layout.FIGURES))),
    Verb("runtimes", cmd_runtimes, "each rule's runtime and memory from the jobs' benchmark files, as Markdown", (
        arg("--benchmarks", default=layout.BENCHMARKS, help="the folder of Snakemake benchmark files"), OUT)),
    Verb("resolved-config", cmd_resolved_config, "the config the results depend on (defaults filled in), as YAML",
         (arg("--config-json", type=json_value, required=True), OUT)),
    Verb("config-reference", cmd_config_reference, "the configuration reference (every key, its type, default and "
         "description) from the schema, as Markdown (docs/config-reference.md)", (
             arg("--out", help="write it here (default: standard output)"),)),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmadapt", description=__doc__.splitlines()[0])
    schema = load_schema()  # for the --settings help of each stage
    sub = parser.add_subparsers(dest="command", required=True)
    from .stages import STAGES  # the grid stages' verbs (stages.py reads this module's verbs and arguments)

    for verb in VERBS + tuple(stage.verb for stage in STAGES.values()):
        p = sub.add_parser(verb.name, help=verb.help)
        for flag, options in verb.args:
            if "settings_of" in options:
                options = dict(options, help=settings_help(options["settings_of"], schema))
                del options["settings_of"]
            p.add_argument(flag, **options)
        p.set_defaults(func=verb.run)
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
