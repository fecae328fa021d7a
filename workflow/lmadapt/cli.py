"""`lmadapt <stage>`: one subcommand per pipeline stage, each with explicit input and output paths: the verbs and
their arguments here, what each does in commands.py. The CLI sits on top of the package: the grid stages' verbs are
the ones their registry entries name (stages.py), looked up here.

The workflow rules pass each stage its slice of the (already validated) config as JSON, so that changing a
setting reruns exactly the jobs that use it.
"""
from __future__ import annotations

import argparse
import json
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import layout
from .commands import (cmd_aggregate, cmd_bow, cmd_calibrate, cmd_check_skips, cmd_classifier, cmd_config_reference,
                       cmd_derived_summary, cmd_extract, cmd_fetch_data, cmd_fetch_model, cmd_finetune, cmd_icl,
                       cmd_instruct, cmd_ppo, cmd_preflight, cmd_probe, cmd_rehearsal, cmd_resolved_config,
                       cmd_runtimes, cmd_sample, cmd_status, cmd_teacher, cmd_validate_config)
from .config import load_schema
from .errors import ConfigError, DataError, ModelError, PromptError, UnreadableFile
from .settings import settings_help
from .stages import STAGES


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


def arg(flag: str, **options) -> tuple[str, dict]:
    return flag, options


def settings_arg(stage: str) -> tuple[str, dict]:
    """--settings of a stage: its help lists the stage's fields, from the schema."""
    return arg("--settings", type=json_value, required=True, settings_of=stage)


def run_settings_arg(what: str) -> tuple[str, dict]:
    return arg("--run-settings", type=json_value, default={}, help=f"{what}, as JSON (how it runs; never part of "
               "what it computes)")


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
        run_settings_arg("batch_size"),
        arg("--out", nargs="+", required=True, help="one activation file per sample, in order"))),
    Verb("teacher", cmd_teacher, "the prompted model's label distribution on the training inputs", (
        *MODEL_TASK, TRAIN, arg("--demos", help="the seed's demonstration pool (not needed for 0 shots)"),
        arg("--seed", type=int, required=True, help="seed of the demonstration draw"), settings_arg("teacher"),
        run_settings_arg("batch_size"), OUT)),
    Verb("classifier", cmd_classifier, "derive a classifier: a task's head fine-tuned, saved as a model folder", (
        *MODEL_TASK, *DERIVED, TRAIN, EVAL, settings_arg("finetune"),
        run_settings_arg("checkpoint_every, keep_checkpoint"),
        *TRAINING, keys_arg("task, model, method, k, seed"), *DERIVED_OUT,
        arg("--metrics", required=True, help="its evaluation, as a fine-tuning cell's metrics file"))),
    Verb("instruct", cmd_instruct, "derive an instruction-tuned model (Alpaca layout, response-only loss)", (
        *DERIVED, arg("--base-dir", required=True, help="the base model's folder"),
        arg("--data", nargs="+", required=True, metavar="NAME=PATH",
            help="instruction sets: corpora (read through --corpora) and tasks' instruction samples"),
        arg("--corpora", type=json_value, default={}, help="the corpora entries of the config, as JSON"),
        settings_arg("instruct"), run_settings_arg("checkpoint_every"),
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
    Verb("calibrate", cmd_calibrate, "fit the preflight's cost model to the finished jobs; write the calibration and "
         "its page", (
             arg("--plan", default=layout.PREFLIGHT_JSON), arg("--benchmarks", default=layout.BENCHMARKS),
             arg("--out-json", default=layout.CALIBRATION_JSON), arg("--out-md", default=layout.CALIBRATION_MD))),
    Verb("status", cmd_status, "where the grid stands: jobs finished, failed and not yet run, hours spent and "
         "predicted, per stage and model", (
             arg("--config", default="config/config.yaml", help="a config file (validated)"),
             arg("--config-json", type=json_value, help="an already validated config, as JSON (the rule's way)"),
             arg("--directory", default=".", help="the working directory the workflow runs in"),
             arg("--out", help="write the page here (default: print it)"))),
    Verb("runtimes", cmd_runtimes, "each rule's runtime and memory from the jobs' benchmark files, as Markdown", (
        arg("--benchmarks", default=layout.BENCHMARKS, help="the folder of Snakemake benchmark files"), OUT)),
    Verb("resolved-config", cmd_resolved_config, "the config the results depend on (defaults filled in), as YAML",
         (arg("--config-json", type=json_value, required=True), OUT)),
    Verb("config-reference", cmd_config_reference, "the configuration reference (every key, its type, default and "
         "description) from the schema, as Markdown (docs/config-reference.md)", (
             arg("--out", help="write it here (default: standard output)"),)),
)


# the grid stages' verbs, named by their registry entries (stages.py)
PROBE_VERB = Verb("probe", cmd_probe, "probes on activations of every layer and pooling", (
    arg("--train", required=True, help="training activations"), EVAL,
    arg("--eval-sample", nargs="+", required=True, metavar="SPLIT=PATH",
        help="the evaluation samples (for per-heuristic scores)"),
    settings_arg("probe"), keys_arg(), OUT))
BOW_VERB = Verb("bow", cmd_bow, "bag-of-words baseline on the samples' text", (
    arg("--train", required=True, help="the training sample"), EVAL, settings_arg("bow"), keys_arg(), OUT))
ICL_VERB = Verb("icl", cmd_icl, "in-context learning with k demonstrations, every pattern of the task", (
    *MODEL_TASK, arg("--train", help="the seed's demonstration pool (not needed for 0 shots)"), EVAL,
    settings_arg("icl"), run_settings_arg("batch_size"), keys_arg("task, model, k (shots), seed"), OUT))
FINETUNE_VERB = Verb("finetune", cmd_finetune, "DeepSpeed fine-tuning of one method on one training sample, then "
                     "evaluation", (
    *MODEL_TASK, TRAIN, EVAL, arg("--teacher", help="teacher label distributions (method distill)"),
    settings_arg("finetune"),
    run_settings_arg("checkpoint_every, keep_checkpoint (never part of a checkpoint's hash)"),
    *TRAINING, keys_arg("task, model, method, k, seed"), OUT))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmadapt", description=__doc__.splitlines()[0])
    schema = load_schema()  # for the --settings help of each stage
    sub = parser.add_subparsers(dest="command", required=True)
    for verb in VERBS + tuple(pkgutil.resolve_name(stage.verb) for stage in STAGES.values()):
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
