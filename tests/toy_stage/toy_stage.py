"""A toy grid stage, as a researcher adds one: one registry entry (naming its verb and its preflight check, defined
beside it), its function, and its rule (toy.smk beside this file). It counts each task's test sample rows per
seed."""
import json

from lmadapt.cli import OUT, Verb, arg
from lmadapt.io import read_table, write_json
from lmadapt.stages import STAGES, Stage

TOY_METRICS = "results/metrics/toy/{task}/seed{seed}.json"


def toy_cells(config: dict) -> list[dict]:
    return [dict(task=task, seed=seed) for task in sorted(config["tasks"]) for seed in config["seeds"]]


def run_toy(args) -> int:
    rows, _ = read_table(args.sample, "lmadapt")
    write_json({"task": args.task, "seed": args.seed, "rows": len(rows)}, args.out)
    print(json.dumps({"rows": len(rows)}))
    return 0


def plan_toy(measuring, cells) -> None:
    measuring.plan.cells += [dict(stage="toy", model="-", task=cell["task"], what="counted") for cell in cells["toy"]]


TOY_VERB = Verb("toy", run_toy, "count a task's test rows", (
    arg("--task", required=True), arg("--seed", type=int, required=True), arg("--sample", required=True), OUT))
TOY = Stage("toy", "bow", None, toy_cells, TOY_METRICS, "toy_stage:TOY_VERB", "cpu", "toy_stage:plan_toy")


def register() -> None:
    STAGES["toy"] = TOY


if __name__ == "__main__":  # the rule's command: lmadapt's CLI with the toy stage registered
    import sys

    from lmadapt.cli import main

    register()
    sys.exit(main(["toy", *sys.argv[1:]]))
