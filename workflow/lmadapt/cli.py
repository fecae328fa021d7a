"""`lmadapt <stage>`: one subcommand per pipeline stage, each with explicit input and output paths.

The workflow rules pass each stage its slice of the (already validated) config as JSON, so that changing a
setting reruns exactly the jobs that use it.
"""
from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, check_config, load_config
from .data import DataError


def _json_arg(text: str) -> dict:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON: {e}") from None


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
    return check_config({"tasks": {name: task}}, origin=f"task {name}")["tasks"][name]


def cmd_validate_config(args) -> int:
    config = load_config(args.config)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmadapt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate-config", help="check a config file against the schema")
    p.add_argument("config")
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
    p.add_argument("--split", required=True, help="train, test or ood:NAME")
    p.add_argument("--k", type=int, help="examples per class (train)")
    p.add_argument("--seed", type=int, help="data seed (train)")
    p.add_argument("--test-seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError) as e:
        print(f"lmadapt {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
